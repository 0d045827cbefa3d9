"""The run folder under damage: each bad file is a one-line error, refused before anything runs or is written.

Each case builds its damaged folder at test time (an empty or cut checkpoint, broken YAML, results of the
wrong type), as a killed job, a full disk or a hand edit leaves them.
"""

from __future__ import annotations

import io
import json
import zipfile
from types import SimpleNamespace

import pytest
import torch
from _fake_runs import make_ground_truth, write_json, write_run
from typer.testing import CliRunner
from vitinit_cli.main import app

from vitinit import bench
from vitinit.analysis.runs import load_run
from vitinit.engine import hooks as H
from vitinit.engine.run_folder import RunFolder, RunFolderError
from vitinit.errors import TrainingError

runner = CliRunner()
MICRO = ["model.img_size=64", "model.window_size=2", "data.synthetic.num_train=8", "data.synthetic.num_val=2",
         "data.synthetic.image_size=64", "data.epoch_images=8", "train.batch_size=2", "schedule.iters=6"]


def _one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    for f in fragments:
        assert f in result.output, result.output


def _checkpoint_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"iter": 3, "model": {"w": torch.zeros(256)}}, buf)
    return buf.getvalue()


def _run(tmp_path, checkpoint: bytes | None, recipe_text: str | None = None) -> RunFolder:
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    if recipe_text is None:
        folder.write_recipe(bench.resolve("demo", MICRO))
    else:
        folder.recipe.write_text(recipe_text)
    if checkpoint is not None:
        folder.checkpoints.mkdir()
        folder.last_checkpoint.write_bytes(checkpoint)
    return folder


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "checkpoint, expected",
    [(b"", "is empty"), (_checkpoint_bytes()[:300], "is damaged"), (b"not a zip at all" * 8, "is damaged")],
    ids=["empty", "truncated", "garbage"],
)
def test_resume_from_a_damaged_checkpoint_is_refused_at_once(tmp_path, checkpoint, expected):
    folder = _run(tmp_path, checkpoint)
    before = _files(folder.path)
    r = runner.invoke(app, ["bench", "--resume", "-o", str(folder.path), "-q"])
    _one_line_error(r, expected, "last.pth")
    assert _files(folder.path) == before  # nothing written, the damaged file left for the user to inspect


def test_a_checkpoint_whose_entries_are_corrupt_is_one_line_too(tmp_path):
    """A complete zip with broken contents gets past the quick check; the load itself says what is wrong."""
    good = _checkpoint_bytes()
    path = tmp_path / "last.pth"
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, b"\x00" * 16 if info.filename.endswith("data.pkl") else src.read(info))
    with pytest.raises(TrainingError, match="cannot be read") as e:
        H.load_checkpoint(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "text, expected",
    [("model: [unclosed\n", "is not valid YAML"), ("- 1\n- 2\n", "is not a recipe"), ("", "is not a recipe")],
    ids=["broken-yaml", "a-list", "empty"],
)
def test_resume_with_a_corrupt_recipe_is_one_line(tmp_path, text, expected):
    folder = _run(tmp_path, _checkpoint_bytes(), recipe_text=text)
    _one_line_error(runner.invoke(app, ["bench", "--resume", "-o", str(folder.path), "-q"]), expected)


def test_resume_with_a_bad_value_in_the_saved_recipe_names_the_key(tmp_path):
    recipe = bench.resolve("demo", MICRO)
    recipe["schedule"]["iters"] = "abc"
    folder = _run(tmp_path, _checkpoint_bytes(), recipe_text=json.dumps(recipe))  # JSON is YAML
    _one_line_error(runner.invoke(app, ["bench", "--resume", "-o", str(folder.path)]), "schedule.iters")


def test_a_recipe_saved_before_a_key_existed_still_resumes(tmp_path):
    recipe = bench.resolve("demo", MICRO)
    del recipe["model"]["attention"], recipe["eval"]["num_workers"]
    folder = _run(tmp_path, _checkpoint_bytes(), recipe_text=json.dumps(recipe))
    got = folder.read_recipe()
    assert got["model"]["attention"] == "auto" and got["eval"]["num_workers"] == 0


def test_resume_into_an_empty_folder_refuses_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(app, ["bench", "demo", "--resume", "-o", str(empty), "-q"])
    _one_line_error(r, "nothing to resume", "last.pth")
    assert list(empty.iterdir()) == []
    r = runner.invoke(app, ["bench", "demo", "--resume", "-o", str(tmp_path / "missing"), "-q"])
    _one_line_error(r, "nothing to resume")
    assert not (tmp_path / "missing").exists()


def test_resume_keeps_the_run_s_recipe(tmp_path):
    folder = _run(tmp_path, _checkpoint_bytes())
    with pytest.raises(Exception, match="drop the key=value overrides"):
        bench.run_bench(None, ["optim.lr=1"], output_dir=folder.path, resume=True)
    with pytest.raises(Exception, match="is a run of demo, not mae-vitb"):
        bench.run_bench("mae-vitb", output_dir=folder.path, resume=True)


@pytest.fixture
def finished_run(tmp_path):
    gt = write_json(tmp_path / "gt.json", make_ground_truth(4, 2))
    return write_run(tmp_path / "runs", "r", init="mae", epochs=1, box_ap=40, mask_ap=35, gt_path=gt)


@pytest.mark.parametrize(
    "patch, expected",
    [
        ({"iters": "abc"}, "iters must be an integer"),
        ({"epochs": {}}, "epochs must be a number"),
        ({"status": 1}, "status must be a string"),
        ({"best": [1]}, "best must be a mapping or null"),
        ({"best": {"iter": 1, "bbox": "x"}}, "best.bbox must be a mapping"),
        ({"final": {"iter": "7", "bbox": {}}}, "final.iter must be an integer"),
        ({"final": {"iter": 7, "bbox": {"AP": "high"}}}, "final.bbox.AP must be a number"),
        ({"history": [{"iter": 1, "segm": {"AP": [1]}}]}, "history[0].segm.AP"),
        ({"val_annotations": 3}, "val_annotations must be a path"),
    ],
)
def test_results_of_the_wrong_type_are_one_line(finished_run, patch, expected):
    results = json.loads((finished_run / "results.json").read_text())
    (finished_run / "results.json").write_text(json.dumps({**results, **patch}))
    with pytest.raises(RunFolderError, match=expected.replace("[", r"\[")) as e:
        load_run(finished_run)
    assert "\n" not in str(e.value)


def test_report_of_a_damaged_run_is_one_line(finished_run, tmp_path):
    (finished_run / "results.json").write_text(json.dumps([1, 2]))
    r = runner.invoke(app, ["report", str(finished_run), "-o", str(tmp_path / "rep"), "--no-analyze"])
    _one_line_error(r, "results.json")


def test_report_onto_an_existing_file_is_refused(finished_run, tmp_path):
    target = tmp_path / "report.md"
    target.write_text("keep me")
    r = runner.invoke(app, ["report", str(finished_run), "-o", str(target), "--no-analyze"])
    _one_line_error(r, "is a file")
    assert target.read_text() == "keep me"


def test_a_half_written_metrics_line_does_not_stop_a_resume(tmp_path):
    """A killed job leaves half a JSON line; resuming drops it with the lines past the checkpoint."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "iter": 2}\n{"kind": "train", "iter": 4}\n{"kind": "tr')
    writer = H.MetricsWriter(path, tensorboard=False)
    writer.trainer = SimpleNamespace(start_iter=3)
    writer.before_train()
    assert [json.loads(x)["iter"] for x in path.read_text().splitlines()] == [2]


def test_the_folder_names_every_file(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.last_checkpoint == tmp_path / "checkpoints" / "last.pth"
    assert folder.eval_dir(250) == tmp_path / "eval" / "iter_0000250"
    assert {p.name for p in (folder.recipe, folder.weights, folder.metrics, folder.results)} == {
        "recipe.yaml", "weights.json", "metrics.jsonl", "results.json"}
    results = folder.write_results(
        {"name": "x", "weights": {"init": "mae"}, "model": {"variant": "vit-b"},
         "schedule": {"iters": 10, "epochs": 1.0}},
        [{"iter": 10, "epoch": 1.0, "bbox": {"AP": 1.0}, "segm": {"AP": 0.5}}],
        "finished",
        tmp_path / "gt.json",
    )
    assert folder.read_results() == results and results["eval_dir"] == "eval/iter_0000010"


def test_slurm_resume_is_checked_here_before_submitting(tmp_path):
    from vitinit.bench.slurm import submit

    with pytest.raises(TrainingError, match="nothing to resume"):
        submit(None, resume=True, output_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no slurm/ log folder either
