"""AdamW with the paper's parameter groups, and the lr schedule as a pure function of the iteration.

Weight decay is 0 for normalization parameters (every ``nn.*Norm``), the absolute position embedding, the
relative-position bias tables (MIMDet's recipe; detectron2's ViTDet configs exempt norms and pos_embed) and
BEiT's layer scale.
Biases keep weight decay, as detectron2 does by default (``weight_decay_bias = weight_decay``).

Optional layer-wise lr decay follows ViTDet's ``get_vit_lr_decay_rate`` (formats.md §6.6): patch/pos
embedding → layer 0, block k → k+1, everything else (pyramid, FPN, heads) → L+1, lr × rate^(L+1−layer).
Shared relative-position tables are used by every block; like BEiT's fine-tuning code
(``get_layer_id_for_vit``: ``rel_pos_bias`` → last layer) they get the full rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from vitinit.errors import ConfigError
from vitinit.modeling.vit import DetectionViT

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.LocalResponseNorm)
# gamma_1/gamma_2: BEiT's layer scale, which its own fine-tuning exempts with every 1-D parameter.
_NO_DECAY_NAMES = ("pos_embed", "relative_position_bias_table", "gamma_1", "gamma_2")


def _find_vit(model: nn.Module) -> tuple[str, DetectionViT] | None:
    for name, module in model.named_modules():
        if isinstance(module, DetectionViT):
            return name, module
    return None


def vit_layer_id(name: str, vit_prefix: str, depth: int) -> int:
    """ViTDet's layer id of a parameter name (0 .. depth + 1)."""
    prefix = vit_prefix + "." if vit_prefix else ""
    if not name.startswith(prefix):
        return depth + 1
    rest = name[len(prefix) :]
    if rest.startswith(("pos_embed", "patch_embed")):
        return 0
    if rest.startswith("blocks."):
        return int(rest.split(".")[1]) + 1
    return depth + 1


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
    found = _find_vit(model)
    vit_prefix, depth = (found[0], found[1].config.depth) if found else ("", 0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = id(p) not in no_decay and not any(n in name for n in _NO_DECAY_NAMES)
        layer = vit_layer_id(name, vit_prefix, depth) if (layer_decay and found) else depth + 1
        scale = layer_decay ** (depth + 1 - layer) if (layer_decay and found) else 1.0
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


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: Sequence[float] = (0.9, 0.999),
    layer_decay: float | None = None,
) -> torch.optim.AdamW:
    groups = build_param_groups(model, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay)
    for g in groups:
        g.pop("names")
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
