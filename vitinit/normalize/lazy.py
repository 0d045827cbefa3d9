"""Lazy tensor plumbing shared by every target's normalization: cast, fold, the blocks, fresh tensors.

Each function returns :class:`~vitinit.canonical.LazyTensor` values, so a multi-GB source is still read one
tensor at a time when the target is written.
"""

from __future__ import annotations

import torch

from vitinit.canonical import Checkpoint, LazyTensor, block_keys
from vitinit.modeling.vit import init_pos_embed_
from vitinit.ops.layer_scale import fold_layer_scale


def as_float32(t: LazyTensor) -> LazyTensor:
    return (
        t
        if t.dtype == torch.float32 or not t.dtype.is_floating_point
        else t.map(lambda x: x.float(), dtype=torch.float32)
    )


def zeros(shape: tuple[int, ...]) -> LazyTensor:
    return LazyTensor(shape, torch.float32, lambda: torch.zeros(shape))


def random_pos_embed(shape: tuple[int, ...], seed: int) -> LazyTensor:
    """The model's own position-embedding init (``init_pos_embed_``), from a generator seeded ``seed``."""
    return LazyTensor(
        shape, torch.float32, lambda: init_pos_embed_(torch.empty(shape), torch.Generator().manual_seed(seed))
    )


def fold_lazy(weight: LazyTensor, bias: LazyTensor, gamma: LazyTensor) -> tuple[LazyTensor, LazyTensor]:
    """Lazily fold a layer-scale vector into a linear layer (``vitinit.ops.layer_scale``).

    Weight and bias are folded separately so that loading the bias never reads the (large) weight.
    """

    def folded_weight() -> torch.Tensor:
        return fold_layer_scale(weight.load().float(), None, gamma.load())[0]

    def folded_bias() -> torch.Tensor:
        # A bias is a one-column weight: the same row scaling applies.
        return fold_layer_scale(bias.load().float()[:, None], None, gamma.load())[0][:, 0]

    return (
        LazyTensor(weight.shape, torch.float32, folded_weight),
        LazyTensor(bias.shape, torch.float32, folded_bias),
    )


def block_tensors(ckpt: Checkpoint, *, keep_gamma: bool, prefix: str = "") -> dict[str, LazyTensor]:
    """Every block's tensors as float32, layer scale kept or folded into the linears."""
    t, out = ckpt.tensors, {}
    for i in range(ckpt.spec.depth):
        for name in block_keys(i, layer_scale=False, spec=ckpt.spec):
            out[prefix + name] = as_float32(t[name])
        if not ckpt.spec.layer_scale:
            continue
        for gamma, layer in (("gamma_1", "attn.proj"), ("gamma_2", "mlp.fc2")):
            key = f"blocks.{i}.{gamma}"
            if keep_gamma:
                out[prefix + key] = as_float32(t[key])
                continue
            w, b = fold_lazy(t[f"blocks.{i}.{layer}.weight"], t[f"blocks.{i}.{layer}.bias"], t[key])
            out[f"{prefix}blocks.{i}.{layer}.weight"], out[f"{prefix}blocks.{i}.{layer}.bias"] = w, b
    return out


def patch_tensors(ckpt: Checkpoint, prefix: str = "") -> dict[str, LazyTensor]:
    """The patch embedding and, where the source has one, the norm before the blocks (``norm_pre``)."""
    names = ["patch_embed.proj.weight"]
    names += ["patch_embed.proj.bias"] if ckpt.spec.patch_bias else []
    names += ["norm_pre.weight", "norm_pre.bias"] if ckpt.spec.pre_norm else []
    return {prefix + k: as_float32(ckpt.tensors[k]) for k in names}


def layer_scale_record(ckpt: Checkpoint, keep_gamma: bool) -> str:
    if not ckpt.spec.layer_scale:
        return "none in source"
    return "kept (gamma_1/gamma_2)" if keep_gamma else "folded into attn.proj and mlp.fc2"


def abs_pos_mode(ckpt: Checkpoint, mode: str) -> str:
    """An ``abs_pos`` mode with ``auto`` resolved: ``source``, ``zero``, ``random`` or ``none``.

    ``auto`` keeps the source's function: its embedding, or zeros (adding nothing) where it has none; the
    random init has no function to keep and gets the paper's random draw.
    """
    if mode == "auto":
        mode = "random" if ckpt.provenance.family == "random" else "source"
    if mode == "source" and not ckpt.spec.has_abs_pos:
        mode = "zero"
    return mode


def fresh_abs_pos(mode: str, shape: tuple[int, ...], seed: int, grid: tuple[int, int], why: str) -> tuple:
    """(tensor, record) for ``mode`` ``zero`` or ``random`` at ``grid``; ``why`` says what led there."""
    if mode == "zero":
        return zeros(shape), f"zeros at {grid[0]}x{grid[1]} ({why})"
    return (
        random_pos_embed(shape, seed),
        f"random truncated normal std 0.02 at {grid[0]}x{grid[1]} (seed {seed}; {why})",
    )
