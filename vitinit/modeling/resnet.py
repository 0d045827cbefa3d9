"""The paper's CNN baseline: ResNet-101 + FPN from scratch, under the same Mask R-CNN heads as the ViT.

The paper's complexity comparison (Li et al. 2021) sets ViT-B against ResNet-101 trained from random
initialization with the same detector: R-101 from scratch reaches 48.9 box AP at 400 epochs, as random-init
ViT-B does, and runs faster (``recipes/random-vitb*.yaml`` say where ViT-B peaks). That R-101 number is
detectron2's "new baselines" config ``configs/new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ.py`` (48.9 box /
43.7 mask AP), so the trunk here is detectron2's ResNet, written on torchvision layers:

- ``BasicStem``: 7×7 stride-2 conv → norm → ReLU → 3×3 stride-2 max-pool (padding 1);
- ``BottleneckBlock`` with ``stride_in_1x1``: in the first block of res3–res5 the stride sits in the first
  1×1 conv (detectron2's ``configs/common/models/mask_rcnn_fpn.py``, which the new baselines keep), not in
  the 3×3 conv as torchvision's ResNet v1.5; a 1×1 conv + norm projection shortcut where the width changes;
- every conv without bias and followed by the norm, drawn with ``c2_msra_fill`` (He normal, fan-out); norm
  weights 1, biases 0; nothing frozen (from scratch, detectron2 sets ``freeze_at = 0``).

The norm is the detector's (the new baselines: SyncBN in the stem, the stages, the FPN and the heads). The
FPN is torchvision's ``BackboneWithFPN`` (its convs drawn as detectron2's ``c2_xavier_fill``) reading
res2–res5, with ``LastLevelMaxPool`` for P6. Levels are named "0".."3" and "pool", as the ViT's pyramid
(:class:`~vitinit.modeling.pyramid.ViTFeaturePyramid`) names them, so the RPN, the RoI poolers and every head
are shared unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn as nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import Conv2dNormActivation
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from vitinit.errors import ConfigError

RESNET_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
STAGES = {"res2": "0", "res3": "1", "res4": "2", "res5": "3"}  # C2..C5 → FPN inputs "0".."3"
Norm = Callable[[int], nn.Module]


def _conv(cin: int, cout: int, k: int, stride: int, norm: Norm, relu: bool) -> Conv2dNormActivation:
    # bias=None: a conv followed by a norm has no bias (detectron2's ``bias=False`` with a norm).
    return Conv2dNormActivation(
        cin, cout, k, stride, norm_layer=norm, activation_layer=nn.ReLU if relu else None, inplace=True
    )


class BasicStem(nn.Sequential):
    """detectron2's ``BasicStem``: conv 7×7/2 → norm → ReLU → max-pool 3×3/2; stride 4."""

    def __init__(self, norm: Norm, in_channels: int = 3, out_channels: int = 64) -> None:
        super().__init__(
            _conv(in_channels, out_channels, 7, 2, norm, relu=True), nn.MaxPool2d(3, stride=2, padding=1)
        )


class Bottleneck(nn.Module):
    """detectron2's ``BottleneckBlock``: 1×1 → 3×3 → 1×1 (+ projection shortcut), ReLU after the sum."""

    def __init__(
        self, cin: int, cout: int, mid: int, *, stride: int, norm: Norm, stride_in_1x1: bool = True
    ) -> None:
        super().__init__()
        # Registered first, as detectron2 does: the parameters then come in the same order as its block's.
        self.shortcut = _conv(cin, cout, 1, stride, norm, relu=False) if cin != cout else None
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv(cin, mid, 1, s1, norm, relu=True)
        self.conv2 = _conv(mid, mid, 3, s3, norm, relu=True)
        self.conv3 = _conv(mid, cout, 1, 1, norm, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return torch.relu_(self.conv3(self.conv2(self.conv1(x))) + identity)


class ResNetTrunk(nn.Module):
    """Stem and stages res2–res5 (strides 4, 8, 16, 32; widths 256, 512, 1024, 2048), as detectron2's
    ``ResNet.make_default_stages`` with ``num_groups=1``, ``width_per_group=64``, no dilation."""

    def __init__(self, depth: str = "resnet101", *, norm: Norm, stride_in_1x1: bool = True) -> None:
        super().__init__()
        if depth not in RESNET_BLOCKS:
            raise ConfigError(f"ResNet depth must be one of {', '.join(RESNET_BLOCKS)}, got {depth!r}")
        self.stem = BasicStem(norm)
        cin = 64
        for i, blocks in enumerate(RESNET_BLOCKS[depth]):
            cout, stride = 256 * 2**i, 1 if i == 0 else 2
            stage = [
                Bottleneck(cin if b == 0 else cout, cout, cout // 4, stride=stride if b == 0 else 1,
                           norm=norm, stride_in_1x1=stride_in_1x1)
                for b in range(blocks)
            ]
            self.add_module(f"res{i + 2}", nn.Sequential(*stage))
            cin = cout
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """detectron2's ``c2_msra_fill`` on every conv (no biases: each is followed by a norm); the norms keep
        their construction values, weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.stem(x)
        out = OrderedDict()
        for name in STAGES:
            x = getattr(self, name)(x)
            out[name] = x
        return out


class ResNetFPN(BackboneWithFPN):
    """ResNet trunk (``self.body``) + FPN (``self.fpn``): image → ``OrderedDict`` "0".."3", "pool".

    The same contract as the ViT pyramid: ``out_channels``, :attr:`feature_names`, :attr:`feature_strides`,
    and :meth:`pyramid_from` (the neck alone, on the trunk's maps).
    """

    trunk_name = "ResNet-101"

    def __init__(
        self,
        *,
        depth: str = "resnet101",
        out_channels: int = 256,
        norm_layer: Norm,
        stride_in_1x1: bool = True,
    ) -> None:
        trunk = ResNetTrunk(depth, norm=norm_layer, stride_in_1x1=stride_in_1x1)
        widths = [256 * 2**i for i in range(4)]
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
    *,
    norm_layer: Norm | None,
    out_channels: int = 256,
    depth: str = "resnet101",
    stride_in_1x1: bool = True,
) -> ResNetFPN:
    """The baseline backbone; ``norm_layer`` is the detector's (BN / SyncBN / GN), used in trunk and FPN.

    A ResNet needs a norm in its trunk: "none" is refused rather than silently replaced.
    """
    if norm_layer is None:
        raise ConfigError("the ResNet baseline needs a norm (BN, SyncBN or GN), not none")
    return ResNetFPN(
        depth=depth, out_channels=out_channels, norm_layer=norm_layer, stride_in_1x1=stride_in_1x1
    )
