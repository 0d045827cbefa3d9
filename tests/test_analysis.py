"""TIDE error analysis on synthetic sets where we inject exactly one kind of error."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from _fake_runs import make_detections, make_ground_truth, without, write_json, write_run

from vitinit.analysis.runs import RunFolderError, load_run
from vitinit.analysis.tide import ERROR_TYPES, analyze_run, tide_errors
from vitinit.errors import DatasetError, MissingDependencyError, VitinitError

needs_tidecv = pytest.mark.skipif(
    importlib.util.find_spec("tidecv") is None, reason="tidecv not installed (pip install 'vitinit[tide]')"
)


@pytest.fixture(scope="module")
def ground_truth(tmp_path_factory):
    gt = make_ground_truth(n_images=12, per_image=3)
    return gt, write_json(tmp_path_factory.mktemp("gt") / "instances_val.json", gt)


def _write_dets(tmp_path, dets, mode):
    drop = "segmentation" if mode == "bbox" else "bbox"
    return write_json(tmp_path / f"{mode}.json", [{k: v for k, v in d.items() if k != drop} for d in dets])


@needs_tidecv
@pytest.mark.parametrize("mode", ["bbox", "segm"])
@pytest.mark.parametrize("error", ["cls", "loc", "both", "dupe", "bkg", "miss"])
def test_injected_error_type_dominates(tmp_path, ground_truth, error, mode):
    gt, gt_path = ground_truth
    dets = make_detections(gt, error=error, fraction=0.3, seed=1)
    result = tide_errors(gt_path, _write_dets(tmp_path, dets, mode), mode=mode)

    delta = result["delta_ap"]
    assert set(delta) == set(ERROR_TYPES)
    # A cls+loc detection cannot be fixed into its object (TIDE only drops it), so the object also counts
    # as missed: for "both", miss shows too and is the larger gain.
    side_effects = {"miss"} if error == "both" else set()
    assert delta[error] > 1.0
    assert delta[error] == max(v for k, v in delta.items() if k not in side_effects)
    for other in set(ERROR_TYPES) - {error} - side_effects:
        assert delta[other] == 0.0, (other, delta)
        assert result["counts"][other] == 0, (other, result["counts"])
    assert result["counts"][error] > 0
    if error == "miss":
        assert result["counts"]["miss"] == len(gt["annotations"]) - len(dets)
    assert 0.0 < result["ap50"] < 100.0


@needs_tidecv
def test_perfect_detections_have_no_errors(tmp_path, ground_truth):
    gt, gt_path = ground_truth
    result = tide_errors(gt_path, _write_dets(tmp_path, make_detections(gt), "bbox"))
    assert result["ap50"] == pytest.approx(100.0)
    assert all(v == 0.0 for v in result["delta_ap"].values())


@needs_tidecv
def test_ap50_agrees_with_pycocotools(tmp_path, ground_truth, capsys):
    # TIDE's own AP@0.5 against an independent implementation of the same COCO metric.
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, gt_path = ground_truth
    dets = make_detections(gt, error="loc", fraction=0.4, seed=3)
    result = tide_errors(gt_path, _write_dets(tmp_path, dets, "bbox"), mode="bbox")
    coco = COCO(str(gt_path))
    ev = COCOeval(coco, coco.loadRes([without(d, "segmentation") for d in dets]), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert result["ap50"] == pytest.approx(100 * ev.stats[1], abs=1e-6)


@needs_tidecv
def test_no_detections_is_all_missed(tmp_path, ground_truth):
    _, gt_path = ground_truth
    result = tide_errors(gt_path, write_json(tmp_path / "bbox.json", []))
    assert result["ap50"] == 0.0
    assert result["note"] == "no detections"
    assert result["counts"]["miss"] == len(ground_truth[0]["annotations"])


@needs_tidecv
def test_empty_ground_truth_is_a_clear_error(tmp_path):
    gt_path = write_json(tmp_path / "gt.json", {"images": [], "annotations": [], "categories": []})
    with pytest.raises(DatasetError, match="no \\(non-crowd\\) annotations"):
        tide_errors(gt_path, write_json(tmp_path / "bbox.json", []))


@needs_tidecv
def test_analyze_run_writes_tide_json(tmp_path, ground_truth):
    _, gt_path = ground_truth
    run = write_run(tmp_path, "sup_b_25ep", init="supervised", epochs=25, box_ap=40.0, mask_ap=36.0,
                    gt_path=gt_path, error="loc")
    result = analyze_run(run)
    written = json.loads((run / "analysis" / "tide.json").read_text())
    assert written == result
    assert (written["run"], written["init"], written["variant"]) == ("sup_b_25ep", "supervised", "vit-b")
    assert written["eval_dir"] == json.loads((run / "results.json").read_text())["eval_dir"]
    assert written["pos_threshold"] == 0.5 and written["bg_threshold"] == 0.1
    for mode in ("bbox", "segm"):
        assert max(written[mode]["delta_ap"], key=written[mode]["delta_ap"].get) == "loc"
    assert load_run(run).tide == written
    assert [p.name for p in (run / "analysis").iterdir()] == ["tide.json"]  # no temp file left behind


def test_missing_tidecv_names_the_extra(tmp_path, ground_truth, monkeypatch):
    monkeypatch.setitem(sys.modules, "tidecv", None)  # makes `import tidecv` raise ImportError
    _, gt_path = ground_truth
    with pytest.raises(MissingDependencyError, match=r"pip install 'vitinit\[tide\]'"):
        tide_errors(gt_path, gt_path)
    with pytest.raises(MissingDependencyError):
        analyze_run(tmp_path)


@needs_tidecv
def test_analyze_run_rejects_non_runs(tmp_path, ground_truth):
    with pytest.raises(RunFolderError, match="not a run folder"):
        analyze_run(tmp_path)
    with pytest.raises(RunFolderError, match="is not a folder"):
        analyze_run(tmp_path / "nope")
    _, gt_path = ground_truth
    run = write_run(tmp_path, "r", init="mae", epochs=1, box_ap=1, mask_ap=1, gt_path=gt_path)
    results = json.loads((run / "results.json").read_text())
    write_json(run / "results.json", {**results, "status": "running", "eval_dir": None})
    with pytest.raises(VitinitError, match="no evaluation yet"):
        analyze_run(run)
    assert not (run / "analysis").exists()
