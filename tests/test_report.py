"""`vitinit report` on fake-but-valid run folders: tables with the right numbers, PNGs, skips and errors."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from _fake_runs import make_ground_truth, write_json, write_run
from PIL import Image
from typer.testing import CliRunner

from vitinit.analysis.report import build_report
from vitinit.analysis.runs import RunFolderError

has_tidecv = importlib.util.find_spec("tidecv") is not None


@pytest.fixture()
def runs(tmp_path):
    gt = write_json(tmp_path / "instances_val.json", make_ground_truth(n_images=6, per_image=3))
    root = tmp_path / "runs"
    made = {
        "mae_25": write_run(root, "mae_b_25ep", init="mae", epochs=25, box_ap=48.1, mask_ap=43.2, gt_path=gt,
                            error="miss"),
        "mae_100": write_run(root, "mae_b_100ep", init="mae", epochs=100, box_ap=50.3, mask_ap=44.9,
                             gt_path=gt, error="miss"),
        "sup_100": write_run(root, "sup_b_100ep", init="supervised", epochs=100, box_ap=47.9, mask_ap=42.9,
                             gt_path=gt, error="loc"),
        "moco_running": write_run(root, "moco_b_100ep", init="mocov3", epochs=100, box_ap=12.0, mask_ap=11.0,
                                  gt_path=gt, status="running"),
    }
    return root, made


def _assert_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width > 400 and im.height > 200


def test_report_tables_plots_and_skips(tmp_path, runs):
    root, made = runs
    out = tmp_path / "report"
    report = build_report([root], out, analyze=has_tidecv)

    assert sorted(r.name for r in report.runs) == ["mae_b_100ep", "mae_b_25ep", "sup_b_100ep"]
    assert [p for p, _ in report.skipped] == [made["moco_running"]]
    md = (out / "report.md").read_text()
    assert md == report.markdown
    # The paper's table: the best schedule of each init, box / mask AP.
    assert "| MAE | 50.3 / 44.9 (100 ep) |" in md
    assert "| supervised | 47.9 / 42.9 (100 ep) |" in md
    assert "48.1" in md  # the 25-epoch MAE run is in the per-run table
    assert "moco_b_100ep" in md and "not finished (status: running)" in md
    assert "MoCo v3 |" not in md  # the unfinished run is not compared
    names = {p.name for p in report.files}
    expected = {"report.md", "ap_vs_schedule.png", "ap_during_training.png"}
    expected |= {"errors.png"} if has_tidecv else set()
    assert names == expected
    assert {p.name for p in out.iterdir()} == expected  # no temp files left behind
    for p in report.files:
        if p.suffix == ".png":
            _assert_png(p)
            assert f"]({p.name})" in md

    if has_tidecv:
        tide = json.loads((made["sup_100"] / "analysis" / "tide.json").read_text())
        loc = tide["bbox"]["delta_ap"]["loc"]
        assert loc > 1
        row = next(line for line in md.splitlines() if line.startswith("| supervised ViT-B (100 ep) | box |"))
        assert f"| {loc:.1f} |" in row
        mae = json.loads((made["mae_100"] / "analysis" / "tide.json").read_text())
        assert max(mae["segm"]["delta_ap"], key=mae["segm"]["delta_ap"].get) == "miss"


def test_report_on_one_run_without_tidecv(tmp_path, runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "tidecv", None)
    root, made = runs
    report = build_report([made["sup_100"]], tmp_path / "one")
    assert [r.name for r in report.runs] == ["sup_b_100ep"]
    assert any("pip install 'vitinit[tide]'" in n for n in report.notes)
    assert "None of the runs has an error analysis." in report.markdown
    assert not (made["sup_100"] / "analysis").exists()
    _assert_png(tmp_path / "one" / "ap_vs_schedule.png")


def test_report_refuses_non_runs_and_all_unfinished(tmp_path, runs):
    root, made = runs
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="not a run folder"):
        build_report([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(RunFolderError, match="is not a folder"):
        build_report([tmp_path / "missing"], tmp_path / "out")
    with pytest.raises(RunFolderError, match="no finished run"):
        build_report([made["moco_running"]], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_report(tmp_path, runs):
    from vitinit_cli.main import app

    root, made = runs
    cli = CliRunner()
    args = [str(made["mae_100"]), str(made["moco_running"]), "-o", str(tmp_path / "o"), "--no-analyze"]
    res = cli.invoke(app, ["report", *args])
    assert res.exit_code == 0, res.output
    assert "50.3 / 44.9 (100 ep)" in res.output
    assert "skipping" in res.output and "moco_b_100ep" in res.output
    assert (tmp_path / "o" / "report.md").is_file()

    res = cli.invoke(app, ["report", str(tmp_path), "-o", str(tmp_path / "o2")])
    assert res.exit_code == 1
    assert res.output.strip().startswith("error:") and "not a run folder" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
