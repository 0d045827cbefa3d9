"""Evaluation in float32 (the default, as detectron2's ``do_test``) vs bf16 autocast, on a trained run.

    python benchmarks/eval_precision.py runs/demo/<timestamp>     # the run's last checkpoint, its val set

Prints box / mask AP, the number of detections, how far the scores of the same detections moved and in how
many images the detection order changed, for each precision; the baseline is float32, measured in the same
run. bf16 autocast runs on CPU too (slower there than float32: the number is AP, not speed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import yaml
from vitinit.recipes import load_recipe, to_plain

from vitinit.bench import build_datasets, build_model, load_weights, run_evaluation
from vitinit.engine.run_folder import RunFolder


def evaluate(run_dir: Path, max_images: int | None) -> list[list[str]]:
    folder = RunFolder(run_dir)
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    # A run older than a key has none: take today's default for it (the keys do not change the model).
    recipe = _merge(to_plain(load_recipe(recipe["name"])), recipe)
    recipe["eval"]["num_workers"] = 0
    if max_images:
        recipe["eval"]["max_images"] = max_images
    data = build_datasets(recipe)
    backbone, _, _ = load_weights(recipe)
    model = build_model(recipe, backbone, data.train.num_classes)
    model.load_state_dict(folder.load_checkpoint()["model"])
    device = torch.device("cpu")
    results, detections = {}, {}
    for amp in ("none", "bf16"):
        recipe["eval"]["amp"] = amp
        with tempfile.TemporaryDirectory() as tmp:
            results[amp] = run_evaluation(model, data.val, recipe, device, Path(tmp))
            detections[amp] = _per_image(json.loads((Path(tmp) / "bbox.json").read_text()))
    rows = [["eval precision", "box AP", "mask AP", "detections", "max |Δscore| same rank", "reordered"]]
    base = detections["none"]
    for amp, label in (("none", "float32 (default)"), ("bf16", "bf16 autocast")):
        dets = detections[amp]
        images = set(dets) | set(base)
        # Same detections in the same order: class and box to the pixel, rank by rank.
        key = lambda ds: [(d["category_id"], [round(v) for v in d["bbox"]]) for d in ds]  # noqa: E731
        reordered = sum(key(dets.get(i, [])) != key(base.get(i, [])) for i in images)
        moved = max((abs(a["score"] - b["score"]) for i in base for a, b in
                     zip(base[i], dets.get(i, []), strict=False)), default=0.0)
        r = results[amp]
        rows.append([label, f"{r['bbox']['AP']:.2f}", f"{r['segm']['AP']:.2f}",
                     str(sum(map(len, dets.values()))), f"{moved:.2e}", f"{reordered} / {len(images)}"])
    return rows


def _merge(base: dict, over: dict) -> dict:
    return {k: _merge(v, over[k]) if isinstance(v, dict) and isinstance(over.get(k), dict) else over.get(k, v)
            for k, v in base.items()}


def _per_image(detections: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for d in detections:
        out.setdefault(d["image_id"], []).append(d)
    return out


def main(argv: list[str] | None = None) -> list[list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a finished (or checkpointed) run folder")
    p.add_argument("--max-images", type=int, default=None, help="evaluate the first N val images only")
    args = p.parse_args(argv)
    rows = evaluate(args.run_dir, args.max_images)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return rows


if __name__ == "__main__":
    main()
