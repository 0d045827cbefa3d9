"""The backbone's rotary position tables: global blocks and windowed blocks, both on the whole grid.

RoPE is relative: q·k after rotation depends on the difference of the two tokens' coordinates only. So a
windowed block uses each token's coordinates on the whole detection grid (padding included, continuing the
variant's rule, :func:`vitinit.ops.rope.rope_coords`), and a window sees exactly the geometry global attention
would give those tokens — the same step between neighbours as the global blocks, not a window-sized grid of
its own. (EVA-02's own ViTDet instead gives windowed blocks a 16-token grid per window; here one rule holds
for every block.) Tables are recomputed per forward from the :class:`~vitinit.ops.rope.RopeSpec`: they are
a function of the grid, never weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vitinit.ops.rope import RopeSpec, apply_rope, rope_angles, rope_coords


@dataclass(frozen=True)
class RotaryTables:
    """cos/sin of every token's angles: (1, N, D) for a grid, (nW, 1, N, D) for its windows."""

    cos: torch.Tensor
    sin: torch.Tensor
    interleaved: bool

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate (B, H, N, D) queries or keys; windowed tables read x as (B/nW, nW, H, N, D), the order of
        :func:`~vitinit.modeling.attention.window_partition` (no per-image copy of the tables)."""
        if self.cos.dim() == 3:
            return apply_rope(x, self.cos, self.sin, self.interleaved)
        y = apply_rope(x.unflatten(0, (-1, self.cos.shape[0])), self.cos, self.sin, self.interleaved)
        return y.flatten(0, 1)


def _tables(angles: torch.Tensor, interleaved: bool) -> RotaryTables:
    return RotaryTables(angles.cos(), angles.sin(), interleaved)


def rotary_tables(
    spec: RopeSpec,
    head_dim: int,
    grid: tuple[int, int],
    *,
    window: int = 0,
    device: torch.device | None = None,
) -> RotaryTables:
    """Tables for the tokens of a (h, w) ``grid``: (1, h·w, D) for global attention, or with ``window``
    > 0, (nW, 1, window², D) for the zero-padded grid's windows, in
    :func:`~vitinit.modeling.attention.window_partition`'s order."""
    h, w = grid
    if not window:
        angles = rope_angles(spec, rope_coords(spec, grid).to(device), head_dim)
        return _tables(angles.reshape(1, h * w, head_dim), spec.interleaved)
    hp, wp = -(-h // window) * window, -(-w // window) * window
    angles = rope_angles(spec, rope_coords(spec, grid, (hp, wp)).to(device), head_dim)  # (hp, wp, D)
    angles = angles.view(hp // window, window, wp // window, window, head_dim).permute(0, 2, 1, 3, 4)
    return _tables(angles.reshape(-1, 1, window * window, head_dim), spec.interleaved)
