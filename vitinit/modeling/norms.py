"""Norm layers of the neck and heads, and BatchNorm ↔ SyncBatchNorm where the process group allows it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import torch
import torch.distributed as dist
import torch.nn as nn

from vitinit.modeling.pyramid import group_norm

logger = logging.getLogger(__name__)

NORMS = ("BN", "SyncBN", "GN", "LN", "none")


def norm_layer_for(norm: str) -> Callable[[int], nn.Module] | None:
    """The per-channel norm factory torchvision's FPN and heads take (``norm_layer(num_channels)``)."""
    if norm in ("BN", "SyncBN"):
        # Built as plain BN: SyncBN refuses CPU tensors under a process group (convert_sync_batchnorm).
        return nn.BatchNorm2d
    if norm == "GN":
        return group_norm
    if norm == "LN":
        return partial(_layer_norm_2d, eps=1e-6)
    return None


def _layer_norm_2d(num_channels: int, eps: float) -> nn.Module:
    from timm.layers import LayerNorm2d

    return LayerNorm2d(num_channels, eps=eps)


def convert_sync_batchnorm(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Synchronize BatchNorm across processes where that works, and say so where it does not.

    On CUDA under an initialized process group of several processes, every ``BatchNorm*d`` becomes
    ``SyncBatchNorm`` (the paper's setting). Elsewhere (CPU, gloo, one process) SyncBN would refuse CPU
    tensors in training, so any ``SyncBatchNorm`` goes back to plain per-process BN; the fallback is logged.
    Models built with ``norm`` other than "SyncBN" (``model.config``) are returned unchanged.
    """
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "norm", "SyncBN") != "SyncBN":
        return model
    device = torch.device(device)
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if distributed:
        logger.warning(
            "SyncBatchNorm needs CUDA; on %s with %d processes each keeps its own BatchNorm statistics",
            device.type, dist.get_world_size(),
        )
    return revert_sync_batchnorm(model)


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``SyncBatchNorm`` by a ``BatchNorm2d`` holding the same parameters and statistics."""
    if isinstance(module, nn.SyncBatchNorm):
        bn = nn.BatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
            device=module.weight.device if module.affine else None,
        )
        bn.load_state_dict(module.state_dict())
        bn.train(module.training)
        return bn
    for name, child in module.named_children():
        new = revert_sync_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module
