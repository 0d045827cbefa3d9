"""Self-attention with BEiT-style relative position tables, through one of two kernels.

``sdpa``: ``F.scaled_dot_product_attention`` with the table gathered into a (heads, N, N) additive mask. It
runs everywhere and is what training on CPU uses, but it materializes the bias, and on CPU a mask that needs
grad forces SDPA's math kernel.

``flex``: ``torch.nn.attention.flex_attention`` with a ``score_mod`` that reads the table by the relative
offset of the query and key indices, so no N×N bias exists and the table still gets its gradient (flex
differentiates through captured tensors). In torch 2.14 FlexAttention refuses inputs that require grad on
CPU ("FlexAttention does not support backward on CPU"): there it is inference-only. ``auto`` picks ``sdpa``
everywhere until a GPU measurement says otherwise (see :func:`resolve_kernel`); flex is an explicit choice.

Windows follow detectron2's ViTDet: the grid is zero-padded to a multiple of the window and cropped back, and
padded tokens are not masked, so both kernels see exactly the same windows.

RoPE (:mod:`vitinit.modeling.rope`) rotates q and k before either kernel runs, so both support it unchanged,
with or without the relative-position tables on top.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitinit.errors import ConfigError
from vitinit.modeling.rope import RotaryTables
from vitinit.ops.rel_pos import gather_rel_pos_bias, relative_position_index, resize_rel_pos_table

ATTENTION_KERNELS = ("sdpa", "flex", "auto")

# None = compile flex_attention on CUDA only. On CPU inductor's first compile of a shape takes 15-70 s
# (measured on the 2-core CI machine), which tests and short inference runs never win back.
FLEX_COMPILE: bool | None = None


def resolve_kernel(kind: str, device: torch.device, *, needs_grad: bool) -> str:
    """The kernel ``kind`` means for a forward on ``device``: "sdpa" or "flex".

    ``auto`` is ``sdpa`` on every device: it is the path CPU training and the detectron2 cross-checks have
    run, and on CUDA PyTorch's memory-efficient SDPA kernel takes an additive bias that needs grad. No GPU
    has measured flex against it yet (``benchmarks/gpu_check.py`` does), so flex stays an explicit choice:
    on CPU it cannot train, and for inference eager flex (torch's unfused reference) is slower than SDPA on
    global blocks while compiling it costs 15-70 s per shape. An explicit ``flex`` that cannot run raises a
    :class:`ConfigError` instead of silently switching.
    """
    if kind not in ATTENTION_KERNELS:
        raise ConfigError(f"model.attention must be one of {ATTENTION_KERNELS}, got {kind!r}")
    if kind == "auto":
        return "sdpa"
    flex_ok = device.type == "cuda" or not needs_grad
    if kind == "flex" and not flex_ok:
        raise ConfigError(
            "model.attention=flex cannot train on CPU: torch's FlexAttention has no CPU backward "
            "(use sdpa or auto)"
        )
    return kind


@dataclass(frozen=True)
class RelPosTable:
    """A (rows, heads) table made for ``table_grid``, read for tokens laid out on ``grid``."""

    table: torch.Tensor
    grid: tuple[int, int]
    table_grid: tuple[int, int]

    def dense(self) -> torch.Tensor:
        """(heads, N, N) additive bias: what SDPA takes as its mask."""
        return gather_rel_pos_bias(self.table, relative_position_index(self.grid, self.table_grid).to(
            self.table.device))

    def to(self, dtype: torch.dtype) -> RelPosTable:
        return RelPosTable(self.table.to(dtype), self.grid, self.table_grid)

    def score_mod(self):
        """flex_attention's ``score_mod``: the table row of the (Δrow, Δcol) between query and key."""
        table, gw = self.table, self.grid[1]
        th, tw = self.table_grid

        def add_bias(score, b, h, q_idx, kv_idx):
            d_row = q_idx // gw - kv_idx // gw
            d_col = q_idx % gw - kv_idx % gw
            return score + table[(d_row + th - 1) * (2 * tw - 1) + d_col + tw - 1, h]

        return add_bias


class RelativePositionBias(nn.Module):
    """One BEiT-style table (one scalar per head per 2-D offset) for a window of ``grid`` tokens.

    Zero-initialized, as BEiT and the paper do for methods without pre-trained tables.
    """

    def __init__(self, grid: tuple[int, int], num_heads: int) -> None:
        super().__init__()
        self.grid = tuple(grid)
        rows = (2 * grid[0] - 1) * (2 * grid[1] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        # The index is a deterministic function of the grid: recomputed, never stored (as timm and BEiT).
        # On the meta device (key/shape manifests) only its shape is needed: computing it there would route
        # arange through torch's decompositions, which import sympy and cost ~1 s and ~150 MB.
        n = grid[0] * grid[1]
        table = self.relative_position_bias_table
        index = (
            torch.empty((n, n), dtype=torch.long, device="meta")
            if table.is_meta
            else relative_position_index(self.grid).to(table.device)
        )
        self.register_buffer("index", index, persistent=False)

    def table_for(self, grid: tuple[int, int]) -> RelPosTable:
        """The table for a token grid; a larger grid than the table's resizes the table (bicubic)."""
        grid = tuple(grid)
        table, table_grid = self.relative_position_bias_table, self.grid
        if grid[0] > table_grid[0] or grid[1] > table_grid[1]:
            side = max(grid[0], grid[1], *table_grid)
            table = resize_rel_pos_table(table, (side, side), method="bicubic")
            table_grid = (side, side)
        return RelPosTable(table, grid, table_grid)

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        """(H, N, N) bias for a token grid (the SDPA mask)."""
        if tuple(grid) == self.grid:  # the cached index
            return gather_rel_pos_bias(self.relative_position_bias_table, self.index)
        return self.table_for(grid).dense()


@functools.cache
def _flex_attention(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos: RelPosTable | None):
    """FlexAttention of (B, H, N, D) inputs with the table added to each score (compiled per
    :data:`FLEX_COMPILE`)."""
    compiled = FLEX_COMPILE if FLEX_COMPILE is not None else q.device.type == "cuda"
    score_mod = rel_pos.to(q.dtype).score_mod() if rel_pos is not None else None
    with warnings.catch_warnings():
        # Eager flex warns on every call that it is unfused; on CPU that is the documented choice above.
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return _flex_attention(compiled)(q, k, v, score_mod=score_mod)


QKV_BIAS = ("qkv", "qv", "none")


class Attention(nn.Module):
    """Multi-head self-attention; ``bias``: a dense (H, N, N) mask (sdpa) or a :class:`RelPosTable` (flex);
    ``rope``: the rotary tables of these tokens, or None.

    ``qkv_bias``: ``"qkv"`` (ViT), ``"qv"`` (BEiT-style sources without a k bias: the k third of
    ``qkv.bias`` is masked out, as DINOv3's ``bias_mask``; a k bias adds the same score to every key of a
    query, so softmax ignores it anyway) or ``"none"`` (no ``qkv.bias``).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: str = "qkv") -> None:
        super().__init__()
        if qkv_bias not in QKV_BIAS:
            raise ConfigError(f"qkv_bias must be one of {QKV_BIAS}, got {qkv_bias!r}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias != "none")
        self.proj = nn.Linear(dim, dim)
        mask = torch.tensor([1.0, 0.0, 1.0]).repeat_interleave(dim) if qkv_bias == "qv" else None
        self.register_buffer("qkv_bias_mask", mask, persistent=False)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | RelPosTable | None, rope: RotaryTables | None = None
    ) -> torch.Tensor:
        b, n, c = x.shape  # (batch * windows, tokens, dim)
        qkv_bias = self.qkv.bias
        if self.qkv_bias_mask is not None:
            qkv_bias = qkv_bias * self.qkv_bias_mask
        qkv = F.linear(x, self.qkv.weight, qkv_bias)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = rope.apply(q), rope.apply(k)
        if isinstance(bias, RelPosTable):
            x = flex_attention(q, k, v, bias)
        else:
            if bias is not None:
                bias = bias.to(q.dtype).unsqueeze(0)  # (1, H, N, N) broadcasts over batch*windows
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) → (B·nW, window², C), zero-padding H and W up to multiples of ``window``."""
    b, h, w, c = x.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c), (hp, wp)


def window_unpartition(
    x: torch.Tensor, window: int, padded: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`, cropping the padding away."""
    hp, wp = padded
    b = x.shape[0] // (hp * wp // window // window)
    x = x.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, : hw[0], : hw[1]].contiguous()
