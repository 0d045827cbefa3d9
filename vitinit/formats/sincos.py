"""Fixed 2-D sin-cos position embeddings, and the shared scoring of plain timm-layout files.

MAE and MoCo v3 store their frozen sin-cos embedding in their checkpoints, which identifies the family of an
otherwise plain timm-layout file (the layout DeiT and timm's supervised models share).
"""

from __future__ import annotations

import torch

from vitinit.errors import CheckpointFormatError
from vitinit.formats._common import is_timm_layout, prefix_and_grid
from vitinit.formats._score import Score
from vitinit.io.lazy import LazyTensor
from vitinit.ops.pos_embed import sincos_2d

LazyMap = dict[str, LazyTensor]

# The formula (MAE's util/pos_embed.py; MoCo v3's vits.py): D is split in two halves, each
# [sin(pos·ω_k), cos(pos·ω_k)], ω_k = 10000^(-k/(D/4)), k < D/4. MAE's first half encodes the column index,
# MoCo v3's the row index; the cls slot is zeros in both.


def sincos_atol(dtype: torch.dtype) -> float:
    """Tolerance of the sin-cos check for a stored dtype: values lie in [-1, 1], so an fp16 / bf16 copy of
    the exact table is off by up to half an ulp at 1 (4.9e-4 / 3.9e-3); fp32 files match to ~1e-7."""
    return max(1e-4, torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-4


def sincos_family(pos_embed: LazyTensor, atol: float | None = None) -> str | None:
    """ "mae" or "mocov3" when the stored (1, 1+N, D) embedding is that family's frozen sin-cos, else None.

    ``atol`` defaults to :func:`sincos_atol` of the stored dtype, so half-precision copies are recognized.
    """
    if len(pos_embed.shape) != 3 or pos_embed.shape[2] % 4 or not pos_embed.dtype.is_floating_point:
        return None
    try:
        prefix, grid = prefix_and_grid(pos_embed.shape[1], 1)
    except CheckpointFormatError:
        return None
    atol = sincos_atol(pos_embed.dtype) if atol is None else atol
    pos = pos_embed.load()[0].float()
    if pos[:prefix].abs().max() > atol:
        return None
    for family, first in (("mae", "col"), ("mocov3", "row")):
        if torch.allclose(pos[prefix:], sincos_2d(pos.shape[1], grid, first_half=first), atol=atol):
            return family
    return None


_SINCOS_NAMES = {"mae": "MAE's", "mocov3": "MoCo v3's"}


def score_timm_layout(sd: LazyMap, family: str) -> Score:
    """Shared scoring of plain timm-layout files: 1 for the layout, +2 when the sin-cos matches ``family``,
    +1 when the embedding is learned (not any known sin-cos) and ``family`` is supervised."""
    if not is_timm_layout(sd):
        return Score(family, 0)
    pos = sd.get("pos_embed")
    found = sincos_family(pos) if pos is not None else None
    if found == family:
        return Score(family, 3, f"timm-layout keys with {_SINCOS_NAMES[found]} fixed 2-D sin-cos pos_embed")
    if found is None and family == "supervised" and pos is not None:
        return Score(family, 2, "timm-layout keys with a learned (not sin-cos) pos_embed")
    return Score(family, 1, "timm-layout ViT keys")
