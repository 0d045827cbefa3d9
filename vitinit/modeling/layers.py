"""Small layers of the ViT backbone, named as timm's so checkpoints map one to one."""

from __future__ import annotations

import torch
import torch.nn as nn

# Deliberately not timm.layers' Mlp/DropPath: importing timm.layers costs ~2 s (its torch.fx machinery)
# on every `vitinit convert`, which needs this module only for the key/shape manifest. The two modules
# below keep timm's parameter names (mlp.fc1 / mlp.fc2) and semantics.


class QuickGELU(nn.Module):
    """OpenAI CLIP's sigmoid approximation of GELU: ``x · σ(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(kind: str) -> nn.Module:
    """The MLP activation of ``kind``: exact GELU (ViT, BEiT, DINO), tanh-approximated GELU (SigLIP in
    transformers), QuickGELU (OpenAI CLIP). SwiGLU's SiLU gate is :class:`SwiGLU`'s own."""
    acts = {"gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "quick_gelu": QuickGELU}
    if kind not in acts:
        raise ValueError(f"no activation {kind!r}; one of {sorted(acts)}")
    return acts[kind]()


def sub_norm(hidden_dim: int, norm: bool, eps: float) -> nn.Module:
    """EVA-02's sub-LayerNorm on the hidden features (NormFormer's "scale_mlp"), or nothing."""
    return nn.LayerNorm(hidden_dim, eps=eps) if norm else nn.Identity()


class Mlp(nn.Module):
    """fc1 → activation (→ sub-norm) → fc2, named as timm's ``Mlp`` so checkpoints map one to one."""

    def __init__(
        self, dim: int, hidden_dim: int, act: str = "gelu", norm: bool = False, norm_eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = activation(act)
        self.norm = sub_norm(hidden_dim, norm, norm_eps)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.act(self.fc1(x))))


class SwiGLU(nn.Module):
    """``fc2(norm(silu(fc1_g x) * fc1_x x))`` (Shazeer 2020), named as timm's ``SwiGLU``: EVA-02's
    ``w1/w2/ffn_ln/w3`` and DINOv3's ``w1/w2/w3`` (no sub-norm) map one to one."""

    def __init__(self, dim: int, hidden_dim: int, norm: bool = False, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.fc1_g = nn.Linear(dim, hidden_dim)
        self.fc1_x = nn.Linear(dim, hidden_dim)
        self.act = nn.SiLU()
        self.norm = sub_norm(hidden_dim, norm, norm_eps)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.act(self.fc1_g(x)) * self.fc1_x(x)))


def build_mlp(
    dim: int, hidden_dim: int, kind: str = "gelu", norm: bool = False, eps: float = 1e-6
) -> nn.Module:
    """The MLP of ``kind`` (``vitinit.canonical.MLP_KINDS``), with EVA-02's sub-norm when ``norm``."""
    if kind == "swiglu":
        return SwiGLU(dim, hidden_dim, norm, eps)
    return Mlp(dim, hidden_dim, kind, norm, eps)


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016), as timm's ``DropPath``."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep
