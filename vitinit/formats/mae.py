"""MAE (facebookresearch/mae): encoder-only releases and full pre-training checkpoints.

Released ``mae_pretrain_vit_*.pth`` hold ``{'model': encoder}`` in timm's layout with a frozen 2-D sin-cos
``pos_embed`` (cls slot zeros); ``*_full.pth`` / ``mae_visualize_*.pth`` add the decoder (``decoder_*``)
and ``mask_token``, which are dropped and recorded. Fine-tuned files carry ``fc_norm`` and ``head``.
"""

from __future__ import annotations

from vitinit.canonical import Checkpoint
from vitinit.formats._common import (
    build_checkpoint,
    canonical_from_timm,
    has_beit_keys,
    score_timm_layout,
    state_dict_of,
)
from vitinit.io.load import RawCheckpoint

FAMILY = "mae"


def score(raw: RawCheckpoint) -> tuple[str, int]:
    """1 for a timm-layout ViT, +2 for MAE's sin-cos embedding, +3 for the MAE decoder keys, +3 for the
    global-pool signature of MAE fine-tuning (``fc_norm`` and no ``norm``)."""
    sd = state_dict_of(raw, ("model",))
    s = score_timm_layout(sd, FAMILY)
    if s and any(k.startswith("decoder_") for k in sd) and "mask_token" in sd:
        s += 3
    if s and "fc_norm.weight" in sd and "norm.weight" not in sd and not has_beit_keys(sd):
        # Fine-tuning trains pos_embed away from the sin-cos, so the supervised reader scores as high; the
        # tie makes detection ask for --from instead of silently labelling an MAE run "supervised".
        s += 3
    return FAMILY, s


def read(raw: RawCheckpoint, *, model: str | None = None, num_heads: int | None = None) -> Checkpoint:
    sd = state_dict_of(raw, ("model",))
    full = any(k.startswith("decoder_") for k in sd)
    fmt = "mae/full" if full else "mae/finetuned" if "fc_norm.weight" in sd else "mae/encoder"
    tensors, dropped = canonical_from_timm(sd, fmt=fmt)
    return build_checkpoint(
        tensors, dropped, family=FAMILY, fmt=fmt, source=str(raw.path), model=model, num_heads=num_heads
    )
