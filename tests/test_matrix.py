"""`vitinit bench` with several recipes: globs, the GPU-hours estimate, runs that go on past a failure and
end in one comparison report, resume, and one Slurm job per recipe (submitit's debug executor)."""

from __future__ import annotations

import json
from pathlib import Path

import _fake_runs as fake
import pytest
from test_bench import MICRO
from typer.testing import CliRunner
from vitinit.recipes import as_recipe
from vitinit_cli.main import app

from vitinit.bench import matrix
from vitinit.errors import ConfigError

runner = CliRunner()
FAST = [*MICRO, "schedule.iters=2"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VITINIT_CACHE", str(tmp_path_factory.getbasetemp() / "vitinit-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tiny_recipes(folder: Path) -> dict[str, Path]:
    """Two tiny demo variants (other seeds) and one whose dataset does not exist."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "tiny-a": "_base_: demo.yaml\ntrain: {seed: 1}\n",
        "tiny-b": "_base_: demo.yaml\ntrain: {seed: 2}\n",
        "tiny-broken": "_base_: demo.yaml\ndata:\n  dataset: custom\n"
        "  train: {images: nowhere, annotations: nowhere.json}\n"
        "  val: {images: nowhere, annotations: nowhere.json}\n",
    }
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(text)
    return {name: folder / f"{name}.yaml" for name in files}


def test_globs_expand_against_bundled_recipes_and_files(tmp_path):
    vitb = matrix.expand(["*-vitb"])
    assert "mae-vitb" in vitb and "beit-vitb" in vitb and not any("vitl" in n or "ep" in n for n in vitb)
    tiny_recipes(tmp_path)
    files = matrix.expand([str(tmp_path / "tiny-[ab].yaml"), "demo", "demo"])
    assert [Path(f).stem for f in files] == ["tiny-a", "tiny-b", "demo"]
    with pytest.raises(ConfigError, match="no recipe matches '\\*-vitq'"):
        matrix.expand(["*-vitq"])
    with pytest.raises(ConfigError, match="both named demo"):
        matrix.load_all(["demo", str(Path(matrix.__file__).parents[2] / "recipes" / "demo.yaml")])


def test_gpu_hours_estimate():
    """ViTDet's README: 0.314 s/img (ViT-B), 0.603 (ViT-L) on an A100; 184,375 it × 64 img for 100 epochs."""
    b = matrix.estimate(as_recipe("mae-vitb"))
    assert b.seconds_per_image == 0.314 and b.gpu_hours == pytest.approx(184_375 * 64 * 0.314 / 3600)
    assert matrix.estimate(as_recipe("mae-vitl")).seconds_per_image == 0.603
    assert matrix.estimate(as_recipe("random-r101")).gpu_hours is None  # no published figure
    assert matrix.estimate(as_recipe("demo")).gpu_hours is None


def test_dry_run_lists_the_matrix_with_gpu_hours():
    result = runner.invoke(app, ["bench", "*-vitb", "random-r101", "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "mae-vitb" in out and "1,029" in out and "4,117" in out  # random-vitb: 400 epochs
    assert "ESTIMATE" in out and "ViTDet README" in out and "random-r101: no published A100 speed" in out
    assert not list(Path().glob("runs/matrix-*"))  # nothing written


def test_local_matrix_goes_on_past_a_failure_and_reports(tmp_path):
    recipes = tiny_recipes(tmp_path / "recipes")
    root = tmp_path / "m"
    args = ["bench", str(recipes["tiny-broken"]), str(recipes["tiny-a"]), *FAST, "-o", str(root), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # one failed: the command says so
    out = " ".join(result.output.split())
    assert "1 of 2 recipes failed: tiny-broken" in out and "comparison report:" in out
    assert json.loads((root / "tiny-a" / "results.json").read_text())["status"] == "finished"
    report = (root / "report" / "report.md").read_text()
    assert "tiny-a" in report
    # --resume: the finished run is skipped (not trained again), the broken one is tried again
    mtime = (root / "tiny-a" / "results.json").stat().st_mtime
    again = runner.invoke(app, [*args, "--resume"])
    assert again.exit_code == 1 and "skipped" in again.output
    assert (root / "tiny-a" / "results.json").stat().st_mtime == mtime


def test_slurm_matrix_is_one_job_per_recipe_then_one_report(tmp_path, monkeypatch):
    """Each recipe is its own job into ROOT/NAME; `vitinit report ROOT` compares them once they are done.
    The jobs' worker is a stand-in writing a finished run folder: test_bench runs the real worker through
    submitit, this test the matrix around it."""
    pytest.importorskip("submitit")
    import vitinit.bench.slurm as bench_slurm

    gt = fake.write_json(tmp_path / "gt.json", fake.make_ground_truth())
    ran = []

    def fake_worker(recipe, run_dir, resume, progress):
        ran.append((recipe.name, Path(run_dir).name, resume))
        box = {"tiny-a": 30.0, "tiny-b": 40.0}[recipe.name]
        fake.write_run(Path(run_dir).parent, recipe.name, init=recipe.weights.init, variant="vit-b",
                       epochs=1, box_ap=box, mask_ap=box - 5, gt_path=gt)
        return {"status": "finished"}

    monkeypatch.setattr(bench_slurm, "train_worker", fake_worker)
    recipes = tiny_recipes(tmp_path / "recipes")
    loaded = matrix.load_all([str(recipes["tiny-a"]), str(recipes["tiny-b"])], FAST)
    root = tmp_path / "m"
    slurm = dict(nodes=1, gpus_per_node=1, partition=None, account=None, time_min=10, cluster="debug")
    jobs = matrix.submit_matrix(loaded, root, **slurm)
    assert [name for name, _ in jobs] == ["tiny-a", "tiny-b"]
    for _, job in jobs:
        assert job.result()["status"] == "finished"  # the debug executor runs the job here
    assert ran == [("tiny-a", "tiny-a", False), ("tiny-b", "tiny-b", False)]
    assert (root / "tiny-a" / "slurm").is_dir() and (root / "tiny-b" / "slurm").is_dir()
    assert matrix.submit_matrix(loaded, root, resume=True, **slurm) == []  # all finished: nothing to submit
    result = runner.invoke(app, ["report", str(root), "-o", str(tmp_path / "r"), "--pictures", "0"])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "r" / "report.md").read_text()
    assert "tiny-a" in report and "tiny-b" in report
