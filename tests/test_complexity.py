"""Complexity figures (FLOPs per part, params, images/s), the ResNet-101 baseline, `vitinit model-info`."""

from __future__ import annotations

import json

import pytest
import torch
from _fake_runs import make_ground_truth, write_json, write_run
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import resnet101
from typer.testing import CliRunner

from vitinit.analysis.complexity import COMPLEXITY_FILE, count_flops, measure_speed, parameter_parts
from vitinit.analysis.run_report import write_run_report
from vitinit.errors import ConfigError
from vitinit.modeling.mask_rcnn import MaskRCNNConfig, build_mask_rcnn
from vitinit.modeling.vit import ViTBackboneConfig

SIZE = 64
TINY = ViTBackboneConfig(
    embed_dim=32, depth=4, num_heads=2, mlp_hidden_dim=64, img_size=SIZE, window_size=2,
    global_block_indexes=(1, 3),
)


def _cfg(**kw) -> MaskRCNNConfig:
    base = dict(backbone=TINY, num_classes=3, fpn_channels=32, norm="BN", min_size=SIZE, max_size=SIZE,
                box_head_fc=64)
    return MaskRCNNConfig(**{**base, **kw})


def _rpn_flops(size: int, c: int, anchors: int = 3) -> int:
    """RPNHead with 2 convs: two 3×3 c→c convs, 1×1 to A logits and 4A deltas, on P2..P6 (2 FLOPs/MAC)."""
    pixels = sum((size // s) ** 2 for s in (4, 8, 16, 32, 64))
    return pixels * (2 * (2 * 9 * c * c) + 2 * c * anchors + 2 * c * 4 * anchors)


def _box_flops(rois: int, c: int, fc: int, classes: int) -> int:
    """4 convs 3×3 on 7×7, one fc, class scores and class-specific deltas."""
    per = 4 * 2 * 9 * c * c * 49 + 2 * c * 49 * fc + 2 * fc * (classes + 1) * 5
    return rois * per


def test_flops_per_part_match_arithmetic_and_a_real_forward():
    real = build_mask_rcnn(_cfg()).eval()
    fake = count_flops(build_mask_rcnn(_cfg(), device="meta"), SIZE)
    assert fake.flops == count_flops(real, SIZE).flops  # a meta model counts as the real one
    assert fake.flops["RPN"] == _rpn_flops(SIZE, 32)
    assert fake.flops["box head"] == _box_flops(1000, 32, 64, 3)
    assert fake.flops["total"] == sum(v for k, v in fake.flops.items() if k != "total")
    x = torch.rand(1, 3, SIZE, SIZE)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        real.backbone.vit(x)
    assert fake.flops["ViT backbone"] == counter.get_total_flops() > 0
    assert list(fake.params) == ["ViT backbone", "adapter + FPN", "RPN", "box head", "mask head", "total"]
    assert fake.params["total"] == sum(p.numel() for p in real.parameters())
    assert next(real.parameters()).abs().sum() > 0  # counting left the real weights alone


def test_resnet101_baseline_shares_the_heads_and_trains_from_scratch():
    model = build_mask_rcnn(_cfg(backbone_type="resnet101"))
    parts = parameter_parts(model)
    trunk = resnet101(weights=None)
    fc = trunk.fc.weight.numel() + trunk.fc.bias.numel()  # the classifier is not part of the backbone
    assert parts["ResNet-101 backbone"] == sum(p.numel() for p in trunk.parameters()) - fc
    vit = parameter_parts(build_mask_rcnn(_cfg(), device="meta"))
    for head in ("RPN", "box head", "mask head"):
        assert parts[head] == vit[head]
    feats = model.backbone(torch.rand(1, 3, 128, 128))
    assert {k: v.shape[-1] for k, v in feats.items()} == {"0": 32, "1": 16, "2": 8, "3": 4, "pool": 2}
    assert model.backbone.feature_names == list(feats)

    model.train()
    images = [torch.rand(3, SIZE, SIZE), torch.rand(3, SIZE, SIZE)]
    targets = [{"boxes": torch.tensor([[4.0, 6, 40, 50]]), "labels": torch.tensor([1]),
                "masks": torch.zeros(1, SIZE, SIZE, dtype=torch.uint8).index_fill_(1, torch.arange(6, 50), 1)}
               for _ in images]
    loss = sum(model(images, targets).values())
    loss.backward()
    assert torch.isfinite(loss)
    no_grad = [n for n, p in model.backbone.named_parameters() if p.grad is None]
    assert not no_grad  # nothing frozen: every stem and stage parameter learns
    with pytest.raises(ConfigError, match="backbone_type"):
        _cfg(backbone_type="resnet50")
    with pytest.raises(ConfigError, match="own FPN"):
        _cfg(backbone_type="resnet101", pyramid="simple")
    with pytest.raises(ConfigError, match="needs a norm"):
        build_mask_rcnn(_cfg(backbone_type="resnet101", norm="none"), device="meta")


def test_measure_speed_runs_the_whole_detector():
    model = build_mask_rcnn(_cfg(box_score_thresh=0.0))
    calls = []
    model.roi_heads.mask_head.register_forward_hook(lambda *a: calls.append(1))
    assert measure_speed(model, SIZE, iters=2) > 0
    assert len(calls) == 3 and model.training  # warm-up + 2 timed, mask head reached; mode restored


def test_run_report_shows_complexity_beside_ap(tmp_path):
    gt = write_json(tmp_path / "instances_val.json", make_ground_truth(n_images=3))
    run = write_run(tmp_path / "runs", "r101_400ep", init="random", variant="r-101", epochs=400,
                    box_ap=48.9, mask_ap=43.6, gt_path=gt)
    model = build_mask_rcnn(_cfg(backbone_type="resnet101"), device="meta")
    md = write_run_report(run, model=model, size=SIZE).read_text()
    info = json.loads((run / COMPLEXITY_FILE).read_text())
    real = build_mask_rcnn(_cfg(backbone_type="resnet101"))
    assert info["params"]["total"] == parameter_parts(real)["total"]
    row = next(line for line in md.splitlines() if line.startswith("| r101_400ep | R-101 (random) |"))
    params, flops = info["params"]["total"] / 1e6, info["flops"]["total"] / 1e9
    assert f"| {params:.1f} | {flops:.0f} | 64² | 1000 / 100 | 48.9 | 43.6 |" in row
    assert "| R-101: AP box / AP mask (schedule) |" in md.replace("initialization | ", "")


def test_cli_model_info():
    from vitinit_cli.main import app

    cli = CliRunner()
    res = cli.invoke(app, ["model-info", "-m", "r-101", "--no-speed", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["backbone_type"] == "resnet101" and info["size"] == 1024 and info["images_per_s"] is None
    assert info["flops"]["RPN"] == _rpn_flops(1024, 256)
    assert info["flops"]["box head"] == _box_flops(1000, 256, 1024, 80)
    assert round(info["parameters"]["ResNet-101 backbone"] / 1e6, 1) == 42.5
    res = cli.invoke(app, ["model-info", "-m", "vit-b", "--no-speed"], env={"COLUMNS": "120"})
    assert res.exit_code == 0 and "ViT backbone" in res.output and "adapter + FPN" in res.output
    assert "731.0" in res.output  # GFLOPs of the ViT-B trunk at 1024
    if not torch.cuda.is_available():
        res = cli.invoke(app, ["model-info", "--device", "cuda"])
        assert res.exit_code == 1 and "CUDA is not available" in res.output
    res = cli.invoke(app, ["model-info", "-m", "vit-x"])
    assert res.exit_code == 1 and res.output.startswith("error:") and "r-101" in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.slow  # ~35 s on a loaded 2-core machine: ResNet-101 init, 2 steps, eval, TIDE, report
def test_random_r101_recipe_trains_through_the_bench(tmp_path, monkeypatch):
    """The baseline is one command: `vitinit bench random-r101` (here shrunk to seconds on synthetic data)."""
    from vitinit import bench

    monkeypatch.setenv("VITINIT_CACHE", str(tmp_path / "cache"))
    micro = [
        "data.dataset=synthetic", "data.synthetic.num_train=4", "data.synthetic.num_val=2",
        "data.synthetic.image_size=64", "model.img_size=64", "model.window_size=2", "model.norm=BN",
        "data.num_workers=0", "data.epoch_images=4", "data.scale_range=[0.5,1.5]", "train.batch_size=2",
        "schedule.epochs=null", "schedule.iters=2", "schedule.warmup_iters=1", "train.device=cpu",
        "train.checkpoint_period=2", "model.detector.rpn_pre_nms_top_n_train=100",
        "model.detector.rpn_post_nms_top_n_train=50", "model.detector.box_batch_size_per_image=32",
        "model.detector.rpn_post_nms_top_n_test=100", "model.detector.box_detections_per_img=20",
    ]
    results = bench.run_bench("random-r101", micro, output_dir=tmp_path / "run", progress=False)
    assert results["status"] == "finished" and results["variant"] == "r-101"
    info = json.loads((tmp_path / "run" / COMPLEXITY_FILE).read_text())
    assert "ResNet-101 backbone" in info["params"] and info["proposals"] == 100 and info["detections"] == 20
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pth", weights_only=True)["model"]
    assert any(k.startswith("backbone.body.res5.") for k in state) and not any(".vit." in k for k in state)
