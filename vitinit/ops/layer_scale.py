"""Pure tensor functions for attention/MLP parameter algebra."""

from __future__ import annotations

import torch


def fold_layer_scale(
    weight: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fold ``y = γ ⊙ (W x + b)`` into a plain linear layer: rows of W and entries of b scaled by γ.

    Exact up to float rounding; lets a layer-scale block (BEiT) run as a block without layer scale.
    """
    g = gamma.float()
    w = (weight.float() * g[:, None]).to(weight.dtype)
    b = None if bias is None else (bias.float() * g).to(bias.dtype)
    return w, b


def fuse_qv_bias(q_bias: torch.Tensor, v_bias: torch.Tensor) -> torch.Tensor:
    """BEiT's separate q/v biases as one fused qkv bias; BEiT's key bias is a constant zero."""
    return torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
