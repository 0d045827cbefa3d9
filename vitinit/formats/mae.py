"""MAE (facebookresearch/mae): encoder-only releases and full pre-training checkpoints.

Released ``mae_pretrain_vit_*.pth`` hold ``{'model': encoder}`` in timm's layout with a frozen 2-D sin-cos
``pos_embed`` (cls slot zeros); ``*_full.pth`` / ``mae_visualize_*.pth`` add the decoder (``decoder_*``)
and ``mask_token``, which are dropped and recorded. Fine-tuned files carry ``fc_norm`` and ``head``.
Training checkpoints also hold ``args`` (an ``argparse.Namespace``); ``args.model = 'mae_vit_*'`` names the
family outright (``main_pretrain.py``'s model names start with ``mae_``).
"""

from __future__ import annotations

from vitinit.canonical import Checkpoint
from vitinit.formats._common import (
    DECLARED,
    Score,
    build_checkpoint,
    canonical_from_timm,
    has_beit_keys,
    plus,
    state_dict_of,
)
from vitinit.formats.sincos import score_timm_layout
from vitinit.io.load import RawCheckpoint

FAMILY = "mae"
FAMILIES = (FAMILY,)


def _declared_model(raw: RawCheckpoint) -> str | None:
    model = getattr(raw.tree.get("args"), "model", None)
    return model if isinstance(model, str) and model.startswith("mae_") else None


def score(raw: RawCheckpoint) -> Score:
    """1 for a timm-layout ViT, +2 for MAE's sin-cos embedding, +3 for the MAE decoder keys, +3 for the
    global-pool signature of MAE fine-tuning (``fc_norm`` and no ``norm``); DECLARED for ``args.model``."""
    sd = state_dict_of(raw, ("model",))
    s = score_timm_layout(sd, FAMILY)
    if s.points and _declared_model(raw):
        return Score(FAMILY, DECLARED, f"args.model = {_declared_model(raw)!r} in the checkpoint")
    if s.points and any(k.startswith("decoder_") for k in sd) and "mask_token" in sd:
        s = plus(s, 3, "MAE decoder_* keys and mask_token")
    if s.points and "fc_norm.weight" in sd and "norm.weight" not in sd and not has_beit_keys(sd):
        # Fine-tuning trains pos_embed away from the sin-cos, so the supervised reader scores as high; the
        # tie makes detection ask for --from instead of silently labelling an MAE run "supervised".
        s = plus(s, 3, "fc_norm without norm (MAE fine-tuning's global pool)")
    return s


def read(
    raw: RawCheckpoint, *, model: str | None = None, num_heads: int | None = None, family: str | None = None
) -> Checkpoint:
    sd = state_dict_of(raw, ("model",))
    full = any(k.startswith("decoder_") for k in sd)
    fmt = "mae/full" if full else "mae/finetuned" if "fc_norm.weight" in sd else "mae/encoder"
    tensors, dropped = canonical_from_timm(sd, fmt=fmt)
    return build_checkpoint(
        tensors, dropped, family=FAMILY, fmt=fmt, source=str(raw.path), model=model, num_heads=num_heads
    )
