"""AdamW (the paper) or SGD (detectron2's from-scratch R-101 baseline) with the paper's parameter groups, and
the lr schedule as a pure function of the iteration.

Weight decay is 0 for normalization parameters (every ``nn.*Norm``), the absolute position embedding, the
relative-position bias tables (MIMDet's recipe; detectron2's ViTDet configs exempt norms and pos_embed) and
BEiT's layer scale.
Biases keep weight decay, as detectron2 does by default (``weight_decay_bias = weight_decay``). The groups
are the same for both optimizers: detectron2's ``configs/common/optim.py`` builds its SGD and AdamW alike
(``get_default_optimizer_params(weight_decay_norm=0)``).

Optional layer-wise lr decay follows ViTDet's ``get_vit_lr_decay_rate``: lr × rate^(L+1−layer), where the
model numbers its layers (``vitinit.modeling.lr_decay``: patch/pos embedding → 0, block k → k+1, everything
else → L+1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from vitinit.errors import ConfigError
from vitinit.modeling.lr_decay import lr_decay_layers

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.LocalResponseNorm)
# gamma_1/gamma_2: BEiT's layer scale, which its own fine-tuning exempts with every 1-D parameter.
_NO_DECAY_NAMES = ("pos_embed", "relative_position_bias_table", "gamma_1", "gamma_2")


def build_param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
) -> list[dict]:
    """Param groups for AdamW; each carries ``base_lr`` (lr × layer scale) for the schedule to scale."""
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, _NORMS):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    layers = lr_decay_layers(model) if layer_decay else None
    top = layers[1] if layers else 0
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = id(p) not in no_decay and not any(n in name for n in _NO_DECAY_NAMES)
        layer = layers[0](name) if layers else top
        scale = layer_decay ** (top - layer) if layers else 1.0
        g = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "base_lr": lr * scale,
                "lr": lr * scale,
                "lr_scale": scale,
            },
        )
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


OPTIMIZERS = ("adamw", "sgd")


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: Sequence[float] = (0.9, 0.999),
    layer_decay: float | None = None,
    optimizer: str = "adamw",
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """``optimizer="adamw"``: AdamW with ``betas`` (the paper). ``"sgd"``: SGD with ``momentum``, no
    Nesterov, L2 weight decay in the update (detectron2's ``configs/common/optim.py`` SGD, which its
    new_baselines LSJ configs train with: lr 0.1 at batch 64, momentum 0.9, weight decay 4e-5)."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    groups = build_param_groups(model, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay)
    for g in groups:
        g.pop("names")
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def lr_factor(
    it: int,
    *,
    max_iter: int,
    warmup_iters: int = 250,
    warmup_factor: float = 0.001,
    policy: str = "step",
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
) -> float:
    """Multiplier of the base lr at iteration ``it`` (0-based).

    ``policy="step"``: ×``gamma`` at each milestone (fractions of ``max_iter``; detectron2's 100-epoch LSJ
    uses 163,889 / 184,375 = 8/9 and 177,546 / 184,375 = 26/27). ``policy="cosine"``: half-cosine to 0
    (MIMDet). Both after a linear warmup from ``warmup_factor`` (detectron2's ``WarmupParamScheduler``).
    """
    if policy == "step":
        steps = sum(it >= round(m * max_iter) for m in milestones)
        value = gamma**steps
    elif policy == "cosine":
        value = 0.5 * (1 + math.cos(math.pi * min(it, max_iter) / max(max_iter, 1)))
    elif policy == "constant":
        value = 1.0
    else:
        raise ConfigError(f"unknown lr policy {policy!r}; choose step, cosine or constant")
    if it < warmup_iters:
        alpha = it / warmup_iters
        value *= warmup_factor * (1 - alpha) + alpha
    return value
