"""Real COCO-format files as detectron2 reads them: each defect it trains through is repaired or skipped
and counted in one log line, next to a clean file that logs nothing; a file with every defect trains."""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import shutil
from pathlib import Path

import pytest

from vitinit.data.coco import CocoDetection
from vitinit.data.coco_checks import CocoCleanup
from vitinit.data.synthetic import SyntheticSpec, synthetic_coco
from vitinit.data.transforms import lsj_transform

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    spec = SyntheticSpec(num_train=8, num_val=2, image_size=64, seed=5)
    return synthetic_coco(spec, cache_dir=tmp_path_factory.mktemp("cache"))


def _uncompressed_rle(image: dict) -> dict:
    """COCO's crowd format: column-major run lengths as a list (3 pixels on at the top-left)."""
    h, w = image["height"], image["width"]
    return {"counts": [0, 3, h * w - 3], "size": [h, w]}


def _rect(box):
    x, y, w, h = box
    return [x, y, x + w, y, x + w, y + h, x, y + h]


DEFECTS = {
    # name: (edit of the parsed JSON, the counts it must log)
    "short polygon": (lambda d: d["annotations"][0].update(segmentation=[_rect(d["annotations"][0]["bbox"]),
                                                                         [1.0, 1.0, 5.0, 5.0]]),
                      {"polygons_dropped": 1}),
    "odd polygon only": (lambda d: d["annotations"][1].update(segmentation=[[1.0, 1.0, 9.0, 1.0, 9.0]]),
                         {"polygons_dropped": 1, "instances_skipped": 1}),
    "box outside": (lambda d: d["annotations"][2].update(bbox=[-2.0, 3.0, 900.0, 4.0]),
                    {"boxes_clipped": 1}),
    "crowd RLE": (lambda d: d["annotations"].append({
        "id": 10_000, "image_id": d["images"][0]["id"], "category_id": 1, "iscrowd": 1, "area": 12.0,
        "bbox": [0.0, 0.0, 4.0, 3.0],
        "segmentation": _uncompressed_rle(d["images"][0])}),
                  {"crowd_ignored": 1}),
    "image without annotations": (lambda d: d.update(annotations=[a for a in d["annotations"]
                                                                  if a["image_id"] != d["images"][-1]["id"]]),
                                  {"images_skipped": 1}),
}


def _line(path, counts) -> str:
    return CocoCleanup(**counts).summary(path)


def _write(tmp_path, name, data):
    path = tmp_path / f"{name.replace(' ', '_')}.json"
    path.write_text(json.dumps(data))
    return path


def _with(data, *names):
    data = copy.deepcopy(data)
    for name in names:
        DEFECTS[name][0](data)
    return data


def test_each_defect_is_repaired_and_counted_next_to_a_clean_file(clean, tmp_path, caplog):
    data = json.loads(clean.train_annotations.read_text())
    caplog.set_level(logging.WARNING, "vitinit.data.coco")
    ds = CocoDetection(clean.train_images, clean.train_annotations, train=True)
    assert not caplog.records and len(ds) == len(data["images"])  # the clean file: nothing to say
    for name, (_, counts) in DEFECTS.items():
        caplog.clear()
        path = _write(tmp_path, name, _with(data, name))
        ds = CocoDetection(clean.train_images, path, transforms=lsj_transform(64), train=True)
        assert [r.getMessage() for r in caplog.records] == [_line(path, counts)], name
        for i in range(len(ds)):  # every sample loads and goes through LSJ
            image, target = ds[i]
            assert len(target["boxes"]) == len(target["labels"]) == len(target["masks"])
    first = data["annotations"][0]
    path = _write(tmp_path, "short", _with(data, "short polygon"))
    ds = CocoDetection(clean.train_images, path, train=True)
    kept = next(a for a in ds.annotations[first["image_id"]] if a["id"] == first["id"])
    assert kept["segmentation"] == [_rect(first["bbox"])]  # the valid polygon stays, the short one goes


@pytest.mark.slow
def test_a_file_with_every_defect_trains_to_the_end_with_the_counts_logged(clean, tmp_path, caplog,
                                                                           monkeypatch):
    from test_bench import MICRO

    from vitinit import bench

    monkeypatch.setenv("VITINIT_CACHE", str(tmp_path / "cache"))
    data = json.loads(clean.train_annotations.read_text())
    train = _write(tmp_path, "train", _with(data, *DEFECTS))
    val = _write(tmp_path, "val", _with(json.loads(clean.val_annotations.read_text()),
                                        "short polygon", "odd polygon only", "crowd RLE"))
    images = tmp_path / "images"
    shutil.copytree(clean.train_images, images)
    shutil.copytree(clean.val_images, images, dirs_exist_ok=True)
    caplog.set_level(logging.WARNING, "vitinit.data.coco")
    micro = [o for o in MICRO if not o.startswith("data.synthetic")] + [
        "data.dataset=custom", f"data.train.images={images}", f"data.train.annotations={train}",
        f"data.val.images={images}", f"data.val.annotations={val}", "data.image_size=64",
        "schedule.iters=3", "train.checkpoint_period=0", "eval.num_workers=0",
    ]
    results = bench.run_bench("demo", micro, output_dir=tmp_path / "run", progress=False)
    assert results["status"] == "finished" and results["final"]["iter"] == 3
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train.json")]
    total = {}
    for _, counts in DEFECTS.values():
        for k, n in counts.items():
            total[k] = total.get(k, 0) + n
    assert lines == [_line(train, total)]
    assert lines[0].startswith("train.json: 2 polygon(s) with < 6 or an odd number of coordinates dropped, ")
    print("\n" + lines[0])
    assert results["final"]["segm"]["AP"] is not None  # the evaluator read the val file's defects too
    # benchmarks/eval_precision.py on this run: float32 (the default) and bf16 evaluation side by side.
    spec = importlib.util.spec_from_file_location("eval_precision", BENCHMARKS / "eval_precision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main([str(tmp_path / "run")])
    assert [r[0] for r in rows] == ["eval precision", "float32 (default)", "bf16 autocast"]
    assert rows[1][1] == f"{results['final']['bbox']['AP']:.2f}" and rows[1][4] == "0.00e+00"
