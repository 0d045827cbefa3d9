"""DINOv2 (facebookresearch/dinov2), with or without registers, in its official and timm layouts.

Official hub files (``dinov2_vit{s,b,l}14[_reg4]_pretrain.pth``) are bare state dicts of the repo's
``DinoVisionTransformer``: timm's key names, layer scale ``blocks.i.ls1.gamma``/``ls2.gamma``, patch 14,
``pos_embed`` (1, 1 + 37·37, D) at 518 px (its cls row dropped here), ``mask_token`` of shape (1, D)
(iBOT's, dropped) and, with registers, ``register_tokens`` (1, R, D) (dropped: the detection backbone has no
prefix tokens, as it has no cls token). ``block_chunks > 0`` (FSDP training) nests blocks as
``blocks.{chunk}.{i}.*`` with the global index ``i``; they are un-nested.
timm's ports (``vit_*_patch14_dinov2``, ``vit_*_patch14_reg4_dinov2``) drop ``mask_token``; the register
variants store ``reg_token`` and a ``pos_embed`` without prefix rows (``no_embed_class=True``).
ViT-g uses a SwiGLU MLP (``mlp.w12``/``w3``), which the detection backbone does not have: refused.
At another grid the embedding is resized as every family's is (plain bicubic to the exact grid, detectron2's
``get_abs_pos``), not with DINOv2's own ``interpolate_pos_encoding`` (a scale factor offset by 0.1); the
two agree at the pre-training grid, where the equivalence tests run.
"""

from __future__ import annotations

import re

from vitinit.canonical import Checkpoint
from vitinit.errors import CheckpointFormatError
from vitinit.formats._common import (
    Score,
    build_checkpoint,
    canonical_from_timm,
    is_timm_layout,
    state_dict_of,
)
from vitinit.io.load import RawCheckpoint

FAMILY = "dinov2"
FAMILIES = (FAMILY,)
_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.(.+)$")


def _state_dict(raw: RawCheckpoint) -> dict:
    sd = state_dict_of(raw, ("model", "teacher"))
    if not any(_CHUNKED.match(k) for k in sd):
        return sd
    out: dict = {}
    for key, value in sd.items():
        flat = _CHUNKED.sub(r"blocks.\1.\2", key)
        if flat in out:  # two chunks hold one block: which copy the model used is unknowable
            first = next(k for k in sd if k != key and _CHUNKED.sub(r"blocks.\1.\2", k) == flat)
            raise CheckpointFormatError(
                f"dinov2: {first} and {key} are the same tensor ({flat}) in two block chunks; refusing to "
                "pick one"
            )
        out[flat] = value
    return out


def _layout(sd: dict) -> tuple[str, str] | None:
    """(format, evidence) of a DINOv2 state dict, or None."""
    if not is_timm_layout(sd) or "blocks.0.ls1.gamma" not in sd or "pos_embed" not in sd:
        return None  # every DINOv2 layout has pos_embed; DINOv3's official files (same names) have RoPE
    mask = sd.get("mask_token")
    if "register_tokens" in sd:
        return "dinov2/official-reg", "register_tokens and ls1/ls2.gamma (DinoVisionTransformer, registers)"
    if mask is not None and len(mask.shape) == 2:
        return "dinov2/official", "mask_token of shape (1, D) and ls1/ls2.gamma (DinoVisionTransformer)"
    if "reg_token" in sd:
        return "dinov2/timm-reg", "reg_token and ls1/ls2.gamma (timm's vit_*_reg4_dinov2)"
    pos, patch = sd.get("pos_embed"), sd["patch_embed.proj.weight"].shape[-1]
    if pos is not None and patch == 14 and _has_cls_row(pos.shape[1]):
        # DeiT III also spells layer scale ls1.gamma, but stores pos_embed without a cls row.
        return "dinov2/timm", "ls1/ls2.gamma, patch 14 and a cls row in pos_embed (timm's vit_*_dinov2)"
    return None


def _has_cls_row(rows: int) -> bool:
    side = int((rows - 1) ** 0.5)
    return side * side == rows - 1


def score(raw: RawCheckpoint) -> Score:
    """6 for DINOv2's own tokens (register tokens, a (1, D) mask token) with ls1/ls2 layer scale; 4 for
    timm's port without them (layer scale, patch 14, a cls row in pos_embed)."""
    if raw.container == "hf-folder":
        return Score(FAMILY, 0)
    found = _layout(_state_dict(raw))
    if found is None:
        return Score(FAMILY, 0)
    fmt, why = found
    return Score(FAMILY, 4 if fmt == "dinov2/timm" else 6, why)


def read(
    raw: RawCheckpoint, *, model: str | None = None, num_heads: int | None = None, family: str | None = None
) -> Checkpoint:
    sd = _state_dict(raw)
    fmt = (_layout(sd) or ("dinov2/timm", ""))[0]
    if any(".mlp.w12." in k for k in sd):
        raise CheckpointFormatError(
            f"{fmt}: SwiGLU MLP (mlp.w12/w3, DINOv2 ViT-g): the detection backbone has a GELU MLP only"
        )
    tensors, dropped = canonical_from_timm(sd, fmt=fmt)
    notes = ["layer scale ls1/ls2.gamma kept as gamma_1/gamma_2"]
    registers = sd.get("register_tokens", sd.get("reg_token"))
    if registers is not None:
        notes.append(
            f"{registers.shape[1]} register tokens dropped, as the cls token (no prefix tokens here)"
        )
    return build_checkpoint(
        tensors,
        dropped,
        family=FAMILY,
        fmt=fmt,
        source=str(raw.path),
        model=model,
        num_heads=num_heads,
        # timm's register port stores no prefix rows; every other layout stores the cls row only.
        num_prefix_tokens=0 if fmt == "dinov2/timm-reg" else 1,
        notes=notes,
    )
