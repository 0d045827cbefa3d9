"""Up-front checks of a COCO instances JSON, with detectron2's tolerance for the defects real files contain.

A file that cannot be used fails in seconds with one line: an entry without a field the loader reads
(``bbox``, a non-crowd ``segmentation`` when masks are trained, an image's ``file_name``/``width``/
``height``), an annotation of an unknown category, a segmentation that is neither polygons nor RLE, an RLE
whose size is not its image's, or a training set in which no box has an area.

What detectron2 trains through (``detectron2/data/datasets/coco.py::load_coco_json`` and its dataset
mapper) is repaired and counted instead, and the counts are logged in one line (:meth:`CocoCleanup.summary`):

- polygons with fewer than 6 coordinates or an odd count are dropped; an instance left without a valid
  polygon is skipped (``Filtered out N instances without valid segmentation``);
- boxes are clipped to their image (as detectron2 clips each box in ``transform_instance_annotations``);
- crowd regions (``iscrowd=1``, often uncompressed RLE) are left out of training unchecked: the evaluator
  reads them from the JSON as ignore regions;
- annotations of images the file does not list are skipped (detectron2 warns and reads only listed images);
- images left without an annotation are skipped in training (:class:`~vitinit.data.coco.CocoDetection`,
  detectron2's ``filter_images_with_only_crowd_annotations``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitinit.errors import DatasetError


@dataclass
class CocoCleanup:
    """The usable annotations per image id (repaired copies) and the counts of what was repaired."""

    annotations: dict[int, list[dict]] = field(default_factory=dict)
    polygons_dropped: int = 0
    instances_skipped: int = 0  # no valid polygon left
    boxes_clipped: int = 0
    crowd_ignored: int = 0
    unlisted_skipped: int = 0  # annotations of images the file does not list
    images_skipped: int = 0  # set by the dataset: training images left without an annotation

    def summary(self, path: Path) -> str | None:
        """One line with every non-zero count, or None when the file needed nothing."""
        counts = [
            (self.polygons_dropped, "polygon(s) with < 6 or an odd number of coordinates dropped"),
            (self.instances_skipped, "instance(s) without a valid polygon skipped"),
            (self.boxes_clipped, "box(es) clipped to their image"),
            (self.crowd_ignored, "crowd region(s) ignored in training"),
            (self.unlisted_skipped, "annotation(s) of unlisted images skipped"),
            (self.images_skipped, "image(s) without annotations skipped"),
        ]
        said = [f"{n} {what}" for n, what in counts if n]
        return f"{path.name}: " + ", ".join(said) + " (as detectron2)" if said else None


def check_coco(
    dataset: Mapping[str, Any],
    path: Path,
    category_ids: set[int],
    *,
    masks: bool = True,
    train: bool = False,
) -> CocoCleanup:
    """Check ``dataset`` (the parsed JSON at ``path``); raise :class:`DatasetError` on the first entry that
    makes it unusable, repair and count the rest (module doc).

    ``masks``: non-crowd annotations must carry a usable ``segmentation`` (targets with masks come from it).
    ``train``: at least one non-crowd box must have a positive area.
    """
    images = {}
    for img in dataset["images"]:
        _check_image(img, path)
        images[img["id"]] = img
    out = CocoCleanup(annotations={i: [] for i in images})
    for ann in dataset["annotations"]:
        where = f"{path}: annotation {ann.get('id') if isinstance(ann, Mapping) else ann!r}"
        if not isinstance(ann, Mapping):
            raise DatasetError(f"{where} is not an object")
        if ann.get("category_id") not in category_ids:
            raise DatasetError(f"{where} has unknown category {ann.get('category_id')}")
        x, y, w, h = _box(ann, where)
        img = images.get(ann.get("image_id"))
        if img is None:
            out.unlisted_skipped += 1
            continue
        if ann.get("iscrowd", 0):
            out.crowd_ignored += 1
            continue
        clipped = _clip_box(x, y, w, h, img["width"], img["height"])
        out.boxes_clipped += clipped != [x, y, w, h]
        seg = ann.get("segmentation")
        if masks:
            seg = _check_segmentation(seg, img, where)
            if isinstance(seg, list):
                valid = [p for p in seg if len(p) >= 6 and len(p) % 2 == 0]
                out.polygons_dropped += len(seg) - len(valid)
                if not valid:
                    out.instances_skipped += 1
                    continue
                seg = valid
        out.annotations[img["id"]].append({**ann, "bbox": clipped, "segmentation": seg})
    if train and dataset["annotations"] and not any(
        a["bbox"][2] > 0 and a["bbox"][3] > 0 for anns in out.annotations.values() for a in anns
    ):
        raise DatasetError(
            f"{path}: all {len(dataset['annotations'])} boxes are crowd regions, have zero area (width or "
            "height 0) or lost every polygon; there is nothing to train on"
        )
    return out


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


def _clip_box(x: float, y: float, w: float, h: float, width: int, height: int) -> list[float]:
    """XYWH clipped to the image; a box outside it (or of negative size) becomes empty, and is dropped with
    its instance by the training transforms as detectron2 drops empty instances."""
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, x0), width), min(max(y + h, y0), height)
    return [x0, y0, x1 - x0, y1 - y0]


def _check_segmentation(seg: Any, img: Mapping, where: str) -> Any:
    """The segmentation if usable (polygons are filtered by the caller), else a one-line error."""
    if seg is None:
        raise DatasetError(f"{where} has no 'segmentation' (instance masks are trained from it)")
    if isinstance(seg, list):
        if not all(isinstance(p, list) and all(_is_number(v) for v in p) for p in seg):
            raise DatasetError(f"{where} has a polygon that is not a list of numbers")
        return seg
    if isinstance(seg, Mapping):
        if "counts" not in seg or "size" not in seg:
            raise DatasetError(f"{where} has an RLE segmentation without 'counts' and 'size'")
        if list(seg["size"]) != [img["height"], img["width"]]:
            raise DatasetError(
                f"{where} has an RLE of size {list(seg['size'])}, but its image is "
                f"{img['height']}x{img['width']} (height x width)"
            )
        return seg
    raise DatasetError(f"{where} has a segmentation that is neither polygons nor RLE")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
