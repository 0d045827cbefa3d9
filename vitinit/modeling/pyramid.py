"""From plain-ViT maps (stride 16, ViT width) to the feature pyramid Mask R-CNN reads.

Three designs, chosen by name (:data:`PYRAMIDS`):

- ``"multiscale"`` — the paper's adapter (Li et al. 2021, §3): the outputs of the 4 group-final blocks (every
  d/4 blocks) go through 4 modules that keep the ViT width and make strides 4, 8, 16, 32 — 2×2 s2 transposed
  conv → GroupNorm → GELU → 2×2 s2 transposed conv; one 2×2 s2 transposed conv; identity; 2×2 s2 max-pool —
  then a standard FPN (P2–P5, plus P6 by max-pool).
- ``"singlescale"`` — the paper's ablation without FPN: RPN and RoI heads read one stride-16 map, the last
  block's output (projected to the FPN width by one lateral 1×1 and one 3×3 conv, as an FPN level would be).
  UNCONFIRMED: our reading of the ablation; the projection keeps the heads identical to the FPN model's.
- ``"simple"`` — ViTDet's simple feature pyramid (detectron2 ``SimpleFeaturePyramid``): the last block's map
  alone, rescaled by 4, 2, 1, ½ (transposed convs halving the width, max-pool), each followed by a 1×1 and
  a 3×3 conv with norm; P6 by max-pool.

The FPN parts are torchvision's ``FeaturePyramidNetwork`` (with ``norm_layer``) and ``LastLevelMaxPool``, so
levels are named as torchvision's Mask R-CNN expects: "0".."3" (strides 4..32) and "pool" (stride 64).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from vitinit.errors import ConfigError
from vitinit.modeling.vit import DetectionViT, quarter_block_indexes

PYRAMIDS = ("multiscale", "singlescale", "simple")

NormLayer = Callable[[int], nn.Module]


def group_norm(num_channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with 32 groups (MIMDet's choice for the adapter), fewer when the width is not a multiple."""
    return nn.GroupNorm(math.gcd(groups, num_channels), num_channels)


def feature_indices_for(pyramid: str, depth: int) -> tuple[int, ...]:
    """Blocks whose outputs a pyramid reads: the 4 group-final blocks, or the last block alone."""
    if pyramid not in PYRAMIDS:
        raise ConfigError(f"pyramid must be one of {PYRAMIDS}, got {pyramid!r}")
    if pyramid == "multiscale":
        if depth < 4:
            raise ConfigError(f"the multi-scale adapter needs at least 4 blocks, the backbone has {depth}")
        return quarter_block_indexes(depth)
    return (depth - 1,)


class MultiScaleAdapter(nn.Module):
    """The paper's adapter: 4 maps at stride 16 → strides 4, 8, 16, 32, all at the ViT width ``dim``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.stride4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
            group_norm(dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
        )
        self.stride8 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.stride16 = nn.Identity()
        self.stride32 = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, feats: list[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        if len(feats) != 4:
            raise ValueError(f"the multi-scale adapter takes 4 maps (one per block group), not {len(feats)}")
        layers = (self.stride4, self.stride8, self.stride16, self.stride32)
        return OrderedDict((str(i), layer(f)) for i, (layer, f) in enumerate(zip(layers, feats, strict=True)))


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple pyramid from the last map: scales 4, 2, 1, ½ → levels "0".."3" plus "pool".

    Follows detectron2's ``SimpleFeaturePyramid`` (channels-first LayerNorm between the two transposed convs,
    conv biases off where a norm follows); the 1×1/3×3 convs use this model's ``norm_layer`` (ViTDet: LN).
    """

    def __init__(self, dim: int, out_channels: int, norm_layer: NormLayer | None) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.scale4 = self._level(
            [
                nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
                LayerNorm2d(dim // 2, eps=1e-6),
                nn.GELU(),
                nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2),
            ],
            dim // 4, out_channels, norm_layer,
        )
        self.scale2 = self._level(
            [nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2)], dim // 2, out_channels, norm_layer
        )
        self.scale1 = self._level([], dim, out_channels, norm_layer)
        self.scale05 = self._level([nn.MaxPool2d(kernel_size=2, stride=2)], dim, out_channels, norm_layer)
        self.top_block = LastLevelMaxPool()

    @staticmethod
    def _level(
        resample: list[nn.Module], in_dim: int, out_dim: int, norm_layer: NormLayer | None
    ) -> nn.Sequential:
        return nn.Sequential(
            *resample,
            _conv_norm(in_dim, out_dim, 1, norm_layer),
            _conv_norm(out_dim, out_dim, 3, norm_layer),
        )

    def forward(self, feats: list[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        x = feats[-1]
        outs = [self.scale4(x), self.scale2(x), self.scale1(x), self.scale05(x)]
        names = ["0", "1", "2", "3"]
        outs, names = self.top_block(outs, outs, names)
        return OrderedDict(zip(names, outs, strict=True))


def _conv_norm(in_dim: int, out_dim: int, kernel: int, norm_layer: NormLayer | None) -> nn.Sequential:
    conv = nn.Conv2d(in_dim, out_dim, kernel, padding=kernel // 2, bias=norm_layer is None)
    return nn.Sequential(conv, norm_layer(out_dim)) if norm_layer is not None else nn.Sequential(conv)


class ViTFeaturePyramid(nn.Module):
    """The ``backbone`` torchvision's detectors take: image → ``OrderedDict`` of maps, with ``out_channels``.

    ``self.vit`` is the :class:`DetectionViT`; load converted weights into it with
    :func:`vitinit.modeling.vit.load_backbone_state`.
    """

    def __init__(
        self,
        vit: DetectionViT,
        *,
        pyramid: str = "multiscale",
        out_channels: int = 256,
        norm_layer: NormLayer | None = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        want = feature_indices_for(pyramid, vit.config.depth)
        if pyramid == "multiscale" and len(vit.config.feature_indices) != 4:
            raise ConfigError(
                f"the multi-scale adapter reads 4 blocks (e.g. {want}); the backbone returns "
                f"{len(vit.config.feature_indices)} (out_indices={vit.config.feature_indices})"
            )
        if pyramid != "multiscale" and vit.config.feature_indices[-1] != vit.config.depth - 1:
            last = vit.config.depth - 1
            raise ConfigError(f"the {pyramid} pyramid reads the last block; set out_indices=({last},)")
        self.pyramid = pyramid
        self.vit = vit
        self.out_channels = out_channels
        dim = vit.out_channels
        if pyramid == "multiscale":
            self.adapter = MultiScaleAdapter(dim)
            self.fpn = FeaturePyramidNetwork(
                [dim] * 4, out_channels, LastLevelMaxPool(), norm_layer=norm_layer
            )
        elif pyramid == "singlescale":
            self.adapter = None
            self.fpn = FeaturePyramidNetwork([dim], out_channels, None, norm_layer=norm_layer)
        else:
            self.adapter = None
            self.fpn = SimpleFeaturePyramid(dim, out_channels, norm_layer)

    @property
    def feature_names(self) -> list[str]:
        """Levels the RPN reads, finest first."""
        return ["0"] if self.pyramid == "singlescale" else ["0", "1", "2", "3", "pool"]

    @property
    def feature_strides(self) -> dict[str, int]:
        p = self.vit.config.patch_size
        if self.pyramid == "singlescale":
            return {"0": p}
        return {"0": p // 4, "1": p // 2, "2": p, "3": p * 2, "pool": p * 4}

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        # Maps keep the dtype autocast gave them: the heads' convs and fcs run under the same autocast, and
        # only box decoding, the losses and the mask paste cast to float32 (vitinit.modeling.rpn, roi_heads).
        return self.pyramid_from(self.vit(images))

    def pyramid_from(self, feats: list[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        """The levels from the ViT's maps (``self.vit(images)``): the neck alone."""
        if self.pyramid == "multiscale":
            return self.fpn(self.adapter(feats))
        if self.pyramid == "singlescale":
            return self.fpn(OrderedDict([("0", feats[-1])]))
        return self.fpn(feats)
