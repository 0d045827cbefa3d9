"""Evaluation in float32 (the default, as detectron2's ``do_test``) vs bf16 autocast, on a trained run.

    python benchmarks/eval_precision.py runs/demo/<timestamp>     # the run's last checkpoint, its val set

Prints box / mask AP, the number of detections, how far the scores of the same detections moved and in how
many images the detection order changed, for each precision; the baseline is float32, measured in the same
run. bf16 autocast runs on CPU too (slower there than float32: the number is AP, not speed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch

from vitinit.bench import run_evaluation
from vitinit.bench.trained import load_trained


def evaluate(run_dir: Path, max_images: int | None) -> list[list[str]]:
    # The run's model and val set as `vitinit eval` rebuilds them (a run saved before a key existed gets
    # that key's old value), on the CPU.
    overrides = ("eval.num_workers=0",) + ((f"eval.max_images={max_images}",) if max_images else ())
    trained = load_trained(run_dir, overrides=overrides)
    model, device = trained.model.to("cpu"), torch.device("cpu")
    results, detections = {}, {}
    for amp in ("none", "bf16"):
        recipe = dataclasses.replace(trained.recipe, eval=dataclasses.replace(trained.recipe.eval, amp=amp))
        with tempfile.TemporaryDirectory() as tmp:
            results[amp] = run_evaluation(model, trained.val, recipe, device, Path(tmp))
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
