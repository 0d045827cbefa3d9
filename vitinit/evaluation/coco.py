"""COCO box and mask AP through faster-coco-eval (pycocotools' numbers, computed in C++).

faster-coco-eval reproduces pycocotools' 12 ``stats`` exactly (our reference notes measured max diff 0.0, and
``tests/test_evaluation.py`` keeps checking it) at 4–7× the speed. We never compute AP ourselves.

Numbers are reported in percent (0–100) as detectron2 prints them. pycocotools reports ``-1`` for an area
range with no ground truth; we report ``None`` there (JSON has no NaN).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

log = logging.getLogger(__name__)

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")
MASK_THRESHOLD = 0.5  # soft masks → binary at ≥ 0.5, as detectron2's paste_masks_in_image


def summarize_stats(stats: Sequence[float]) -> dict[str, float | None]:
    """The first six COCOeval ``stats`` as percentages; ``-1`` (no ground truth in range) → None."""
    return {
        name: (None if v < 0 else round(float(v) * 100, 4))
        for name, v in zip(METRIC_NAMES, stats, strict=False)
    }


def evaluate_detections(
    gt: str | Path | dict,
    detections: list[dict],
    iou_type: str,
    *,
    backend: str = "faster_coco_eval",
    image_ids: Sequence[int] | None = None,
) -> dict[str, float | None]:
    """AP/AP50/AP75/APs/APm/APl of COCO-format ``detections`` against ``gt`` (a JSON path or dict).

    ``backend="pycocotools"`` runs the reference implementation (used by the agreement test). An empty
    ``detections`` list scores 0 everywhere ground truth exists: pycocotools' ``loadRes([])`` raises, so the
    case is answered without calling it.

    Example:
        >>> evaluate_detections("instances_val.json", [], "bbox")["AP"]
        0.0
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    elif backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        raise ValueError(f"unknown backend {backend!r}")
    with contextlib.redirect_stdout(io.StringIO()):  # both libraries print progress and tables
        coco_gt = _load_gt(COCO, gt)
        if not detections:
            return _empty_result(coco_gt, image_ids)
        coco_dt = coco_gt.loadRes(_plain(detections))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return summarize_stats(ev.stats)


def _load_gt(coco_cls: type, gt: str | Path | dict) -> Any:
    if isinstance(gt, dict):
        coco = coco_cls()
        coco.dataset = gt
        coco.createIndex()
        return coco
    return coco_cls(str(gt))


def _empty_result(coco_gt: Any, image_ids: Sequence[int] | None) -> dict[str, float | None]:
    """What COCOeval reports for no detections: 0 where the area range has ground truth, else None."""
    ids = set(image_ids) if image_ids is not None else None
    areas = [
        a["area"]
        for a in coco_gt.dataset["annotations"]
        if not a.get("iscrowd", 0) and (ids is None or a["image_id"] in ids)
    ]
    ranges = {
        "AP": (0, 1e10),
        "AP50": (0, 1e10),
        "AP75": (0, 1e10),
        "APs": (0, 32**2),
        "APm": (32**2, 96**2),
        "APl": (96**2, 1e10),
    }
    return {k: (0.0 if any(lo <= a <= hi for a in areas) else None) for k, (lo, hi) in ranges.items()}


def _plain(detections: list[dict]) -> list[dict]:
    """A copy loadRes can own (it adds fields and, for segm, decodes ``counts``)."""
    out = []
    for d in detections:
        d = dict(d)
        if "segmentation" in d:
            d["segmentation"] = dict(d["segmentation"])
        out.append(d)
    return out


def instances_to_coco(
    image_id: int,
    output: Mapping[str, torch.Tensor],
    label_to_category: Mapping[int, int],
    *,
    with_masks: bool = True,
) -> tuple[list[dict], list[dict]]:
    """One torchvision detection output → (box results, mask results) in COCO's results format.

    Boxes go XYXY → XYWH; soft masks (N, 1, H, W) are binarized at ≥ 0.5 and RLE-encoded, with ``counts`` as
    str so the results are JSON-serializable.
    """
    boxes = output["boxes"].detach().float().cpu()
    if boxes.numel() == 0:
        return [], []
    scores = output["scores"].detach().float().cpu().tolist()
    categories = [label_to_category[int(label)] for label in output["labels"].cpu()]
    xywh = boxes.clone()
    xywh[:, 2:] -= xywh[:, :2]
    box_results = [
        {"image_id": image_id, "category_id": c, "bbox": [round(float(v), 3) for v in b], "score": s}
        for c, b, s in zip(categories, xywh.tolist(), scores, strict=True)
    ]
    mask_results: list[dict] = []
    if with_masks and "masks" in output:
        masks = (output["masks"].detach()[:, 0] >= MASK_THRESHOLD).cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        for c, rle, s in zip(categories, rles, scores, strict=True):
            rle["counts"] = rle["counts"].decode("ascii")
            mask_results.append({"image_id": image_id, "category_id": c, "segmentation": rle, "score": s})
    return box_results, mask_results


class COCOEvaluator:
    """Collects model outputs over a dataset, then scores them (optionally gathered from every process).

    Args:
        annotations: the ground-truth instances JSON (the same file the dataset reads).
        label_to_category: the dataset's contiguous-label → category-id map.
        iou_types: which of "bbox" / "segm" to score.
    """

    def __init__(
        self,
        annotations: str | Path,
        label_to_category: Mapping[int, int],
        *,
        iou_types: Sequence[str] = IOU_TYPES,
    ) -> None:
        self.annotations = Path(annotations)
        self.label_to_category = dict(label_to_category)
        self.iou_types = tuple(iou_types)
        self.reset()

    def reset(self) -> None:
        self.results: dict[str, list[dict]] = {t: [] for t in IOU_TYPES}
        self.image_ids: list[int] = []

    def process(
        self, targets: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, torch.Tensor]]
    ) -> None:
        for target, output in zip(targets, outputs, strict=True):
            image_id = int(target["image_id"])
            self.image_ids.append(image_id)
            boxes, masks = instances_to_coco(
                image_id, output, self.label_to_category, with_masks="segm" in self.iou_types
            )
            self.results["bbox"].extend(boxes)
            self.results["segm"].extend(masks)

    def gather(self) -> None:
        """Merge every process's results into each process (no-op without a process group)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self.state())
        self.merge(parts)

    def state(self) -> tuple[dict[str, list[dict]], list[int]]:
        """What :meth:`gather` sends: this process's results and image ids."""
        return self.results, self.image_ids

    def merge(self, parts: Sequence[tuple[dict[str, list[dict]], list[int]]]) -> None:
        """Replace the results by the concatenation of every process's :meth:`state`, in rank order."""
        self.results = {t: [r for res, _ in parts for r in res[t]] for t in IOU_TYPES}
        self.image_ids = sorted({i for _, ids in parts for i in ids})

    def evaluate(self, output_dir: str | Path | None = None) -> dict[str, dict[str, float | None]]:
        """``{"bbox": {...}, "segm": {...}}``; writes ``bbox.json`` and ``segm.json`` into ``output_dir``."""
        metrics = {}
        image_ids = sorted(set(self.image_ids)) or None
        for t in self.iou_types:
            if output_dir is not None:
                from vitinit.io.save import atomic_path

                with atomic_path(Path(output_dir) / f"{t}.json") as tmp:
                    tmp.write_text(json.dumps(self.results[t]))
            metrics[t] = evaluate_detections(self.annotations, self.results[t], t, image_ids=image_ids)
        return metrics
