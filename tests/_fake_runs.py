"""Synthetic COCO sets with errors injected on purpose, and run folders shaped as `vitinit bench` writes.

Shared by test_analysis.py and test_report.py. Objects are axis-aligned rectangles, so a box and its mask
agree and every injected error has the same IoU for boxes and masks.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from vitinit.engine.run_folder import RunFolder, eval_name

IMAGE_SIZE = 96
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}]


def make_ground_truth(n_images: int = 12, per_image: int = 3, seed: int = 0) -> dict:
    """COCO ground truth: ``per_image`` non-overlapping rectangles per image, polygon masks."""
    rng = random.Random(seed)
    images, anns = [], []
    for img_id in range(1, n_images + 1):
        images.append(
            {"id": img_id, "file_name": f"{img_id:06d}.jpg", "width": IMAGE_SIZE, "height": IMAGE_SIZE}
        )
        for k in range(per_image):
            # one object per horizontal band of the image: objects never overlap
            band = IMAGE_SIZE // per_image
            w, h = rng.randint(14, 24), rng.randint(14, band - 4)
            x, y = rng.randint(0, IMAGE_SIZE - w - 1), k * band + rng.randint(0, band - h - 1)
            anns.append({
                "id": len(anns) + 1, "image_id": img_id, "category_id": rng.choice(CATEGORIES)["id"],
                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            })
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


def _rle(box: list[float]) -> dict:
    x, y, w, h = (int(round(v)) for v in box)
    m = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    m[max(y, 0):y + h, max(x, 0):x + w] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")  # the results format stores counts as str
    return rle


def _other_class(cat: int) -> int:
    return cat % len(CATEGORIES) + 1


def make_detections(
    gt: dict, *, error: str | None = None, fraction: float = 0.3, seed: int = 0
) -> list[dict]:
    """Perfect detections of every object, except ``fraction`` of them turned into one TIDE error type.

    ``error``: ``loc`` (box shifted to IoU = 1/3), ``cls`` (right box, wrong class), ``both`` (the two at
    once), ``dupe`` (an extra, slightly lower-scoring copy), ``bkg`` (an extra box far from every object),
    ``miss`` (the object is not detected).
    Every entry has both ``bbox`` and ``segmentation``.
    """
    rng = random.Random(seed)
    dets = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        score = round(rng.uniform(0.6, 0.99), 4)
        box, cat = [x, y, w, h], ann["category_id"]
        hit = rng.random() < fraction
        if hit and error == "miss":
            continue
        if hit and error in ("loc", "both"):
            box = [x + 0.5 * w, y, w, h]  # IoU = 0.5w / 1.5w = 1/3
        if hit and error in ("cls", "both"):
            cat = _other_class(cat)
        dets.append({"image_id": ann["image_id"], "category_id": cat, "bbox": box, "score": score})
        if hit and error == "dupe":
            dets.append({"image_id": ann["image_id"], "category_id": cat, "bbox": [x + 1, y, w, h],
                         "score": round(score - 0.001, 4)})  # ranks among the true positives
        if hit and error == "bkg":
            # Objects sit in bands; this 4x4 box at the far right edge overlaps none by more than IoU 0.1.
            dets.append({"image_id": ann["image_id"], "category_id": cat,
                         "bbox": [IMAGE_SIZE - 5, y + h + 1, 4, 3], "score": round(score, 4)})
    for d in dets:
        d["segmentation"] = _rle(d["bbox"])
    return dets


def without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def metrics(ap: float, ap_mask: float) -> dict:
    """A metrics dict shaped as detectron2 prints it (percent); derived numbers are arbitrary but fixed."""
    def one(a: float) -> dict:
        return {"AP": a, "AP50": a + 20, "AP75": a + 3, "APs": a - 15, "APm": a, "APl": a + 12}
    return {"bbox": one(ap), "segm": one(ap_mask)}


def write_run(
    root: Path, name: str, *, init: str, variant: str = "vit-b", epochs: float, box_ap: float, mask_ap: float,
    gt_path: Path, error: str | None = None, status: str = "finished", iters_per_epoch: int = 100,
    curve: tuple[float, ...] = (0.5, 0.8, 1.0),
) -> Path:
    """A run folder as `vitinit bench` writes it; the best evaluation is the last point of ``curve``.

    ``curve`` gives each evaluation's AP as a fraction of ``box_ap``/``mask_ap``, at evenly spaced iterations.
    """
    run = root / name
    folder = RunFolder(run)  # the writer's own paths, so the readers are tested against the real layout
    iters = int(epochs * iters_per_epoch)
    gt = json.loads(gt_path.read_text())
    dets = make_detections(gt, error=error, seed=len(name))
    lines, points = [], []
    for k, frac in enumerate(curve, 1):
        it = iters * k // len(curve)
        point = {"iter": it, "epoch": it / iters_per_epoch, **metrics(box_ap * frac, mask_ap * frac)}
        points.append(point)
        lines.append(json.dumps({"kind": "train", "iter": it, "loss": 1.0 / k, "lr": 1e-4}))
        lines.append(json.dumps({"kind": "eval", **point}))
        eval_dir = folder.eval_dir(it)
        write_json(eval_dir / "metrics.json", point)
        write_json(eval_dir / "bbox.json", [without(d, "segmentation") for d in dets])
        write_json(eval_dir / "segm.json", [without(d, "bbox") for d in dets])
    folder.metrics.write_text("\n".join(lines) + "\n")
    folder.recipe.write_text(
        f"name: {name}\nmodel:\n  variant: {variant}\nweights:\n  init: {init}\n"
        f"schedule:\n  epochs: {epochs}\n  iters: {iters}\n"
    )
    write_json(folder.weights, {"family": init, "format": "test", "source": "synthetic"})
    best = points[-1]
    write_json(folder.results, {
        "status": status, "name": name, "init": init, "variant": variant, "iters": iters, "epochs": epochs,
        "final": best, "best": best, "val_annotations": str(gt_path.resolve()),
        "eval_dir": eval_name(best["iter"]),
    })
    return run
