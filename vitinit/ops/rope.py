"""Pure tensor functions for 2-D rotary position embeddings (RoPE), in their DINOv3 and EVA variants.

RoPE rotates each query and key by angles proportional to the token's (row, col) coordinates, so that their
dot product depends on coordinate *differences* only. Half of a head's channels carry the row, half the
column; each variant fixes three things (:class:`RopeSpec`):

=========  ===========================================  ===========================================
variant    coordinates of token ``i`` on an axis of n   frequencies, channel pairing
=========  ===========================================  ===========================================
dinov3     ``2 (i + 0.5) / n - 1``: cell centres on     angle = 2π·coord / period, periods
           [-1, 1], whatever the grid size              ``base ** (2k / (D/2))`` (base 100); pairs
                                                        (j, j + D/2) ("rotate half")
eva        ``i / n * pt``: integer positions of the     angle = coord · ``base ** (-k / (D/4))``
           pre-training grid ``pt`` (``pt_seq_len``),   (theta 10000); pairs (j, j + 1)
           rescaled to the new grid                     (interleaved)
=========  ===========================================  ===========================================

(facebookresearch/dinov3 ``RopePositionEmbedding``; baaivision/EVA ``VisionRotaryEmbeddingFast``; timm's
``RotaryEmbeddingDinoV3`` / ``RotaryEmbeddingCat(ref_feat_shape=...)`` compute the same.)

At 1024 px: DINOv3 (patch 16, 64x64 tokens) sees cell centres ±(1 - 1/64) — the same [-1, 1] range as at its
224-px pre-training, only sampled 4.6x more densely, because DINOv3 normalises by the grid it is given. EVA-02
(pre-trained at 224 px / patch 14 = 16x16) sees ``i · 16/64`` (patch 16) or ``i · 16/73`` (patch 14), i.e.
positions 0 … 15.75: the pre-training span, sampled in quarter steps, because EVA interpolates its table from
``pt_seq_len`` to the new grid.

A grid may be *extended* past its ``n`` tokens (``extent``): the window padding of detectron2's ViTDet adds
tokens beyond the image, and they get the coordinates the same rule gives (beyond 1 for DINOv3, beyond
``pt`` for EVA), so that a windowed block with global coordinates computes exactly what global attention
restricted to that window (padding included) would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

ROPE_VARIANTS = ("dinov3", "eva")
PERIOD_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class RopeSpec:
    """What a source's RoPE is; the backbone recomputes its tables from this (they are never stored).

    ``base``: DINOv3's period base (100) or EVA's theta (10000). ``pretrain_grid``: EVA's ``pt_seq_len``
    grid (the coordinate span), unused by DINOv3. ``periods_dtype``: "bfloat16" where the source's own code
    uses periods rounded to bf16 (the official DINOv3 files store them so and the official code reads them
    as stored; timm and transformers recompute them in float32).
    """

    variant: str
    base: float
    pretrain_grid: tuple[int, int] | None = None
    periods_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.variant not in ROPE_VARIANTS:
            raise ValueError(f"rope variant must be one of {ROPE_VARIANTS}, got {self.variant!r}")
        if self.periods_dtype not in PERIOD_DTYPES:
            raise ValueError(f"rope periods_dtype must be one of {PERIOD_DTYPES}, got {self.periods_dtype!r}")
        if not self.base > 0:
            raise ValueError(f"rope base must be positive, got {self.base}")
        if self.variant == "eva" and self.pretrain_grid is None:
            raise ValueError("EVA RoPE needs the pre-training grid its coordinates are rescaled to")
        if self.pretrain_grid is not None:
            object.__setattr__(self, "pretrain_grid", tuple(int(g) for g in self.pretrain_grid))

    @property
    def interleaved(self) -> bool:
        """True: channel pairs (j, j + 1) (EVA); False: (j, j + D/2) (DINOv3)."""
        return self.variant == "eva"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pretrain_grid"] = list(self.pretrain_grid) if self.pretrain_grid else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RopeSpec:
        return cls(**d)


def rope_coords(
    spec: RopeSpec, grid: tuple[int, int], extent: tuple[int, int] | None = None
) -> torch.Tensor:
    """(eh, ew, 2) float32 (row, col) coordinates of a ``grid`` of tokens by ``spec``'s rule, over
    ``extent`` ≥ ``grid`` tokens (padding continues the rule); ``extent=None`` is the grid itself."""
    eh, ew = extent or grid
    if spec.variant == "dinov3":
        axes = [torch.arange(0.5, e, dtype=torch.float32) / n for e, n in zip((eh, ew), grid, strict=True)]
        axes = [2.0 * a - 1.0 for a in axes]
    else:
        # EVA's order of operations (arange / ft * pt), for bit-equal tables at the source's own grid.
        spans = zip((eh, ew), grid, spec.pretrain_grid, strict=True)
        axes = [torch.arange(e, dtype=torch.float32) / n * pt for e, n, pt in spans]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def rope_frequencies(spec: RopeSpec, head_dim: int) -> torch.Tensor:
    """(head_dim / 4,) angular frequency per band: angle = coordinate × frequency."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {head_dim}")
    n = head_dim // 4
    if spec.variant == "dinov3":
        periods = spec.base ** (2.0 * torch.arange(n, dtype=torch.float32) / (head_dim // 2))
        return periods.to(getattr(torch, spec.periods_dtype)).float()  # used as 2π / period, see rope_angles
    return 1.0 / (spec.base ** (torch.arange(n, dtype=torch.float32) / n))


def rope_angles(spec: RopeSpec, coords: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(..., head_dim) rotation angle of every channel for (..., 2) coordinates, in ``spec``'s layout."""
    f = rope_frequencies(spec, head_dim).to(coords.device)
    if spec.variant == "dinov3":
        angles = 2 * math.pi * coords[..., None] / f  # DINOv3's own expression (periods, not frequencies)
    else:
        angles = coords[..., None] * f
    angles = angles.flatten(-2)  # (..., D/2): row bands, then column bands
    return angles.repeat_interleave(2, dim=-1) if spec.interleaved else torch.cat([angles, angles], dim=-1)


def rotate(x: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """The channel pairing's 90° rotation: (-x[j+1], x[j]) interleaved, (-x2, x1) for halves."""
    if interleaved:
        return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape(x.shape)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """``x`` (..., N, D) rotated by per-token angles given as ``cos``/``sin`` broadcastable to ``x``.

    Computed in the tables' precision (float32) and cast back to ``x``'s dtype, as timm and DINOv3 do.
    """
    return (x * cos + rotate(x, interleaved) * sin).to(x.dtype)
