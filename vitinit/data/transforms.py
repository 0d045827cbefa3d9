"""Training and test transforms, built from torchvision's v2 transforms.

Training uses the paper's large-scale jitter (LSJ, Ghiasi et al. 2021; detectron2's ViTDet loader):
horizontal flip → resize by a random factor in [0.1, 2.0] of the scale that fits the image in size×size →
random crop to size×size where larger → pad to size×size. Boxes are transformed with the image (exactly, as
detectron2 does), then clamped to the crop; masks follow with pixel-centred nearest resizing; objects cropped
away are dropped with their labels.

We differ from v2's ``RandomCrop(pad_if_needed=True)`` on purpose: it pads on *both* sides, so a small image
lands at a random spot of the canvas. detectron2 (``FixedSizeCrop`` + the model's square padding) keeps it in
the top-left corner and pads bottom-right; :class:`FixedSizeCrop` below does that.

At test time the image is only converted: torchvision's ``GeneralizedRCNNTransform`` with
``min_size = max_size = size`` resizes the longer side to ``size`` (detectron2's ``ResizeShortestEdge(size,
max_size=size)`` on a square target) and maps the detections back to the original image, which is what COCO
evaluation needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._utils import query_size

# Pad value for images (uint8 RGB): the ImageNet mean, so padding normalizes to ~0 as detectron2's
# post-normalization zero padding does.
IMAGENET_MEAN_UINT8 = (124, 116, 104)


class FixedSizeCrop(v2.Transform):
    """Crop a random size×size window where the image is larger, then pad bottom-right up to size×size."""

    def __init__(
        self, size: int | Sequence[int], fill: Sequence[int] = IMAGENET_MEAN_UINT8, *, pad: bool = True
    ) -> None:
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.fill = list(fill)
        self.pad = pad

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = query_size(flat_inputs)
        th, tw = self.size
        top = int(torch.randint(0, h - th + 1, ())) if h > th else 0
        left = int(torch.randint(0, w - tw + 1, ())) if w > tw else 0
        ch, cw = min(h, th), min(w, tw)
        return dict(top=top, left=left, height=ch, width=cw, pad=[0, 0, tw - cw, th - ch])

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = self._call_kernel(
            F.crop,
            inpt,
            top=params["top"],
            left=params["left"],
            height=params["height"],
            width=params["width"],
        )
        if self.pad and any(params["pad"]):
            fill = self.fill if isinstance(inpt, tv_tensors.Image) else 0
            out = self._call_kernel(F.pad, out, padding=params["pad"], fill=fill)
        return out


class ScaleJitter(v2.ScaleJitter):
    """v2's ``ScaleJitter`` with masks resized by NEAREST_EXACT (pixel centres), not legacy NEAREST.

    Legacy NEAREST samples source pixel ⌊i · in / out⌋ for output pixel i, which shifts every mask edge
    down-right by up to one output pixel (+0.2…+0.46 px on average at LSJ's scales); NEAREST_EXACT samples
    ⌊(i + 0.5) · in / out⌋, so masks stay centred on the boxes, which are scaled exactly with the image.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, size=params["size"], interpolation=v2.InterpolationMode.NEAREST_EXACT)
        return super().transform(inpt, params)


class ShrinkBoxesToMasks:
    """Where the crop cut an object, shrink its box to the part of the object left in the crop.

    Boxes are transformed with the image and clamped to the crop window, exactly as detectron2 transforms
    them, but clamping keeps the part of the *box* inside the window, which for a cut circle or triangle is
    looser than the part of the *object* inside it (detectron2 re-derives the box from the cropped polygon).
    So each edge moves in to the mask's tight box, widened by ``tolerance`` px: the mask is only exact to the
    pixel, and an object the crop did not cut keeps its exact box. Instances whose mask the crop emptied get
    an empty box, which ``SanitizeBoundingBoxes`` then drops with their masks and labels.
    Mask boxes use detectron2's ``BitMasks.get_bounding_boxes`` convention: x2 = last column + 1.
    """

    def __init__(self, tolerance: float = 1.0) -> None:
        self.tolerance = tolerance

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        masks, boxes = target.get("masks"), target.get("boxes")
        if masks is None or boxes is None or masks.shape[0] == 0:
            return image, target
        m = masks.bool()
        rows, cols = m.any(dim=2), m.any(dim=1)  # (N, H), (N, W)
        h, w = m.shape[-2:]
        ar_h, ar_w = torch.arange(h), torch.arange(w)
        tight = torch.stack(
            [
                torch.where(cols, ar_w, w).amin(1),
                torch.where(rows, ar_h, h).amin(1),
                torch.where(cols, ar_w + 1, 0).amax(1),
                torch.where(rows, ar_h + 1, 0).amax(1),
            ],
            1,
        ).to(boxes.dtype)
        t = self.tolerance
        xyxy = boxes.as_subclass(torch.Tensor).clone()
        xyxy[:, :2] = torch.maximum(xyxy[:, :2], tight[:, :2] - t)
        xyxy[:, 2:] = torch.minimum(xyxy[:, 2:], tight[:, 2:] + t)
        xyxy[~rows.any(1)] = 0
        return image, {**target, "boxes": tv_tensors.wrap(xyxy, like=boxes)}


def lsj_transform(
    size: int = 1024,
    *,
    scale_range: Sequence[float] = (0.1, 2.0),
    flip: bool = True,
) -> v2.Transform:
    """The paper's training augmentation; the output image is float in [0, 1], at most (3, size, size).

    As detectron2's ViTDet loader (``FixedSizeCrop(pad=False)``), the crop is not padded here: the model
    pads each batch to size × size with zeros after normalization
    (:class:`~vitinit.modeling.mask_rcnn.SquarePadTransform`), so its ``image_sizes`` keep the content size
    and proposals are clipped to the image, not to the padding.

    Example:
        >>> t = lsj_transform(64)
        >>> t  # doctest: +ELLIPSIS
        Compose(...)
    """
    steps: list[v2.Transform] = [v2.RandomHorizontalFlip(0.5)] if flip else []
    steps += [
        ScaleJitter(target_size=(size, size), scale_range=tuple(scale_range)),
        FixedSizeCrop(size, pad=False),
        v2.ClampBoundingBoxes(),
        ShrinkBoxesToMasks(),
        # Drops boxes (and their masks and labels) that the crop left degenerate.
        v2.SanitizeBoundingBoxes(min_size=1.0),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
    ]
    return v2.Compose(steps)


def test_transform() -> v2.Transform:
    """Only converts to float in [0, 1]; the model's own transform does the test-time resize (module doc)."""
    return v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)


test_transform.__test__ = False  # not a pytest test
