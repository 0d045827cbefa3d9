"""The ViT + pyramid as a stand-alone detection backbone, for other frameworks (mmdet, detectron2, notebooks).

:class:`ViTFeaturePyramid` speaks torchvision's dialect (levels ``"0"`` … ``"pool"``, one ``out_channels``);
:class:`FeatureBackbone` wraps it in detectron2's: levels named ``p<log2 stride>`` (``p2`` … ``p6``, as
ViTDet's ``SimpleFeaturePyramid`` names them) and an :meth:`~FeatureBackbone.output_shape` giving each
level's channels and stride, as detectron2's ``Backbone.output_shape``. The weights are the same module's.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn

from vitinit.modeling.pyramid import ViTFeaturePyramid
from vitinit.modeling.vit import DetectionViT


@dataclass(frozen=True)
class ShapeSpec:
    """One output level: its channels and its stride in input pixels (detectron2's ``ShapeSpec`` fields)."""

    channels: int
    stride: int


class FeatureBackbone(nn.Module):
    """Images (B, 3, H, W), normalized, sides a multiple of ``size_divisibility`` → ``{"p2": …, …, "p6": …}``.

    Attributes:
        pyramid: the wrapped :class:`ViTFeaturePyramid` (``pyramid.vit`` is the :class:`DetectionViT`).
        provenance: where the ViT's weights came from (what ``weights.json`` of a run holds).
    """

    def __init__(self, pyramid: ViTFeaturePyramid, provenance: dict | None = None) -> None:
        super().__init__()
        self.pyramid = pyramid
        self.provenance = dict(provenance or {})
        strides = pyramid.feature_strides
        self._names = {k: f"p{int(math.log2(strides[k]))}" for k in pyramid.feature_names}

    @property
    def vit(self) -> DetectionViT:
        return self.pyramid.vit

    @property
    def size_divisibility(self) -> int:
        """Input sides must be a multiple of this: the coarsest stride, and whole attention windows."""
        config = self.vit.config
        return max(max(self.pyramid.feature_strides.values()), config.patch_size * config.window_size)

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Each output level's channels and stride, finest first."""
        strides = self.pyramid.feature_strides
        return {
            self._names[k]: ShapeSpec(channels=self.pyramid.out_channels, stride=strides[k])
            for k in self.pyramid.feature_names
        }

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict((self._names[k], v) for k, v in self.pyramid(images).items())
