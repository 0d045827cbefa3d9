"""The paper's CNN baseline: ResNet-101 + FPN from scratch, under the same Mask R-CNN heads as the ViT.

The paper's complexity comparison (Li et al. 2021) sets ViT-B against ResNet-101 trained from
random initialization with the same detector: both reach 48.9 box AP, ViT-B peaking at 200 epochs, R-101 at
400, R-101 running faster. Its detectron2 counterpart is the "new baselines" R-101 LSJ configs
(``configs/new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ.py``: from scratch, SyncBN in the stem, the stages, the
FPN and the heads, which is what this backbone does with ``norm="SyncBN"``; 48.9 box AP at 400 epochs).

The parts are torchvision's: ``resnet101(weights=None)`` (stride in the 3×3 conv, as ResNet v1.5 and
detectron2's new baselines; BN weights 1, biases 0, He-normal convs) and ``BackboneWithFPN`` reading C2–C5,
with ``LastLevelMaxPool`` for P6. Nothing is frozen: from scratch, every stage trains (detectron2 sets
``freeze_at = 0``). Levels are named "0".."3" and "pool", as the ViT's pyramid
(:class:`~vitinit.modeling.pyramid.ViTFeaturePyramid`) names them, so the RPN, the RoI poolers and every head
are shared unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn as nn
from torchvision.models import resnet101
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from vitinit.errors import ConfigError

RESNET_DEPTHS = {"resnet101": resnet101}
STAGES = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}  # C2..C5 → FPN inputs "0".."3"


class ResNetFPN(BackboneWithFPN):
    """ResNet trunk (``self.body``) + FPN (``self.fpn``): image → ``OrderedDict`` "0".."3", "pool".

    The same contract as the ViT pyramid: ``out_channels``, :attr:`feature_names`, :attr:`feature_strides`,
    and :meth:`pyramid_from` (the neck alone, on the trunk's maps).
    """

    trunk_name = "ResNet-101"

    def __init__(
        self, *, depth: str = "resnet101", out_channels: int = 256, norm_layer: Callable[[int], nn.Module]
    ) -> None:
        if depth not in RESNET_DEPTHS:
            raise ConfigError(f"ResNet depth must be one of {', '.join(RESNET_DEPTHS)}, got {depth!r}")
        trunk = RESNET_DEPTHS[depth](weights=None, norm_layer=norm_layer)
        widths = [trunk.layer1[-1].conv3.out_channels * 2**i for i in range(4)]  # 256, 512, 1024, 2048
        super().__init__(
            trunk, STAGES, widths, out_channels, extra_blocks=LastLevelMaxPool(), norm_layer=norm_layer
        )

    @property
    def feature_names(self) -> list[str]:
        return ["0", "1", "2", "3", "pool"]

    @property
    def feature_strides(self) -> dict[str, int]:
        return {"0": 4, "1": 8, "2": 16, "3": 32, "pool": 64}

    def pyramid_from(self, feats: OrderedDict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(feats)


def build_resnet_fpn(
    *, norm_layer: Callable[[int], nn.Module] | None, out_channels: int = 256, depth: str = "resnet101"
) -> ResNetFPN:
    """The baseline backbone; ``norm_layer`` is the detector's (BN / SyncBN / GN), used in trunk and FPN.

    A ResNet needs a norm in its trunk: "none" is refused rather than silently replaced.
    """
    if norm_layer is None:
        raise ConfigError("the ResNet baseline needs a norm (BN, SyncBN or GN), not none")
    return ResNetFPN(depth=depth, out_channels=out_channels, norm_layer=norm_layer)
