"""``benchmarks/gpu_check.py --smoke``: the GPU check runs end to end on CPU, so it is ready when a GPU is."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_smoke_prints_the_whole_table(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        rows = module.main(["--smoke"])
    finally:
        torch.set_num_threads(threads)
    header, *body = rows
    assert header[:5] == ["what", "config", "s/iter", "images/s", "peak GiB"]
    configs = [(r[0], r[1]) for r in body]
    strategies = ("window+4global", "window", "global+ckpt")
    assert configs[:6] == [("backbone fwd+bwd", f"{s} {k}") for s in strategies for k in ("sdpa", "flex")]
    assert [c for w, c in configs if w == "Mask R-CNN train"] == ["1 img/GPU sdpa", "2 img/GPU sdpa"]
    by_config = {r[1]: r for r in body}
    assert by_config["window+4global flex"][2].startswith("n/a")  # no flex backward on CPU
    for r in body:
        if r[0] != "evaluation" and not r[2].startswith("n/a"):
            assert float(r[2]) > 0 and float(r[3]) > 0
    train1 = by_config["1 img/GPU sdpa"]
    assert train1[7] == "detectron2 0.314 s, 10.9 GB" and float(train1[5]) > 0  # ratio beside the reference
    assert body[-1][:2] == ["evaluation", "batch 4 fp32, fwd + COCO encoding"]  # eval.amp's default
    assert float(body[-1][3]) > 0  # evaluation images/s
    assert "window+4global sdpa" in capsys.readouterr().out
