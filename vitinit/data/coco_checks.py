"""Up-front checks of a COCO instances JSON: a broken dataset fails in seconds with one line, not mid-run.

Every image and annotation entry is checked for the fields the loader reads, with the types and ranges it
needs: a missing ``bbox`` or ``segmentation``, a polygon with fewer than 3 points (pycocotools would read a
4-number "polygon" as a box), an RLE whose size is not its image's, or a training set in which no box has an
area (it would train on nothing without a word). Single degenerate boxes are fine: the training transforms
drop them (``SanitizeBoundingBoxes``), as detectron2 drops empty instances.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitinit.errors import DatasetError

# Annotations may poke out of the image by rounding; more than this is a broken dataset.
BOX_TOLERANCE_PX = 1.0


def check_coco(
    dataset: Mapping[str, Any],
    path: Path,
    category_ids: set[int],
    *,
    masks: bool = True,
    train: bool = False,
) -> None:
    """Raise :class:`DatasetError` naming the first bad entry of ``dataset`` (the parsed JSON at ``path``).

    ``masks``: annotations must carry a usable ``segmentation`` (targets with masks are built from it).
    ``train``: at least one non-crowd box must have a positive area.
    """
    images = {}
    for img in dataset["images"]:
        _check_image(img, path)
        images[img["id"]] = img
    usable = 0
    for ann in dataset["annotations"]:
        where = f"{path}: annotation {ann.get('id') if isinstance(ann, Mapping) else ann!r}"
        if not isinstance(ann, Mapping):
            raise DatasetError(f"{where} is not an object")
        img = images.get(ann.get("image_id"))
        if img is None:
            raise DatasetError(f"{where} points to image {ann.get('image_id')}, which is not listed")
        if ann.get("category_id") not in category_ids:
            raise DatasetError(f"{where} has unknown category {ann.get('category_id')}")
        x, y, w, h = _box(ann, where)
        if (
            w < 0
            or h < 0
            or x < -BOX_TOLERANCE_PX
            or y < -BOX_TOLERANCE_PX
            or (x + w > img["width"] + BOX_TOLERANCE_PX or y + h > img["height"] + BOX_TOLERANCE_PX)
        ):
            raise DatasetError(
                f"{where} box [{x}, {y}, {w}, {h}] lies outside image {img['id']} "
                f"({img['width']}x{img['height']}, {img['file_name']})"
            )
        if masks:
            _check_segmentation(ann.get("segmentation"), img, where)
        usable += not ann.get("iscrowd", 0) and w > 0 and h > 0
    if train and dataset["annotations"] and not usable:
        raise DatasetError(
            f"{path}: all {len(dataset['annotations'])} boxes are crowd regions or have zero area "
            "(width or height 0); there is nothing to train on"
        )


def _check_image(img: Any, path: Path) -> None:
    if not isinstance(img, Mapping) or "id" not in img:
        raise DatasetError(f"{path}: image entry {str(img)[:80]} has no 'id'")
    for key in ("file_name", "width", "height"):
        if key not in img:
            raise DatasetError(f"{path}: image {img['id']} has no {key!r}")
    if not all(isinstance(img[k], int) and img[k] > 0 for k in ("width", "height")):
        raise DatasetError(f"{path}: image {img['id']} has size {img['width']}x{img['height']}")


def _box(ann: Mapping, where: str) -> tuple[float, float, float, float]:
    if "bbox" not in ann:
        raise DatasetError(f"{where} has no 'bbox' ([x, y, width, height])")
    box = ann["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        raise DatasetError(f"{where} has bbox {str(box)[:80]}; expected 4 finite numbers [x, y, w, h]")
    return tuple(float(v) for v in box)  # type: ignore[return-value]


def _check_segmentation(seg: Any, img: Mapping, where: str) -> None:
    if seg is None:
        raise DatasetError(f"{where} has no 'segmentation' (instance masks are trained from it)")
    if isinstance(seg, list):
        if not seg:
            raise DatasetError(f"{where} has an empty polygon list")
        for poly in seg:
            if not (isinstance(poly, list) and all(_is_number(v) for v in poly)):
                raise DatasetError(f"{where} has a polygon that is not a list of numbers")
            if len(poly) < 6 or len(poly) % 2:
                raise DatasetError(
                    f"{where} has a degenerate polygon of {len(poly)} coordinates "
                    "(a polygon needs x, y pairs of at least 3 points)"
                )
    elif isinstance(seg, Mapping):
        if "counts" not in seg or "size" not in seg:
            raise DatasetError(f"{where} has an RLE segmentation without 'counts' and 'size'")
        if list(seg["size"]) != [img["height"], img["width"]]:
            raise DatasetError(
                f"{where} has an RLE of size {list(seg['size'])}, but its image is "
                f"{img['height']}x{img['width']} (height x width)"
            )
    else:
        raise DatasetError(f"{where} has a segmentation that is neither polygons nor RLE")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
