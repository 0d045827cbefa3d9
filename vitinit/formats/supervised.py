"""Supervised ImageNet ViTs: DeiT releases and timm ViT state dicts (``.pth`` or ``.safetensors``).

DeiT files are ``{'model': state_dict}`` (training checkpoints add optimizer, epoch, args...); the
distilled models add ``dist_token``, ``head_dist`` and a second prefix row in ``pos_embed`` (cls, dist,
patches). timm hub weights are bare state dicts in the same layout; DeiT-III spells layer scale
``ls1.gamma``/``ls2.gamma`` and stores pos_embed without prefix rows (``no_embed_class``).
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

FAMILY = "supervised"
FAMILIES = (FAMILY,)


def _declared_model(raw: RawCheckpoint) -> str | None:
    """DeiT's training checkpoints keep ``args.model`` (``deit_base_patch16_224``...)."""
    model = getattr(raw.tree.get("args"), "model", None)
    return model if isinstance(model, str) and model.startswith("deit_") else None


def score(raw: RawCheckpoint) -> Score:
    """1 for a timm-layout ViT, +1 for a learned (not sin-cos) pos_embed, +2 for a classifier head;
    DECLARED for DeiT's ``args.model``."""
    if raw.container == "hf-folder":
        return Score(FAMILY, 0)
    sd = state_dict_of(raw, ("model", "state_dict"))
    if has_beit_keys(sd):  # a BEiT classifier has a head too; its q/v biases and tables say BEiT
        return Score(FAMILY, 0)
    s = score_timm_layout(sd, FAMILY)
    if s.points and _declared_model(raw):
        return Score(FAMILY, DECLARED, f"args.model = {_declared_model(raw)!r} in the checkpoint")
    if s.points and ("head.weight" in sd or "dist_token" in sd):
        s = plus(s, 2, "a classifier head" if "dist_token" not in sd else "DeiT's dist_token")
    return s


def read(
    raw: RawCheckpoint, *, model: str | None = None, num_heads: int | None = None, family: str | None = None
) -> Checkpoint:
    sd = state_dict_of(raw, ("model", "state_dict"))
    distilled = "dist_token" in sd
    timm_fmt = f"supervised/timm-{raw.container.removeprefix('timm-')}"  # timm-safetensors, timm-folder...
    fmt = (
        "supervised/deit-distilled" if distilled else ("supervised/deit" if "model" in raw.tree else timm_fmt)
    )
    tensors, dropped = canonical_from_timm(sd, fmt=fmt)
    notes = ["pos_embed has 2 prefix rows (cls, dist); both are dropped"] if distilled else []
    return build_checkpoint(
        tensors,
        dropped,
        family=FAMILY,
        fmt=fmt,
        source=str(raw.path),
        model=model,
        num_heads=num_heads,
        num_prefix_tokens=2 if distilled else None,
        notes=notes,
    )
