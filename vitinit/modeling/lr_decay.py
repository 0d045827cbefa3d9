"""Layer ids for layer-wise lr decay, beside the model they number (as detectron2 keeps
``get_vit_lr_decay_rate`` beside its ViT).

The optimizer (``vitinit.engine.optim``) only asks :func:`lr_decay_layers` for a model's numbering; what a
layer is belongs to the backbone.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch.nn as nn

from vitinit.modeling.vit import DetectionViT


def vit_lr_decay_layer_id(name: str, depth: int) -> int:
    """ViTDet's layer id (0 .. depth + 1) of a parameter named relative to the ViT.

    Patch and absolute position embedding → 0; block k → k + 1; the rest (final norm, shared relative-position
    tables used by every block) → depth + 1, the full rate, as BEiT's ``get_layer_id_for_vit`` gives
    ``rel_pos_bias`` the last layer.
    """
    if name.startswith(("pos_embed", "patch_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def lr_decay_layers(model: nn.Module) -> tuple[Callable[[str], int], int] | None:
    """``(layer_id(parameter name in model), num_layers)`` for a model holding a :class:`DetectionViT`;
    parameters outside the ViT (pyramid, FPN, heads) get ``num_layers``. None when there is no ViT."""
    for prefix, module in model.named_modules():
        if isinstance(module, DetectionViT):
            depth = module.config.depth
            return partial(_layer_id_in, head=prefix + "." if prefix else "", depth=depth), depth + 1
    return None


def _layer_id_in(name: str, *, head: str, depth: int) -> int:
    if not name.startswith(head):
        return depth + 1
    return vit_lr_decay_layer_id(name[len(head) :], depth)
