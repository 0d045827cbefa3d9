"""`vitinit bench`: the demo learns end to end, resume reaches the same weights, 2-process DDP, dry run."""

from __future__ import annotations

import json
import time

import pytest
import torch
from typer.testing import CliRunner
from vitinit_cli.main import app

from vitinit import bench
from vitinit.engine.hooks import load_checkpoint
from vitinit.engine.trainer import Trainer

runner = CliRunner()

# The demo recipe shrunk further: 64-px images, 8 training images, a few iterations (seconds, not minutes).
MICRO = [
    "model.img_size=64",
    "model.window_size=2",
    "data.synthetic.num_train=8",
    "data.synthetic.num_val=2",
    "data.synthetic.image_size=64",
    "data.epoch_images=8",
    "train.batch_size=2",
    "schedule.iters=6",
    "schedule.warmup_iters=2",
    "train.checkpoint_period=3",
    "train.log_period=1",
    "eval.at_start=false",
    "model.detector.rpn_pre_nms_top_n_train=100",
    "model.detector.rpn_post_nms_top_n_train=50",
    "model.detector.box_batch_size_per_image=32",
]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VITINIT_CACHE", str(tmp_path_factory.getbasetemp() / "vitinit-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.slow
def test_demo_learns(tmp_path):
    """The README's main job: `vitinit bench demo` on CPU; its box AP must rise well above iteration 0's."""
    start = time.perf_counter()
    result = runner.invoke(app, ["bench", "demo", "--output-dir", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    first, final = results["history"][0], results["final"]
    print(
        f"\ndemo: box AP {first['bbox']['AP']:.2f} → {final['bbox']['AP']:.2f}, mask AP "
        f"{first['segm']['AP']:.2f} → {final['segm']['AP']:.2f} in {time.perf_counter() - start:.0f} s"
    )
    assert results["status"] == "finished" and first["iter"] == 0 and final["iter"] == results["iters"]
    assert final["bbox"]["AP"] >= first["bbox"]["AP"] + 5.0
    assert final["segm"]["AP"] > first["segm"]["AP"]
    # The run-folder contract.
    assert (run / "recipe.yaml").is_file() and json.loads((run / "weights.json").read_text())[
        "family"
    ] == "random"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {x["kind"] for x in lines} == {"train", "eval"}
    assert all({"loss", "lr"} <= set(x) for x in lines if x["kind"] == "train")
    eval_dir = run / results["eval_dir"]
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert set(metrics["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"} and "segm" in metrics
    assert json.loads((eval_dir / "segm.json").read_text())  # detections in COCO results format
    assert (run / "checkpoints" / "last.pth").is_file()
    assert "final" in result.output and "box AP" in result.output  # the human summary table


def test_resume_reaches_the_same_weights(tmp_path, monkeypatch):
    straight = bench.run_bench("demo", MICRO, output_dir=tmp_path / "a", progress=False)
    assert straight["status"] == "finished"

    original = Trainer.run_step

    def killed_after_4(self):  # dies during iteration 4, after the checkpoint at 3
        if self.iter == 4:
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(Trainer, "run_step", killed_after_4)
    with pytest.raises(KeyboardInterrupt):
        bench.run_bench("demo", MICRO, output_dir=tmp_path / "b", progress=False)
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pth")["iter"] == 3
    assert json.loads((tmp_path / "b" / "results.json").read_text())["status"] == "failed"
    monkeypatch.setattr(Trainer, "run_step", original)

    result = runner.invoke(app, ["bench", "--resume", "--output-dir", str(tmp_path / "b"), "--quiet"])
    assert result.exit_code == 0, result.output
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pth")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pth")
    assert a["iter"] == b["iter"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    iters = [
        json.loads(x)["iter"]
        for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["kind"] == "train"
    ]
    assert iters == [1, 2, 3, 4, 5, 6]
    # A finished run is not started again by accident.
    again = runner.invoke(app, ["bench", "demo", *MICRO, "--output-dir", str(tmp_path / "b")])
    assert again.exit_code == 1 and "--resume" in again.output


def test_two_process_gloo_ddp(tmp_path):
    results = bench.run_bench(
        "demo", MICRO + ["schedule.iters=4"], output_dir=tmp_path / "ddp", num_processes=2, progress=False
    )
    assert results["status"] == "finished" and results["world_size"] == 2
    assert results["final"]["iter"] == 4
    state = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pth")
    assert len(state["rng"]["per_rank"]) == 2  # each rank's RNG kept for resume


def test_dry_run_mae_vitb():
    result = runner.invoke(app, ["bench", "mae-vitb", "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "name: mae-vitb" in out and "init: mae" in out and "iters: 184375" in out
    assert "global_blocks: quarter" in out and "lr: 8.0e-05" in out
    assert "# weights: official mae vit-b checkpoint" in out and "mae_pretrain_vit_base" in out


def test_dry_run_prints_the_batch_plan_for_typical_gpus(monkeypatch):
    """Without a GPU, --dry-run --gpus 8 prints the plan it would use on 24, 40 and 80 GB GPUs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(app, ["bench", "mae-vitl", "--dry-run", "--gpus", "8"])
    assert result.exit_code == 0, result.output
    plans = [line for line in result.output.splitlines() if " GB GPUs: " in line]
    assert [p.split(":")[0] for p in plans] == ["# 24 GB GPUs", "# 40 GB GPUs", "# 80 GB GPUs"]
    assert "8 GPUs × 2 images × 4 steps = 64: 80 GB fits 3 images (vit-l 20.9 GB/image" in plans[2]
    one = runner.invoke(app, ["bench", "mae-vitb", "--dry-run", "train.images_per_gpu=2"])
    assert "1 GPU × 2 images × 32 steps = 64: train.images_per_gpu=2" in one.output


def test_cli_errors_are_one_line(tmp_path):
    r = runner.invoke(app, ["bench", "mae-vitb", "optim.nope=1", "--dry-run"])
    assert r.exit_code == 1 and "error:" in r.output and "Traceback" not in r.output
    r = runner.invoke(
        app, ["bench", "mae-vitb", "data.root=" + str(tmp_path), "--output-dir", str(tmp_path / "x")]
    )
    assert r.exit_code == 1 and "COCO 2017 not found" in r.output
    r = runner.invoke(app, ["bench", "--list"])
    assert r.exit_code == 0 and "mae-vitl" in r.output.split()


def test_slurm_submission_runs_the_same_worker(tmp_path):
    pytest.importorskip("submitit")
    from vitinit.bench.slurm import submit
    from vitinit.engine.slurm import slurm_parameters

    params = slurm_parameters(
        nodes=2, gpus_per_node=8, partition="learn", account=None, time_min=60, name="x"
    )
    assert params["tasks_per_node"] == 8 and params["slurm_partition"] == "learn"
    job = submit("demo", MICRO + ["schedule.iters=2"], output_dir=tmp_path / "s", cluster="debug")
    assert job.result()["status"] == "finished"
