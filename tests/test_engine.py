"""The training engine: lr schedule, parameter groups, resumable sampling, the loop and its hooks."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from _spawn import spawn_with_deadline

from vitinit.engine import hooks as H
from vitinit.engine.optim import build_param_groups, lr_factor
from vitinit.engine.sampler import SeededSamples, StreamSampler
from vitinit.engine.trainer import HookBase, Trainer
from vitinit.errors import TrainingError
from vitinit.modeling.mask_rcnn import MaskRCNNConfig, build_mask_rcnn
from vitinit.modeling.vit import ViTBackboneConfig


def test_lr_factor_warmup_and_steps():
    kw = dict(max_iter=184_375, warmup_iters=250, warmup_factor=0.001, milestones=(0.888889, 0.962963))
    assert lr_factor(0, **kw) == pytest.approx(0.001)
    assert lr_factor(125, **kw) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(250, **kw) == 1.0
    # detectron2's 100-epoch milestones 163,889 and 177,546 (ViTDet's mask_rcnn_vitdet_b_100ep.py).
    assert lr_factor(163_888, **kw) == 1.0 and lr_factor(163_889, **kw) == pytest.approx(0.1)
    assert lr_factor(177_546, **kw) == pytest.approx(0.01)
    cos = dict(max_iter=100, warmup_iters=0, policy="cosine")
    assert lr_factor(0, **cos) == 1.0 and lr_factor(50, **cos) == pytest.approx(0.5)
    assert lr_factor(100, **cos) == pytest.approx(0.0, abs=1e-12)


def _tiny_detector(**backbone) -> nn.Module:
    bb = ViTBackboneConfig(
        embed_dim=32,
        depth=4,
        num_heads=2,
        mlp_hidden_dim=64,
        img_size=64,
        window_size=2,
        global_block_indexes=(1, 3),
        **backbone,
    )
    return build_mask_rcnn(
        MaskRCNNConfig(
            backbone=bb,
            num_classes=3,
            fpn_channels=32,
            norm="BN",
            min_size=64,
            max_size=64,
            box_head_fc=64,
            box_batch_size_per_image=32,
            rpn_pre_nms_top_n_train=100,
            rpn_post_nms_top_n_train=50,
            rpn_pre_nms_top_n_test=50,
            rpn_post_nms_top_n_test=20,
        )
    )


def test_param_groups_weight_decay_and_layer_decay():
    model = _tiny_detector()
    groups = build_param_groups(model, lr=1e-3, weight_decay=0.1, layer_decay=0.5)
    by_name = {n: g for g in groups for n in g["names"]}
    no_wd = [n for n, g in by_name.items() if g["weight_decay"] == 0]
    assert "backbone.vit.pos_embed" in no_wd
    assert "backbone.vit.rel_pos_window.relative_position_bias_table" in no_wd
    assert "backbone.vit.blocks.0.norm1.weight" in no_wd and "backbone.vit.blocks.0.norm1.bias" in no_wd
    assert any(n.startswith("roi_heads.box_head") and "weight" in n for n in no_wd)  # BatchNorm in the heads
    assert by_name["backbone.vit.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.1
    assert (
        by_name["backbone.vit.blocks.0.attn.qkv.bias"]["weight_decay"] == 0.1
    )  # biases decay, as detectron2
    # ViTDet's layer-wise decay: depth 4 → patch/pos ×0.5^5, block k ×0.5^(4-k), heads ×1.
    assert by_name["backbone.vit.patch_embed.proj.weight"]["base_lr"] == pytest.approx(1e-3 * 0.5**5)
    assert by_name["backbone.vit.blocks.0.mlp.fc1.weight"]["base_lr"] == pytest.approx(1e-3 * 0.5**4)
    assert by_name["backbone.vit.blocks.3.mlp.fc1.weight"]["base_lr"] == pytest.approx(1e-3 * 0.5)
    assert by_name["roi_heads.box_predictor.cls_score.weight"]["base_lr"] == pytest.approx(1e-3)
    assert by_name["backbone.vit.rel_pos_global.relative_position_bias_table"]["base_lr"] == pytest.approx(
        1e-3
    )
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)


def test_layer_scale_gets_no_weight_decay():
    """BEiT's gamma_1/gamma_2 are exempt, as in BEiT's own fine-tuning (every 1-D parameter)."""
    model = _tiny_detector(layer_scale=True)
    groups = build_param_groups(model, lr=1e-3, weight_decay=0.1)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["backbone.vit.blocks.0.gamma_1"]["weight_decay"] == 0
    assert by_name["backbone.vit.blocks.0.gamma_2"]["weight_decay"] == 0


def test_stream_sampler_resumes_and_splits_ranks():
    full = StreamSampler(10, batch_size=4, seed=1)
    it = iter(full)
    first = [next(it) for _ in range(6)]  # 24 positions: crosses two epoch boundaries
    resumed = iter(StreamSampler(10, batch_size=4, seed=1, start_iter=3))
    assert [next(resumed) for _ in range(3)] == first[3:]
    assert sorted(i for _, i in first[0] + first[1] + first[2][:2]) == list(range(10))  # epoch = permutation
    r0, r1 = (
        iter(StreamSampler(10, batch_size=4, seed=1, rank=0, world_size=2)),
        iter(StreamSampler(10, batch_size=4, seed=1, rank=1, world_size=2)),
    )
    for batch in first[:4]:
        assert next(r0) + next(r1) == batch
    with pytest.raises(ValueError):
        StreamSampler(10, batch_size=3, world_size=2)


def test_seeded_samples_do_not_disturb_global_rng():
    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(2)

    ds = SeededSamples(Noise(), seed=5)
    torch.manual_seed(0)
    a = ds[(7, 1)]
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(ds[(7, 3)], a)  # depends on the stream position only
    assert torch.equal(torch.rand(1), after)
    assert not torch.equal(ds[(8, 1)], a)


class _Toy(nn.Module):
    """A tiny 'detector' returning a loss dict, so the loop is tested apart from Mask R-CNN."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)
        self.poison_at: int | None = None
        self.calls = 0

    def forward(self, images, targets):
        x = torch.stack([im.flatten()[:3] for im in images])
        loss = ((self.lin(x).squeeze(1) - torch.stack([t["y"] for t in targets])) ** 2).mean()
        self.calls += 1
        if self.poison_at is not None and self.calls > self.poison_at:
            loss = loss * float("nan")
        return {"loss_fit": loss, "loss_aux": loss.detach() * 0}


def _toy_data(start: int = 0):
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(64, 3, generator=g)
    ys = xs @ torch.tensor([1.0, -2.0, 0.5])
    for it in range(start, 10_000):
        i = [(2 * it) % 64, (2 * it + 1) % 64]
        yield [xs[j] for j in i], [{"y": ys[j]} for j in i]


def _toy_trainer(tmp_path, model, start_iter=0, max_iter=12, amp=None):
    opt = torch.optim.AdamW([{"params": model.parameters(), "base_lr": 0.05}], lr=0.05)
    lr = H.LRSchedule(warmup_iters=2, milestones=(0.5,))
    hooks = [
        lr,
        H.Checkpoint(tmp_path / "ckpt", period=4),
        H.MetricsWriter(tmp_path / "m.jsonl", 1, lr_hook=lr),
        H.Progress(enabled=False),
    ]
    return Trainer(
        model, opt, _toy_data(start_iter), max_iter=max_iter, amp=amp, clip_grad_norm=1.0, hooks=hooks
    )


def test_trainer_learns_checkpoints_and_logs(tmp_path):
    model = _Toy()
    data = next(iter(_toy_data()))

    def full_loss() -> float:
        with torch.no_grad():
            return sum(float(model([im], [t])["loss_fit"]) for im, t in zip(*data, strict=True))

    before = full_loss()
    trainer = _toy_trainer(tmp_path, model, max_iter=40)
    trainer.train()
    assert full_loss() < 0.5 * before
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == list(range(1, 41))
    assert records[0]["lr"] == pytest.approx(0.05 * 0.001) and records[-1]["lr"] == pytest.approx(0.005)
    state = H.load_checkpoint(tmp_path / "ckpt" / "last.pth")
    assert state["iter"] == 40
    assert torch.equal(state["model"]["lin.weight"], model.lin.weight)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model = _Toy()
    model.poison_at = 6  # the 7th call (iteration 6) returns NaN
    trainer = _toy_trainer(tmp_path, model)
    with pytest.raises(TrainingError, match=r"non-finite loss at iteration 6: loss_fit=nan"):
        trainer.train()
    state = H.load_checkpoint(tmp_path / "ckpt" / "last.pth")
    assert state["iter"] == 4  # the periodic one; nothing was written after the failure
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_resume_matches_uninterrupted_loop(tmp_path):
    torch.manual_seed(0)
    a = _Toy()
    _toy_trainer(tmp_path / "a", a).train()

    class Stop(HookBase):
        def after_step(self):
            if self.trainer.completed == 9:
                raise KeyboardInterrupt  # a kill after the checkpoint at 8

    torch.manual_seed(0)
    b = _Toy()
    t = _toy_trainer(tmp_path / "b", b)
    t.register(Stop())
    with pytest.raises(KeyboardInterrupt):
        t.train()
    c = _Toy()
    state = H.load_checkpoint(tmp_path / "b" / "ckpt" / "last.pth")
    assert state["iter"] == 8
    t2 = _toy_trainer(tmp_path / "b", c, start_iter=8)
    t2.load_state_dict(H.restore_rng(state))
    t2.train()
    assert torch.equal(a.lin.weight, c.lin.weight) and torch.equal(a.lin.bias, c.lin.bias)
    iters = [json.loads(line)["iter"] for line in (tmp_path / "b" / "m.jsonl").read_text().splitlines()]
    assert iters == list(range(1, 13))  # the killed run's line 9 was dropped on resume


def test_bf16_autocast_step_on_a_real_detector():
    """One bf16 autocast step of the ViT Mask R-CNN (CPU autocast here; the same path runs on CUDA)."""
    torch.manual_seed(0)
    model = _tiny_detector()
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [
        {
            "boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]),
            "labels": torch.tensor([1]),
            "masks": torch.zeros(1, 64, 64, dtype=torch.uint8).index_fill_(1, torch.arange(6, 50), 1),
        }
        for _ in images
    ]
    data = iter([(images, targets)] * 2)
    opt = torch.optim.AdamW([{"params": model.parameters(), "base_lr": 1e-4}], lr=1e-4)
    trainer = Trainer(model, opt, data, max_iter=1, amp="bf16")
    before = model.backbone.vit.blocks[0].attn.qkv.weight.detach().clone()
    trainer.train()
    assert set(trainer.last_losses) >= {"loss", "loss_classifier", "loss_mask", "loss_objectness"}
    assert not torch.equal(before, model.backbone.vit.blocks[0].attn.qkv.weight)


def _nan_on_one_rank(rank: int, world: int, port: int, results) -> None:
    """Worker: DDP over gloo; only rank 1's loss turns NaN at its 3rd step."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = _Toy()
        model.poison_at = 2 if rank == 1 else None
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.AdamW([{"params": ddp.parameters(), "base_lr": 0.05}], lr=0.05)
        trainer = Trainer(ddp, opt, _toy_data(), max_iter=6, hooks=[])
        try:
            trainer.train()
            results[rank] = "finished"
        except TrainingError as e:
            results[rank] = f"stopped: {e}"
    finally:
        dist.destroy_process_group()


def test_a_nan_on_one_rank_stops_every_rank(tmp_path):
    """Both ranks stop with a TrainingError. Without agreeing on finiteness, rank 1 raises alone and rank 0
    is left in the next gradient all-reduce: an error from gloo when the peer vanishes, a hang on NCCL."""
    outcome = spawn_with_deadline(_nan_on_one_rank, 2, timeout=90)
    assert set(outcome) == {0, 1}
    assert all(v.startswith("stopped: non-finite loss at iteration 2") for v in outcome.values()), outcome
