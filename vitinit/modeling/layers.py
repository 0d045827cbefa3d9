"""Small layers of the ViT backbone, named as timm's so checkpoints map one to one."""

from __future__ import annotations

import torch
import torch.nn as nn

# Deliberately not timm.layers' Mlp/DropPath: importing timm.layers costs ~2 s (its torch.fx machinery)
# on every `vitinit convert`, which needs this module only for the key/shape manifest. The two modules
# below keep timm's parameter names (mlp.fc1 / mlp.fc2) and semantics.


class Mlp(nn.Module):
    """fc1 → GELU → fc2, named as timm's ``Mlp`` so checkpoints map one to one."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


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
