"""Mask R-CNN with the paper's ViT backbone, composed from torchvision's detection modules.

The paper's changes to Mask R-CNN (Li et al. 2021, §3; the same as torchvision's
``maskrcnn_resnet50_fpn_v2``, which cites the paper): BatchNorm in the FPN convs, an RPN head of 2 convs,
a box head of 4 convs with BN + 1 fc (1024), BN in the 4 convs of the mask head, synchronized BN across
GPUs. Anchors are the standard ones: one size per level (32..512 on P2-P6), ratios 0.5, 1, 2. RoIAlign and
NMS are torchvision's.

Example:
    >>> cfg = MaskRCNNConfig(backbone=ViTBackboneConfig.for_variant("vit-b"), num_classes=80)
    >>> model = build_mask_rcnn(cfg)
    >>> load_backbone_state(model.backbone.vit, weights.state_dict)  # a ``--to vitdet`` file
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial

import torch
import torch.distributed as dist
import torch.nn as nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from vitinit.errors import ConfigError
from vitinit.modeling.pyramid import PYRAMIDS, ViTFeaturePyramid, feature_indices_for, group_norm
from vitinit.modeling.resnet import build_resnet_fpn
from vitinit.modeling.vit import DetectionViT, ViTBackboneConfig

logger = logging.getLogger(__name__)

NORMS = ("BN", "SyncBN", "GN", "LN", "none")

# ImageNet statistics on the 0..1 scale (MAE, MoCo v3, DeiT). BEiT was pre-trained with mean = std = 0.5:
# recipes for BEiT weights should set image_mean/image_std accordingly.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class MaskRCNNConfig:
    """Everything :func:`build_mask_rcnn` needs. Detection knobs default to torchvision's values."""

    backbone: ViTBackboneConfig = field(default_factory=ViTBackboneConfig)
    num_classes: int = 80  # object classes, without the background
    pyramid: str = "multiscale"  # multiscale (the paper) | singlescale (its ablation) | simple (ViTDet)
    fpn_channels: int = 256
    # BN: per-process BatchNorm. SyncBN (the paper): BatchNorm synchronized across processes on CUDA, see
    # convert_sync_batchnorm. GN: GroupNorm(32). LN: channels-first LayerNorm (ViTDet's neck and heads).
    norm: str = "SyncBN"
    min_size: int = 1024
    max_size: int = 1024
    image_mean: tuple[float, float, float] = IMAGENET_MEAN  # RGB, 0..1 scale
    image_std: tuple[float, float, float] = IMAGENET_STD
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one per level P2..P6
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_conv_depth: int = 2
    box_head_convs: int = 4
    box_head_fc: int = 1024
    mask_head_convs: int = 4
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_batch_size_per_image: int = 256
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    # Pad every batch to max_size × max_size (detectron2 ViTDet's ``square_pad``), so that the ViT always sees
    # the token grid its absolute position embedding was trained at; without it a 1024×683 test image would
    # make the backbone resize that embedding to 64×43 and shift every position.
    square_pad: bool = True
    # "vit" (the paper's ViT + pyramid) | "resnet101": the from-scratch CNN baseline (vitinit.modeling.resnet)
    backbone_type: str = "vit"

    def __post_init__(self) -> None:
        if self.pyramid not in PYRAMIDS:
            raise ConfigError(f"pyramid must be one of {PYRAMIDS}, got {self.pyramid!r}")
        if self.backbone_type not in ("vit", "resnet101"):
            raise ConfigError(f"backbone_type must be vit or resnet101, got {self.backbone_type!r}")
        if self.backbone_type == "resnet101" and self.pyramid != "multiscale":
            raise ConfigError("the ResNet baseline has its own FPN; leave pyramid at multiscale")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1 (background excluded), got {self.num_classes}")
        if len(self.anchor_sizes) != 5:
            raise ConfigError(f"anchor_sizes needs one size per level P2..P6 (5), got {self.anchor_sizes}")
        for name in ("image_mean", "image_std", "anchor_sizes", "aspect_ratios"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def replace(self, **changes) -> MaskRCNNConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MaskRCNNConfig:
        """Inverse of :meth:`to_dict`; ``backbone`` may be a dict, a backbone config or a variant name."""
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown Mask R-CNN option(s): {', '.join(unknown)}")
        bb = d.get("backbone")
        if isinstance(bb, str):
            d["backbone"] = ViTBackboneConfig.for_variant(bb)
        elif isinstance(bb, dict):
            bb = dict(bb)
            for k in ("global_block_indexes", "out_indices"):
                if bb.get(k) is not None:
                    bb[k] = tuple(bb[k])
            d["backbone"] = ViTBackboneConfig(**bb)
        return cls(**d)


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


def _backbone_config(cfg: MaskRCNNConfig) -> ViTBackboneConfig:
    """The ViT config with ``out_indices`` set to what the pyramid reads, unless the user set them."""
    bb = cfg.backbone
    if bb.out_indices is None:
        bb = bb.replace(out_indices=feature_indices_for(cfg.pyramid, bb.depth))
    return bb


def build_mask_rcnn(cfg: MaskRCNNConfig, *, device: torch.device | str | None = None) -> MaskRCNN:
    """torchvision's ``MaskRCNN`` on the paper's backbone; ``device="meta"`` builds it without memory.

    ``model.backbone.vit`` is the :class:`DetectionViT`, ``model.backbone.out_channels`` the FPN width, and
    ``model.config`` the ``cfg`` it was built from. ``cfg.num_classes`` excludes the background.
    """
    if device is not None:
        with torch.device(device):
            return build_mask_rcnn(cfg)
    norm_layer = norm_layer_for(cfg.norm)
    if cfg.backbone_type == "resnet101":
        backbone = build_resnet_fpn(norm_layer=norm_layer, out_channels=cfg.fpn_channels)
    else:
        backbone = ViTFeaturePyramid(
            DetectionViT(_backbone_config(cfg)),
            pyramid=cfg.pyramid,
            out_channels=cfg.fpn_channels,
            norm_layer=norm_layer,
        )
    levels = backbone.feature_names
    if cfg.pyramid == "singlescale":
        # One map: every anchor size sits on it (as single-scale Faster R-CNN does).
        anchor_sizes = (cfg.anchor_sizes,)
    else:
        anchor_sizes = tuple((s,) for s in cfg.anchor_sizes)
    anchors = AnchorGenerator(anchor_sizes, (cfg.aspect_ratios,) * len(anchor_sizes))
    c = cfg.fpn_channels
    rpn_head = RPNHead(c, anchors.num_anchors_per_location()[0], conv_depth=cfg.rpn_conv_depth)
    roi_levels = [n for n in levels if n != "pool"]  # P2–P5, as torchvision's FPN models
    box_head = FastRCNNConvFCHead(
        (c, 7, 7), [c] * cfg.box_head_convs, [cfg.box_head_fc], norm_layer=norm_layer
    )
    mask_head = MaskRCNNHeads(c, [c] * cfg.mask_head_convs, 1, norm_layer=norm_layer)
    model = MaskRCNN(
        backbone,
        num_classes=None,  # the predictors below carry it (+1 for the background)
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        image_mean=list(cfg.image_mean),
        image_std=list(cfg.image_std),
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_nms_thresh=cfg.rpn_nms_thresh,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_roi_pool=MultiScaleRoIAlign(roi_levels, output_size=7, sampling_ratio=2),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(cfg.box_head_fc, cfg.num_classes + 1),
        box_score_thresh=cfg.box_score_thresh,
        box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.box_detections_per_img,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_positive_fraction=cfg.box_positive_fraction,
        mask_roi_pool=MultiScaleRoIAlign(roi_levels, output_size=14, sampling_ratio=2),
        mask_head=mask_head,
        # Explicit so fpn_channels other than 256 work (torchvision's default assumes 256).
        mask_predictor=MaskRCNNPredictor(c, c, cfg.num_classes + 1),
    )
    full_precision(model.rpn)
    full_precision(model.roi_heads)
    if cfg.square_pad:
        t = model.transform
        model.transform = SquarePadTransform(
            t.min_size, t.max_size, t.image_mean, t.image_std, square_size=cfg.max_size,
            size_divisible=t.size_divisible,
        )
    model.config = cfg
    return model


def full_precision(module: nn.Module) -> nn.Module:
    """Run ``module`` with autocast off, whatever the caller enabled; returns it (state dict unchanged).

    Mixed precision pays in the ViT, not in the heads, and it breaks them: torchvision's
    ``BoxCoder.decode_single`` casts anchors and proposals to the dtype of the regression deltas, so under
    bf16 every box lands on a 2–4 px grid at 1024 px (mean IoU 0.83 with the fp32 box for 8–32 px objects),
    which lowers AP for any detector. detectron2 decodes in float32 for the same reason.
    """
    forward = module.forward

    @functools.wraps(forward)
    def forward_fp32(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            for device_type in ("cuda", "cpu"):
                if torch.is_autocast_enabled(device_type):
                    stack.enter_context(torch.autocast(device_type, enabled=False))
            return forward(*args, **kwargs)

    module.forward = forward_fp32
    return module


class SquarePadTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform, padding each batch (bottom-right) to at least a fixed square.

    In training it does not resize: the data pipeline's large-scale jitter already chose each image's scale,
    and resizing to ``min_size`` would undo it (detectron2 likewise only pads in the model).
    """

    def __init__(self, *args, square_size: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.square_size = square_size

    def resize(self, image: torch.Tensor, target: dict | None = None) -> tuple[torch.Tensor, dict | None]:
        if self.training:
            return image, target
        return super().resize(image, target)

    def batch_images(self, images: list[torch.Tensor], size_divisible: int = 32) -> torch.Tensor:
        h = max(self.square_size, *(img.shape[-2] for img in images))
        w = max(self.square_size, *(img.shape[-1] for img in images))
        h, w = (-(-h // size_divisible) * size_divisible, -(-w // size_divisible) * size_divisible)
        batch = images[0].new_zeros((len(images), images[0].shape[0], h, w))
        for img, slot in zip(images, batch, strict=True):
            slot[:, : img.shape[-2], : img.shape[-1]].copy_(img)
        return batch


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


def count_parameters(module: nn.Module | None, *, trainable_only: bool = False) -> int:
    """Number of parameter elements (works on meta-device models)."""
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_breakdown(model: MaskRCNN) -> dict[str, int]:
    """Parameters per part of the detector; the parts sum to ``"total"``."""
    vit = count_parameters(model.backbone.vit)
    heads = model.roi_heads
    parts = {
        "ViT backbone": vit,
        "adapter + FPN": count_parameters(model.backbone) - vit,
        "RPN": count_parameters(model.rpn),
        "box head": count_parameters(heads.box_head) + count_parameters(heads.box_predictor),
        "mask head": count_parameters(heads.mask_head) + count_parameters(heads.mask_predictor),
    }
    total = count_parameters(model)
    other = total - sum(parts.values())
    if other:
        parts["other"] = other  # a module none of the parts above covers
    parts["total"] = total
    return parts
