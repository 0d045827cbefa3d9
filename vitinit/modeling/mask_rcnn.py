"""Mask R-CNN with the paper's ViT backbone: our RPN and RoI heads on torchvision's ops and layers.

The paper's changes to Mask R-CNN (Li et al. 2021, §3; the same as torchvision's
``maskrcnn_resnet50_fpn_v2``, which cites the paper): BatchNorm in the FPN convs, an RPN head of 2 convs,
a box head of 4 convs with BN + 1 fc (1024), BN in the 4 convs of the mask head, synchronized BN across
GPUs. Anchors are the standard ones: one size per level (32..512 on P2-P6), ratios 0.5, 1, 2.

The detection logic follows detectron2 (the code the paper's authors and ViTDet used), not torchvision's
``RoIHeads`` / ``RegionProposalNetwork``: fixed pooler scales, ROIAlignV2, exact anchors, L1 box losses with
detectron2's normalisation, mask targets and paste on float boxes, float32 only where it matters — see
:mod:`~vitinit.modeling.rpn`, :mod:`~vitinit.modeling.roi_heads` and :mod:`~vitinit.modeling.poolers`.

The model is composed: any backbone module with ``feature_names``, ``feature_strides`` and ``out_channels``
(returning an ``OrderedDict`` of maps) gets the same RPN and heads from :func:`build_detector`.

Example:
    >>> cfg = MaskRCNNConfig(backbone=ViTBackboneConfig.for_variant("vit-b"), num_classes=80)
    >>> model = build_mask_rcnn(cfg)
    >>> load_backbone_state(model.backbone.vit, weights.state_dict)  # a ``--to vitdet`` file
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

import torch
import torch.nn as nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead

from vitinit.errors import ConfigError
from vitinit.modeling.anchors import CellAnchorGenerator
from vitinit.modeling.head_init import init_fresh_heads, init_predictors
from vitinit.modeling.norms import (  # noqa: F401  (re-exported: the bench and the tests import them from here)
    NORMS,
    convert_sync_batchnorm,
    norm_layer_for,
    revert_sync_batchnorm,
)
from vitinit.modeling.poolers import ROIPooler
from vitinit.modeling.pyramid import PYRAMIDS, ViTFeaturePyramid, feature_indices_for
from vitinit.modeling.resnet import build_resnet_fpn
from vitinit.modeling.roi_heads import RoIHeads
from vitinit.modeling.rpn import RPN
from vitinit.modeling.transform import SquarePadTransform
from vitinit.modeling.vit import DetectionViT, ViTBackboneConfig

# ImageNet statistics on the 0..1 scale (MAE, MoCo v3, DeiT). BEiT was pre-trained with mean = std = 0.5:
# recipes for BEiT weights should set image_mean/image_std accordingly.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREDICTOR_INITS = ("detectron2", "torchvision")


@dataclass(frozen=True)
class MaskRCNNConfig:
    """Everything :func:`build_mask_rcnn` needs. Detection knobs default to detectron2's Mask R-CNN values."""

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
    # Matching and sampling, as detectron2's MODEL.RPN.IOU_THRESHOLDS / POSITIVE_FRACTION and
    # MODEL.ROI_HEADS.IOU_THRESHOLDS / POSITIVE_FRACTION: anchors below the first RPN threshold are
    # background, at or above the second foreground; RoIs at or above box_iou_thresh are foreground.
    rpn_iou_thresholds: tuple[float, float] = (0.3, 0.7)
    rpn_positive_fraction: float = 0.5
    box_iou_thresh: float = 0.5
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    # Box regression loss of the RPN and the RoI box head: 0 = L1 (detectron2's smooth_l1_beta=0), > 0 =
    # smooth-L1 with that β (torchvision's is 1/9).
    rpn_smooth_l1_beta: float = 0.0
    box_smooth_l1_beta: float = 0.0
    # RoIAlign of the box and mask poolers: detectron2's ROIAlignV2 (aligned, adaptive sampling); the legacy
    # torchvision setting is aligned=False, sampling_ratio=2.
    pooler_sampling_ratio: int = 0
    pooler_aligned: bool = True
    # detectron2: predictors drawn from N(0, 0.01) (classes) / N(0, 0.001) (boxes, masks); torchvision:
    # PyTorch's defaults, which learn faster in very short runs (the demo; see head_init.init_predictors).
    predictor_init: str = "detectron2"
    # Pad every batch to max_size × max_size (detectron2 ViTDet's ``square_pad``), so that the ViT always sees
    # the token grid its absolute position embedding was trained at; without it a 1024×683 test image would
    # make the backbone resize that embedding to 64×43 and shift every position.
    square_pad: bool = True
    # "vit" (the paper's ViT + pyramid) | "resnet101": the from-scratch CNN baseline (vitinit.modeling.resnet)
    backbone_type: str = "vit"
    resnet_stride_in_1x1: bool = True  # detectron2's MODEL.RESNETS.STRIDE_IN_1X1 (its R-101 LSJ baseline)

    def __post_init__(self) -> None:
        if self.pyramid not in PYRAMIDS:
            raise ConfigError(f"pyramid must be one of {PYRAMIDS}, got {self.pyramid!r}")
        if self.backbone_type not in ("vit", "resnet101"):
            raise ConfigError(f"backbone_type must be vit or resnet101, got {self.backbone_type!r}")
        if self.backbone_type == "resnet101" and self.pyramid != "multiscale":
            raise ConfigError("the ResNet baseline has its own FPN; leave pyramid at multiscale")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.predictor_init not in PREDICTOR_INITS:
            raise ConfigError(f"predictor_init must be one of {PREDICTOR_INITS}, got {self.predictor_init!r}")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1 (background excluded), got {self.num_classes}")
        if len(self.anchor_sizes) != 5:
            raise ConfigError(f"anchor_sizes needs one size per level P2..P6 (5), got {self.anchor_sizes}")
        low, high = self.rpn_iou_thresholds
        if not (0 <= low <= high <= 1 and 0 <= self.box_iou_thresh <= 1):
            raise ConfigError(
                f"IoU thresholds must lie in [0, 1] with rpn low ≤ high, got rpn {self.rpn_iou_thresholds}, "
                f"box {self.box_iou_thresh}"
            )
        if not (0 < self.rpn_positive_fraction <= 1 and 0 < self.box_positive_fraction <= 1):
            raise ConfigError("rpn_positive_fraction and box_positive_fraction must lie in (0, 1]")
        for name in ("image_mean", "image_std", "anchor_sizes", "aspect_ratios", "rpn_iou_thresholds"):
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


def _backbone_config(cfg: MaskRCNNConfig) -> ViTBackboneConfig:
    """The ViT config with ``out_indices`` set to what the pyramid reads, unless the user set them."""
    bb = cfg.backbone
    if bb.out_indices is None:
        bb = bb.replace(out_indices=feature_indices_for(cfg.pyramid, bb.depth))
    return bb


class MaskRCNN(GeneralizedRCNN):
    """torchvision's ``GeneralizedRCNN`` flow (transform → backbone → rpn → roi_heads → postprocess).

    Training returns the loss dict (``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``,
    ``loss_box_reg``, ``loss_mask``), inference a list of dicts of ``boxes``, ``labels``, ``scores`` and
    ``masks`` (N, 1, H, W) probabilities in each original image's frame. ``config`` is the build config.
    """

    config: MaskRCNNConfig


def build_mask_rcnn(cfg: MaskRCNNConfig, *, device: torch.device | str | None = None) -> MaskRCNN:
    """Mask R-CNN on the paper's backbone; ``device="meta"`` builds it without memory.

    ``model.backbone.vit`` is the :class:`DetectionViT`, ``model.backbone.out_channels`` the FPN width, and
    ``model.config`` the ``cfg`` it was built from. ``cfg.num_classes`` excludes the background.
    """
    if device is not None:
        with torch.device(device):
            return build_mask_rcnn(cfg)
    if cfg.backbone_type == "resnet101":
        backbone = build_resnet_fpn(norm_layer=norm_layer_for(cfg.norm), out_channels=cfg.fpn_channels,
                                    stride_in_1x1=cfg.resnet_stride_in_1x1)
    else:
        backbone = ViTFeaturePyramid(
            DetectionViT(_backbone_config(cfg)),
            pyramid=cfg.pyramid,
            out_channels=cfg.fpn_channels,
            norm_layer=norm_layer_for(cfg.norm),
        )
    return build_detector(cfg, backbone)


def build_detector(cfg: MaskRCNNConfig, backbone: nn.Module) -> MaskRCNN:
    """The RPN, RoI heads and transform of ``cfg`` on any pyramid ``backbone`` (see the module doc)."""
    model = MaskRCNN(backbone, build_rpn(cfg, backbone), build_roi_heads(cfg, backbone), build_transform(cfg))
    model.config = cfg
    return model


def build_rpn(cfg: MaskRCNNConfig, backbone: nn.Module) -> RPN:
    levels = backbone.feature_names
    strides = tuple(backbone.feature_strides[n] for n in levels)
    if len(levels) == 1:
        # One map: every anchor size sits on it (as single-scale Faster R-CNN does).
        sizes = (tuple(float(s) for s in cfg.anchor_sizes),)
    elif len(levels) == len(cfg.anchor_sizes):
        sizes = tuple((float(s),) for s in cfg.anchor_sizes)
    else:
        raise ConfigError(f"{len(cfg.anchor_sizes)} anchor sizes for {len(levels)} pyramid levels")
    anchors = CellAnchorGenerator(sizes, cfg.aspect_ratios, strides)
    head = RPNHead(backbone.out_channels, anchors.num_anchors, conv_depth=cfg.rpn_conv_depth)
    return RPN(
        anchors,
        head,
        pre_nms_top_n={"training": cfg.rpn_pre_nms_top_n_train, "testing": cfg.rpn_pre_nms_top_n_test},
        post_nms_top_n={"training": cfg.rpn_post_nms_top_n_train, "testing": cfg.rpn_post_nms_top_n_test},
        nms_thresh=cfg.rpn_nms_thresh,
        batch_size_per_image=cfg.rpn_batch_size_per_image,
        positive_fraction=cfg.rpn_positive_fraction,
        bg_iou_thresh=cfg.rpn_iou_thresholds[0],
        fg_iou_thresh=cfg.rpn_iou_thresholds[1],
        smooth_l1_beta=cfg.rpn_smooth_l1_beta,
    )


def build_roi_heads(cfg: MaskRCNNConfig, backbone: nn.Module) -> RoIHeads:
    # RoIs are pooled from P2–P5 (not P6), as detectron2's and torchvision's FPN models.
    levels = [n for n in backbone.feature_names if n != "pool"]
    scales = tuple(1.0 / backbone.feature_strides[n] for n in levels)
    c, norm_layer = backbone.out_channels, norm_layer_for(cfg.norm)
    pool = dict(sampling_ratio=cfg.pooler_sampling_ratio, aligned=cfg.pooler_aligned)
    box_predictor = FastRCNNPredictor(cfg.box_head_fc, cfg.num_classes + 1)
    # Explicit widths so fpn_channels other than 256 work (torchvision's default assumes 256).
    mask_predictor = MaskRCNNPredictor(c, c, cfg.num_classes + 1)
    convs = [c] * cfg.box_head_convs
    box_head = FastRCNNConvFCHead((c, 7, 7), convs, [cfg.box_head_fc], norm_layer=norm_layer)
    init_fresh_heads(box_head, mask_predictor)
    if cfg.predictor_init == "detectron2":
        init_predictors(box_predictor, mask_predictor)
    return RoIHeads(
        levels,
        ROIPooler(7, scales, **pool),
        box_head,
        box_predictor,
        ROIPooler(14, scales, **pool),
        MaskRCNNHeads(c, [c] * cfg.mask_head_convs, 1, norm_layer=norm_layer),
        mask_predictor,
        batch_size_per_image=cfg.box_batch_size_per_image,
        positive_fraction=cfg.box_positive_fraction,
        iou_thresh=cfg.box_iou_thresh,
        smooth_l1_beta=cfg.box_smooth_l1_beta,
        score_thresh=cfg.box_score_thresh,
        nms_thresh=cfg.box_nms_thresh,
        detections_per_img=cfg.box_detections_per_img,
    )


def build_transform(cfg: MaskRCNNConfig) -> SquarePadTransform:
    """Normalize, resize at test time, pad — to ``max_size``² when ``square_pad`` (ViTDet's square_pad).

    Without square padding a 1024×683 test image would make the backbone resize its absolute position
    embedding to 64×43 and shift every position.
    """
    return SquarePadTransform(
        cfg.min_size, cfg.max_size, list(cfg.image_mean), list(cfg.image_std),
        square_size=cfg.max_size if cfg.square_pad else None,
    )


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
