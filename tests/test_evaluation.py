"""COCO AP through faster-coco-eval, checked against pycocotools on the same detections."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from vitinit.data.synthetic import SyntheticSpec, synthetic_coco
from vitinit.evaluation.coco import METRIC_NAMES, COCOEvaluator, evaluate_detections, instances_to_coco


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    splits = synthetic_coco(
        SyntheticSpec(num_train=2, num_val=24, image_size=128, seed=7),
        cache_dir=tmp_path_factory.mktemp("cache"),
    )
    return splits.val_annotations, json.loads(splits.val_annotations.read_text())


def _noisy_detections(coco: dict, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Jittered, misclassified, duplicated and false-positive detections: all of COCOeval is exercised."""
    rng = np.random.default_rng(seed)
    boxes, segms = [], []
    h = w = coco["images"][0]["height"]
    for a in coco["annotations"]:
        if rng.random() < 0.15:
            continue  # a miss
        cat = a["category_id"] if rng.random() < 0.8 else int(rng.integers(1, 5))
        x, y, bw, bh = a["bbox"]
        j = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
        box = [x + j[0], y + j[1], max(1.0, bw + j[2]), max(1.0, bh + j[3])]
        mask = mask_utils.decode(a["segmentation"])
        shift = int(rng.integers(-2, 3))
        mask = np.roll(mask, shift, axis=1)
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode()
        for dup in range(2 if rng.random() < 0.1 else 1):
            score = float(rng.random()) * (0.5 if dup else 1.0)
            boxes.append({"image_id": a["image_id"], "category_id": cat, "bbox": box, "score": score})
            segms.append({"image_id": a["image_id"], "category_id": cat, "segmentation": rle, "score": score})
    for img in coco["images"][:10]:  # background false positives
        x, y = rng.uniform(0, w - 20, 2)
        boxes.append({"image_id": img["id"], "category_id": 1, "bbox": [x, y, 20.0, 20.0], "score": 0.3})
        m = np.zeros((h, w), np.uint8)
        m[int(y) : int(y) + 20, int(x) : int(x) + 20] = 1
        rle = mask_utils.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode()
        segms.append({"image_id": img["id"], "category_id": 1, "segmentation": rle, "score": 0.3})
    return boxes, segms


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_faster_coco_eval_agrees_with_pycocotools(gt, iou_type):
    path, coco = gt
    boxes, segms = _noisy_detections(coco)
    dets = boxes if iou_type == "bbox" else segms
    fast = evaluate_detections(path, dets, iou_type)
    ref = evaluate_detections(path, dets, iou_type, backend="pycocotools")
    assert set(fast) == set(METRIC_NAMES)
    assert 5 < fast["AP"] < 95  # a non-trivial score, so agreement means something
    for k in METRIC_NAMES:
        if ref[k] is None:
            assert fast[k] is None
        else:
            assert fast[k] == pytest.approx(ref[k], abs=1e-6), k


def test_perfect_and_empty_detections(gt):
    path, coco = gt
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in coco["annotations"]
    ]
    assert evaluate_detections(path, perfect, "bbox")["AP"] == pytest.approx(100.0)
    # pycocotools' loadRes([]) raises; we answer 0 where ground truth exists and None where none does.
    for backend in ("faster_coco_eval", "pycocotools"):
        empty = evaluate_detections(path, [], "segm", backend=backend)
        assert empty["AP"] == 0.0 and empty["AP50"] == 0.0
        has_large = any(a["area"] > 96**2 for a in coco["annotations"])
        assert (empty["APl"] is None) == (not has_large)


def test_model_outputs_to_coco_results(gt, tmp_path):
    """torchvision-style outputs (XYXY boxes, soft (N,1,H,W) masks, labels) score 100 when exact."""
    path, coco = gt
    evaluator = COCOEvaluator(path, {k: k for k in (1, 2, 3, 4)})
    size = coco["images"][0]["height"]
    for img in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        masks = (
            torch.stack([torch.from_numpy(mask_utils.decode(a["segmentation"])).float() * 0.9 for a in anns])[
                :, None
            ]
            if anns
            else torch.zeros(0, 1, size, size)
        )
        output = {
            "boxes": boxes,
            "scores": torch.linspace(1, 0.5, len(anns)),
            "labels": torch.tensor([a["category_id"] for a in anns]),
            "masks": masks,
        }
        evaluator.process([{"image_id": img["id"]}], [output])
    metrics = evaluator.evaluate(tmp_path)
    assert metrics["bbox"]["AP"] == pytest.approx(100.0, abs=1e-3)
    assert metrics["segm"]["AP"] == pytest.approx(100.0, abs=1e-3)
    saved = json.loads((tmp_path / "segm.json").read_text())
    assert isinstance(saved[0]["segmentation"]["counts"], str)
    assert len(json.loads((tmp_path / "bbox.json").read_text())) == len(coco["annotations"])


def test_instances_to_coco_empty():
    out = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 1, 8, 8),
    }
    assert instances_to_coco(1, out, {1: 1}) == ([], [])
