"""`vitinit eval` and `vitinit predict` on a trained micro run: the full val set scored into RUN/eval/ and
the run's report, pictures of detections on the user's images, and one-line errors for what a user gets
wrong."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from test_bench import MICRO
from typer.testing import CliRunner
from vitinit_cli.main import app

from vitinit.analysis.gallery import output_instances
from vitinit.bench import run_bench

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A micro demo run that evaluated 1 of its 2 val images (eval.max_images=1), logged to W&B offline."""
    root = tmp_path_factory.mktemp("trained")
    overrides = [*MICRO, "schedule.iters=2", "eval.max_images=1", "eval.at_start=false"]
    if importlib.util.find_spec("wandb") is not None:  # vitinit[test] installs it; CI runs this
        overrides.append("train.loggers=[tensorboard,wandb]")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VITINIT_CACHE", str(tmp_path_factory.getbasetemp() / "vitinit-cache"))
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        results = run_bench("demo", overrides, output_dir=root / "run", progress=False)
    assert results["status"] == "finished"
    return root / "run"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VITINIT_CACHE", str(tmp_path_factory.getbasetemp() / "vitinit-cache"))


def _one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output, result.output
    for f in fragments:
        assert f in " ".join(result.output.split()), result.output


def test_wandb_offline_run_holds_the_runs_metrics(run):
    pytest.importorskip("wandb")
    files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, list((run / "wandb").rglob("*"))
    data = files[0].read_bytes()  # W&B's record log: the keys and the recipe appear as written
    for key in (b"train/loss", b"train/lr", b"eval/bbox/AP", b"eval/segm/AP", b"demo", b"synthetic"):
        assert key in data, key
    assert (run / "metrics.jsonl").is_file() and (run / "tensorboard").is_dir() == _has_tensorboard()


def _has_tensorboard() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def test_eval_scores_the_whole_val_set_into_the_run(run):
    result = runner.invoke(app, ["eval", str(run)])
    assert result.exit_code == 0, result.output
    entry = json.loads((run / "eval" / "last-instances_val" / "metrics.json").read_text())
    assert entry["kind"] == "rescore" and entry["iter"] == 2 and entry["images"] == 2  # the run scored 1
    assert (run / "eval" / "last-instances_val" / "bbox.json").is_file()
    report = (run / "report" / "report.md").read_text()
    assert "## Evaluations with `vitinit eval`" in report and "| last-instances_val | 2 | 2 |" in report
    # the run's own results and curve are untouched
    assert json.loads((run / "results.json").read_text())["eval_dir"] == "eval/iter_0000002"
    again = runner.invoke(app, ["eval", str(run), "eval.max_images=1", "--checkpoint",
                                str(run / "checkpoints" / "last.pth")])
    assert again.exit_code == 0, again.output
    first = json.loads((run / "eval" / "last-instances_val-first1" / "metrics.json").read_text())
    assert first["images"] == 1


def test_eval_errors_are_one_line(run, tmp_path):
    _one_line_error(runner.invoke(app, ["eval", str(run), "optim.lr=1"]), "only data.* and eval.* keys")
    _one_line_error(runner.invoke(app, ["eval", str(run), "--checkpoint", str(tmp_path / "no.pth")]),
                    "no checkpoint")
    _one_line_error(runner.invoke(app, ["eval", str(tmp_path)]), "no recipe.yaml")


def test_predict_draws_on_the_users_images(run, tmp_path):
    recipe = (run / "recipe.yaml").read_text()
    assert "synthetic" in recipe
    val = json.loads((run / "results.json").read_text())["val_annotations"]
    images = Path(val).parent.parent / "val"
    out = tmp_path / "pictures"
    result = runner.invoke(app, ["predict", str(run), str(images), "-o", str(out), "--score-threshold", "0"])
    assert result.exit_code == 0, result.output
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(p.with_suffix(".png").name for p in images.glob("*.png"))
    records = json.loads((out / "detections.json").read_text())
    assert all({"file", "category", "score", "bbox_xyxy"} <= set(r) for r in records)
    _one_line_error(runner.invoke(app, ["predict", str(run), str(tmp_path / "nope.jpg")]), "does not exist")
    (tmp_path / "empty").mkdir()
    _one_line_error(runner.invoke(app, ["predict", str(run), str(tmp_path / "empty")]), "no images")


def test_output_instances_keep_the_threshold_and_draw_the_best_on_top():
    output = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 4, 4]]),
        "labels": torch.tensor([2, 1, 1]),
        "scores": torch.tensor([0.9, 0.6, 0.2]),
        "masks": torch.rand(3, 1, 24, 24),
    }
    inst = output_instances(output, {1: 7, 2: 9}, {7: "cat", 9: "dog"}, score_thresh=0.5)
    assert inst.labels == ["cat 0.60", "dog 0.90"]  # lowest first: the best is drawn last, on top
    assert inst.masks.shape == (2, 24, 24) and inst.masks.dtype == torch.bool
    torch.testing.assert_close(inst.boxes, output["boxes"][[1, 0]])


def test_eval_and_predict_rebuild_the_model_without_the_source_weights(run, tmp_path, monkeypatch):
    """weights.json records the backbone's architecture: the run's source weights (a hub file, a path on
    another machine) are not read again; a folder from before that record still works by reading them."""
    import shutil

    import vitinit.bench.worker as worker

    recorded = json.loads((run / "weights.json").read_text())["backbone_config"]
    assert recorded["depth"] > 0 and recorded["img_size"] == 64
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    real_load_weights = worker.load_weights

    def unreachable(recipe):
        raise RuntimeError("the source weights were read")

    monkeypatch.setattr(worker, "load_weights", unreachable)
    result = runner.invoke(app, ["eval", str(copy), "eval.max_images=1"])
    assert result.exit_code == 0, result.output
    images = Path(json.loads((copy / "results.json").read_text())["val_annotations"]).parent.parent / "val"
    result = runner.invoke(app, ["predict", str(copy), str(images), "-o", str(tmp_path / "pictures")])
    assert result.exit_code == 0, result.output

    weights = json.loads((copy / "weights.json").read_text())
    del weights["backbone_config"]  # a run folder written before it was recorded
    (copy / "weights.json").write_text(json.dumps(weights))
    assert runner.invoke(app, ["eval", str(copy), "eval.max_images=1"]).exit_code == 1  # reads them
    monkeypatch.setattr(worker, "load_weights", real_load_weights)
    result = runner.invoke(app, ["eval", str(copy), "eval.max_images=1"])
    assert result.exit_code == 0, result.output

    weights["backbone_config"] = {"depth": "twelve"}
    (copy / "weights.json").write_text(json.dumps(weights))
    _one_line_error(runner.invoke(app, ["eval", str(copy)]), "backbone_config is not a backbone architecture")
    lies = (({"depth": 100_000}, "does not match"), ({"img_size": 4096}, "gives pos_embed the shape"))
    for lie, says in lies:
        weights["backbone_config"] = {**recorded, **lie}  # checked against the checkpoint, never allocated
        (copy / "weights.json").write_text(json.dumps(weights))
        _one_line_error(runner.invoke(app, ["eval", str(copy)]), "backbone_config", says)
    (copy / "weights.json").write_text("[1, 2]")
    _one_line_error(runner.invoke(app, ["eval", str(copy)]), "weights.json is not a JSON object")
