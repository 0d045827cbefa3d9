"""Pure tensor functions for BEiT-style relative position bias tables.

A table holds one scalar per head per relative offset (Δrow, Δcol): its first (2Gh-1)(2Gw-1) rows are a
row-major grid over Δrow ∈ [-(Gh-1), Gh-1], Δcol ∈ [-(Gw-1), Gw-1]; BEiT appends 3 rows for the cls token.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def table_grid(num_rows: int, num_extra_rows: int = 0) -> tuple[int, int]:
    """The (Gh, Gw) window a square table with ``num_rows`` rows was made for."""
    side = round((num_rows - num_extra_rows) ** 0.5)
    if side * side != num_rows - num_extra_rows or side % 2 == 0:
        raise ValueError(f"a table of {num_rows} rows ({num_extra_rows} extra) is not a square odd grid")
    return (side + 1) // 2, (side + 1) // 2


def relative_position_index(grid: tuple[int, int], table_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """(N, N) indices into a cls-free table for query and key tokens of ``grid`` (N = gh*gw).

    ``table_grid`` is the window the table was made for; it must cover ``grid`` (offsets up to ±(G-1)).
    """
    gh, gw = grid
    th, tw = table_grid or grid
    if gh > th or gw > tw:
        raise ValueError(f"token grid {grid} is larger than the table's window {(th, tw)}")
    coords = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
    return (rel[0] + th - 1) * (2 * tw - 1) + (rel[1] + tw - 1)


def gather_rel_pos_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(H, N, N) additive attention bias from a cls-free (rows, H) table and an (N, N) index."""
    n = index.shape[0]
    return table[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)


def split_extra_rows(table: torch.Tensor, num_extra_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(grid rows, extra rows) of a BEiT table; the extra rows are BEiT's cls entries."""
    if num_extra_rows == 0:
        return table, table[:0]
    return table[:-num_extra_rows], table[-num_extra_rows:]


def resize_rel_pos_table(
    table: torch.Tensor,
    new_grid: tuple[int, int],
    *,
    num_extra_rows: int = 0,
    keep_extra_rows: bool = False,
    method: str = "geometric",
) -> torch.Tensor:
    """Resize a BEiT-style (rows, H) table made for a square window to the window ``new_grid``.

    ``method="geometric"`` is BEiT's scheme (source offsets placed on a geometric progression so the centre
    keeps its resolution; unilm#376 reports plain interpolation hurt ADE20K). BEiT's own code interpolates
    cubically with ``scipy.interpolate.interp2d``, removed in SciPy 1.14; we use timm's port, which is
    *linear* on the same stretched grid (numerically close, not identical). ``method="bicubic"`` is plain
    bicubic ``F.interpolate`` of the offset grid (align_corners=False), as timm's ``_simple`` variant.
    Shrinking always uses bicubic, since the geometric progression is only defined for growing tables.
    Computes in float32 and returns the input dtype; returns the input unchanged when nothing changes.
    """
    grid_rows, extra = split_extra_rows(table, num_extra_rows)
    old = table_grid(grid_rows.shape[0])
    new_rows = (2 * new_grid[0] - 1) * (2 * new_grid[1] - 1)
    if old == tuple(new_grid):
        out = grid_rows
    else:
        logger.info("resizing relative position table from window %s to %s (%s)", old, new_grid, method)
        src = grid_rows.float()
        if method == "geometric" and new_grid[0] >= old[0] and new_grid[1] >= old[1]:
            from timm.layers import resize_rel_pos_bias_table

            out = resize_rel_pos_bias_table(
                src, new_window_size=tuple(new_grid), new_bias_shape=(new_rows, src.shape[1])
            )
        elif method in ("geometric", "bicubic"):
            side = 2 * old[0] - 1
            img = src.T.reshape(1, -1, side, side)
            img = F.interpolate(
                img, size=(2 * new_grid[0] - 1, 2 * new_grid[1] - 1), mode="bicubic", align_corners=False
            )
            out = img.reshape(src.shape[1], new_rows).T
        else:
            raise ValueError(f"unknown rel-pos resize method {method!r}")
        out = out.to(table.dtype).contiguous()
    if keep_extra_rows:
        out = torch.cat([out, extra], dim=0)
    return out
