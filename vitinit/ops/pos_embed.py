"""Pure tensor functions for absolute position embeddings."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def split_prefix(pos_embed: torch.Tensor, num_prefix_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prefix rows, grid rows) of a (1, P + N, D) embedding."""
    return pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]


def resize_abs_pos_embed(
    pos_embed: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    *,
    num_prefix_tokens: int = 0,
) -> torch.Tensor:
    """Drop the ``num_prefix_tokens`` rows and return the grid part as (1, gh, gw, D) at ``new_grid``.

    Plain bicubic, align_corners=False, no antialias: what detectron2's ``get_abs_pos``, MAE, DeiT and BEiT
    do. timm's ``resample_abs_pos_embed`` defaults to antialias=True, which changes values even when
    upsampling (max |Δ| 0.42 on random data, 14→64), so we deliberately do not use its default.
    The runtime path (``DetectionViT``) and the ahead-of-time conversion both call this function.
    """
    _, grid = split_prefix(pos_embed, num_prefix_tokens)
    d = grid.shape[-1]
    if grid.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(f"pos_embed has {grid.shape[1]} grid rows, expected {old_grid[0]}x{old_grid[1]}")
    grid = grid.reshape(1, old_grid[0], old_grid[1], d)
    if tuple(old_grid) == tuple(new_grid):
        return grid
    logger.info("resizing absolute position embedding from %s to %s", old_grid, new_grid)
    x = grid.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=tuple(new_grid), mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos_embed.dtype)


# Fixed 2-D sin-cos position embeddings (MAE's ``get_2d_sincos_pos_embed``, MoCo v3's ``build_2d_sincos``).
def sincos_2d(embed_dim: int, grid: tuple[int, int], *, first_half: str = "col") -> torch.Tensor:
    """(gh*gw, D) fixed sin-cos embedding, rows in row-major token order."""
    if embed_dim % 4:
        raise ValueError("sin-cos embedding needs a width divisible by 4")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")

    def half(pos: torch.Tensor) -> torch.Tensor:
        angle = pos.flatten().double()[:, None] * omega[None]
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    a, b = (cols, rows) if first_half == "col" else (rows, cols)
    return torch.cat([half(a), half(b)], dim=1).float()
