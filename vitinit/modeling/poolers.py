"""RoI pooling over a feature pyramid, with the level scales fixed when the model is built.

torchvision's ``MultiScaleRoIAlign`` infers its scales once, from the *first batch's* image sizes, and only
from their height: with square padding a landscape first image (COCO's 640×426 resized to 1024×681) makes it
pool every later RoI from the wrong level at twice its coordinates. As detectron2's ``ROIPooler``, this
pooler takes the scales from the feature strides (1/4 … 1/32 on P2–P5) and maps each box to a level by the
FPN paper's rule (eq. 1: a 224-px box lands on level 4, the canonical ImageNet size on P4).

RoIAlign is detectron2's "ROIAlignV2" by default: ``aligned=True`` (a pixel's centre at +0.5, so a box is
not shifted by half a pixel) and ``sampling_ratio=0`` (adaptive: ceil(bin size) samples per bin).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torchvision.ops import roi_align


def boxes_to_rois(boxes: list[torch.Tensor]) -> torch.Tensor:
    """Per-image (N_i, 4) boxes → one (sum N_i, 5) tensor ``[image index, x1, y1, x2, y2]`` (float32)."""
    rois = [
        torch.cat([b.new_full((len(b), 1), i, dtype=torch.float32), b.float()], dim=1)
        for i, b in enumerate(boxes)
    ]
    return torch.cat(rois) if rois else torch.zeros(0, 5)


def assign_levels(
    boxes: torch.Tensor, min_level: int, max_level: int, canonical_size: float = 224, canonical_level: int = 4
) -> torch.Tensor:
    """Pyramid level of each (x1, y1, x2, y2) box, as an offset from ``min_level`` (FPN paper eq. 1).

    Same rule and epsilon as detectron2's ``assign_boxes_to_levels``; torchvision's ``LevelMapper`` differs
    only in its epsilon (1e-6), which moves boxes within 1e-6 of a level boundary.
    """
    size = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    level = torch.floor(canonical_level + torch.log2(size / canonical_size + 1e-8))
    return level.clamp(min=min_level, max=max_level).to(torch.int64) - min_level


class ROIPooler(nn.Module):
    """RoIAlign of boxes on the level their size selects; ``scales[i]`` is 1 / stride of ``features[i]``.

    Example:
        >>> pooler = ROIPooler(7, scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32))
        >>> feats = [torch.zeros(1, 8, 256 // 2**i, 256 // 2**i) for i in range(4)]
        >>> pooler(feats, [torch.tensor([[0.0, 0.0, 100.0, 80.0]])]).shape
        torch.Size([1, 8, 7, 7])
    """

    def __init__(
        self,
        output_size: int,
        scales: tuple[float, ...],
        *,
        sampling_ratio: int = 0,
        aligned: bool = True,
        canonical_size: float = 224,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        levels = [-math.log2(s) for s in scales]
        if any(abs(lv - round(lv)) > 1e-6 for lv in levels) or any(
            round(b) - round(a) != 1 for a, b in zip(levels, levels[1:], strict=False)
        ):
            raise ValueError(f"scales must be consecutive powers of 1/2 (1/4, 1/8, ...), got {scales}")
        self.output_size = output_size
        self.scales = tuple(float(s) for s in scales)
        self.min_level, self.max_level = round(levels[0]), round(levels[-1])
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, scales={self.scales}, sampling_ratio={self.sampling_ratio}, "
            f"aligned={self.aligned}"
        )

    def forward(self, features: list[torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
        """(sum N_i, C, S, S) features of the boxes, in the order of the images and of their boxes."""
        if len(features) != len(self.scales):
            raise ValueError(f"the pooler has {len(self.scales)} scales but got {len(features)} feature maps")
        rois = boxes_to_rois(boxes).to(features[0].device)
        kw = dict(output_size=self.output_size, sampling_ratio=self.sampling_ratio, aligned=self.aligned)
        if len(features) == 1:
            return roi_align(features[0], rois, spatial_scale=self.scales[0], **kw)
        levels = assign_levels(rois[:, 1:], self.min_level, self.max_level, self.canonical_size,
                               self.canonical_level)
        c = features[0].shape[1]
        out = features[0].new_zeros((len(rois), c, self.output_size, self.output_size))
        for i, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            idx = torch.nonzero(levels == i).squeeze(1)
            if idx.numel():
                out[idx] = roi_align(feature, rois[idx], spatial_scale=scale, **kw).to(out.dtype)
        return out
