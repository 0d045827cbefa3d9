"""Training and test transforms, built from torchvision's v2 transforms.

Training uses the paper's large-scale jitter (LSJ, Ghiasi et al. 2021; detectron2's ViTDet loader):
horizontal flip → resize by a random factor in [0.1, 2.0] of the scale that fits the image in size×size →
random crop to size×size where larger → pad to size×size. Masks follow with pixel-centred nearest resizing.
Boxes are then recomputed from the transformed segmentation, as detectron2's LSJ configs do
(``recompute_boxes``): polygons move with the image (:class:`Polygons`) and each box is the tight box of its
polygons clipped to the crop, so a box shrinks to the part of the object the crop kept, uncut or not (an
instance given as RLE takes its transformed bitmap's box). Objects cropped away are dropped with their labels;
any box wider and taller than 1e-5 px is kept, as detectron2's ``filter_empty_instances``.

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

import numpy as np
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


class Polygons(tv_tensors.KeyPoints):
    """Every vertex (V, 2) of the instances' polygons, in continuous image coordinates, moved with the image.

    ``target["polygon_instance"]`` (V,) and ``target["polygon_part"]`` (V,) say which instance and which of
    its polygons each vertex belongs to. Resize and crop are ``KeyPoints``'; the flip is detectron2's
    ``HFlipTransform.apply_coords`` (x → W − x: a polygon edge at x = 0 goes to x = W), not the keypoints'
    pixel-index flip (x → W − 1 − x).
    """


@F.register_kernel(F.horizontal_flip, Polygons)
def _flip_polygons(inpt: Polygons) -> Polygons:
    out = inpt.as_subclass(torch.Tensor).clone()
    out[:, 0] = inpt.canvas_size[1] - out[:, 0]
    return tv_tensors.wrap(out, like=inpt)


def polygon_box_in_window(points: np.ndarray, width: float, height: float) -> np.ndarray | None:
    """The tight box [x0, y0, x1, y1] of polygon ``points`` (K, 2) ∩ the window [0, width] × [0, height], or
    None when they do not meet.

    Exact for any simple polygon, convex or not: the intersection's extreme points are among the polygon's
    vertices inside the window, the crossings of its edges with the window's sides, and the window's corners
    inside the polygon (Sutherland–Hodgman clipping would add points along the sides between two lobes of a
    concave polygon). The same box as detectron2's crop through shapely, then ``PolygonMasks`` boxes.
    """
    x, y = points[:, 0], points[:, 1]
    found = [points[(x >= 0) & (x <= width) & (y >= 0) & (y <= height)]]
    p, q = points, np.roll(points, -1, axis=0)  # edges p → q
    for axis, bound, span in ((0, 0.0, height), (0, width, height), (1, 0.0, width), (1, height, width)):
        d = q[:, axis] - p[:, axis]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (bound - p[:, axis]) / d
        hit = (d != 0) & (t >= 0) & (t <= 1)
        other = p[hit, 1 - axis] + t[hit] * (q[hit, 1 - axis] - p[hit, 1 - axis])
        other = other[(other >= 0) & (other <= span)]
        cross = np.empty((len(other), 2))
        cross[:, axis], cross[:, 1 - axis] = bound, other
        found.append(cross)
    corners = np.array([[0.0, 0.0], [width, 0.0], [0.0, height], [width, height]])
    found.append(corners[_inside(corners, points)])
    pts = np.concatenate(found)
    return np.array([*pts.min(0), *pts.max(0)]) if len(pts) else None


def _inside(queries: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule: whether each query point lies inside ``polygon`` (ray casting towards +x)."""
    p, q = polygon[None], np.roll(polygon, -1, axis=0)[None]
    qx, qy = queries[:, None, 0], queries[:, None, 1]
    straddles = (p[..., 1] > qy) != (q[..., 1] > qy)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = p[..., 0] + (qy - p[..., 1]) * (q[..., 0] - p[..., 0]) / (q[..., 1] - p[..., 1])
    return (straddles & (qx < x_at)).sum(1) % 2 == 1


class RecomputeBoxes:
    """Each instance's box from its transformed segmentation, as detectron2's LSJ configs do
    (``recompute_boxes = True``): the tight box of its polygons clipped to the crop (``PolygonMasks``), or,
    for an instance given as RLE, of its transformed bitmap (``BitMasks.get_bounding_boxes``: x2 = last
    column + 1). An instance the crop removed gets an empty box, which :class:`FilterEmptyInstances` then
    drops with its mask and label; the polygon entries leave the target here.
    """

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        target = dict(target)  # the caller's dict keeps its entries
        polygons = target.pop("polygons", None)
        instance, part = target.pop("polygon_instance", None), target.pop("polygon_part", None)
        masks, boxes = target.get("masks"), target.get("boxes")
        if boxes is None or masks is None or boxes.shape[0] == 0:
            return image, target
        h, w = masks.shape[-2:]
        xyxy = _mask_boxes(masks.bool()).to(boxes.dtype)
        if polygons is not None and len(polygons):
            vertices = polygons.as_subclass(torch.Tensor).double().numpy()
            ids = instance.numpy()
            parts = part.numpy()
            for i in np.unique(ids):
                boxes_i = [polygon_box_in_window(vertices[(ids == i) & (parts == k)], w, h)
                           for k in np.unique(parts[ids == i])]
                boxes_i = [b for b in boxes_i if b is not None]
                box = [*np.min(boxes_i, 0)[:2], *np.max(boxes_i, 0)[2:]] if boxes_i else [0.0] * 4
                xyxy[int(i)] = torch.tensor(box, dtype=xyxy.dtype)
        return image, {**target, "boxes": tv_tensors.wrap(xyxy, like=boxes)}


class FilterEmptyInstances:
    """Drop instances whose box is not wider and taller than ``threshold`` px, with their masks and labels:
    detectron2's ``filter_empty_instances`` (box_threshold 1e-5). v2's ``SanitizeBoundingBoxes`` refuses a
    floor under 1 px, which would drop 5.5 % of COCO's instances at LSJ scale 0.1."""

    def __init__(self, threshold: float = 1e-5) -> None:
        self.threshold = threshold

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        boxes = target["boxes"].as_subclass(torch.Tensor)
        keep = ((boxes[:, 2] - boxes[:, 0]) > self.threshold) & ((boxes[:, 3] - boxes[:, 1]) > self.threshold)
        if keep.all():
            return image, target
        n = len(keep)
        return image, {k: v[keep] if isinstance(v, torch.Tensor) and v.ndim and len(v) == n else v
                       for k, v in target.items()}


def _mask_boxes(m: torch.Tensor) -> torch.Tensor:
    """(N, 4) tight XYXY boxes of (N, H, W) bitmaps, x2 = last column + 1; empty masks give zeros."""
    rows, cols = m.any(dim=2), m.any(dim=1)
    h, w = m.shape[-2:]
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    boxes = torch.stack([
        torch.where(cols, ar_w, w).amin(1), torch.where(rows, ar_h, h).amin(1),
        torch.where(cols, ar_w + 1, 0).amax(1), torch.where(rows, ar_h + 1, 0).amax(1),
    ], 1).float()
    boxes[~rows.any(1)] = 0
    return boxes


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
        RecomputeBoxes(),
        FilterEmptyInstances(1e-5),  # drops what the crop left empty (with masks and labels), as detectron2
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
    ]
    return v2.Compose(steps)


def test_transform() -> v2.Transform:
    """Only converts to float in [0, 1]; the model's own transform does the test-time resize (module doc)."""
    return v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)


test_transform.__test__ = False  # not a pytest test
