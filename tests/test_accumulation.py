"""Gradient accumulation: the global batch cut into micro-batches gives the update of one big batch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from _spawn import spawn_with_deadline

from vitinit.engine import hooks as H
from vitinit.engine.accumulation import GB, accumulation_plan, bytes_per_image, describe_plan
from vitinit.engine.sampler import StreamSampler
from vitinit.engine.trainer import HookBase, Trainer
from vitinit.errors import ConfigError

N = 64
_G = torch.Generator().manual_seed(0)
XS = torch.randn(N, 4, 6, 6, generator=_G)
YS = XS.mean((1, 2, 3)) * 3 - XS[:, 0].mean((1, 2))


class Regressor(nn.Module):
    """Conv → (BN) → pooled linear; loss = mean over the micro-batch's images, as detection losses are."""

    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.head = nn.Linear(8, 1)

    def forward(self, images, targets):
        x = torch.stack(images)
        pred = self.head(self.bn(self.conv(x)).relu().mean((2, 3))).squeeze(1)
        y = torch.stack([t["y"] for t in targets])
        return {"loss_fit": ((pred - y) ** 2).mean(), "loss_l1": (pred - y).abs().mean() * 0.1}


def stream(batch: int, steps: int = 1, rank: int = 0, world: int = 1, start_iter: int = 0):
    """The training stream a run builds: StreamSampler micro-batches over (XS, YS)."""
    sampler = StreamSampler(
        N, batch_size=batch, seed=3, start_iter=start_iter, rank=rank, world_size=world,
        accumulation_steps=steps,
    )
    for keys in sampler:
        idx = [i for _, i in keys]
        yield [XS[i] for i in idx], [{"y": YS[i]} for i in idx]


def make_trainer(model, steps, *, max_iter=4, start_iter=0, hooks=(), world=1, rank=0, batch=4, clip=0.05):
    opt = torch.optim.AdamW([{"params": model.parameters(), "base_lr": 0.01}], lr=0.01, weight_decay=0.1)
    lr = H.LRSchedule(warmup_iters=2, milestones=(0.5,))
    return Trainer(
        model, opt, stream(batch, steps, rank, world, start_iter), max_iter=max_iter,
        clip_grad_norm=clip, hooks=[lr, *hooks], accumulation_steps=steps,
    )


def assert_same_weights(a: nn.Module, b: nn.Module, atol=1e-6) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, atol=atol, rtol=1e-5, msg=name)


def test_accumulation_plan():
    assert accumulation_plan(64, 8) == (2, 4)  # memory unknown: 2 images per GPU
    assert accumulation_plan(64, 1, 1) == (1, 64)
    assert accumulation_plan(64, 64) == (1, 1)
    assert accumulation_plan(64, 8, gpu_memory=80 * 2**30) == (4, 2)  # 80 GB: 6 would fit, 4 divides 8
    assert accumulation_plan(64, 8, gpu_memory=16 * 2**30) == (1, 8)
    assert accumulation_plan(6, 2, gpu_memory=40 * 2**30) == (3, 1)
    with pytest.raises(ConfigError, match="not divisible by 3 processes"):
        accumulation_plan(64, 3)
    with pytest.raises(ConfigError, match="images_per_gpu 3 does not divide the 8 images"):
        accumulation_plan(64, 8, 3)


def test_sampler_micro_batches_cover_each_global_batch():
    full = StreamSampler(N, batch_size=8, seed=1)
    parts = [
        iter(StreamSampler(N, batch_size=8, seed=1, rank=r, world_size=2, accumulation_steps=2))
        for r in range(2)
    ]
    full_it = iter(full)
    for _ in range(9):  # past an epoch boundary (64 = 8 steps of 8)
        want = next(full_it)
        got = [k for _ in range(2) for part in parts for k in next(part)]
        assert got == want  # the same 8 positions, in stream order
    resumed = iter(StreamSampler(N, batch_size=8, seed=1, rank=1, world_size=2, accumulation_steps=2,
                                 start_iter=3))
    again = iter(StreamSampler(N, batch_size=8, seed=1, rank=1, world_size=2, accumulation_steps=2))
    for _ in range(6):
        next(again)
    assert next(resumed) == next(again)


def test_two_micro_batches_of_two_equal_one_batch_of_four():
    """BN-free model: AdamW with weight decay, warmup, an active clip (of the accumulated gradient)."""
    torch.manual_seed(0)
    big, acc = Regressor(), Regressor()
    acc.load_state_dict(big.state_dict())
    t_big, t_acc = make_trainer(big, 1), make_trainer(acc, 2)
    t_big.train()
    t_acc.train()
    assert t_acc.completed == t_big.completed == 4
    assert t_acc.last_grad_norm == pytest.approx(t_big.last_grad_norm, rel=1e-5)
    assert t_big.last_grad_norm > 0.05  # the clip did act
    assert t_acc.last_losses == pytest.approx(t_big.last_losses, rel=1e-5)
    assert_same_weights(big, acc)


def test_batchnorm_normalizes_per_micro_batch():
    """Documented choice: BN uses each micro-batch's statistics and its running stats move per micro-batch.

    The accumulated step equals the mean of the micro-batches' gradients computed separately in train mode,
    and differs from one 4-image BN batch.
    """
    torch.manual_seed(0)
    model = Regressor(bn=True)
    ref = copy.deepcopy(model)
    big = copy.deepcopy(model)
    trainer = make_trainer(model, 2, max_iter=1, clip=None)
    trainer.train()

    images, targets = next(stream(4))
    ref.train()
    grads = [torch.zeros_like(p) for p in ref.parameters()]
    for half in (slice(0, 2), slice(2, 4)):
        ref.zero_grad()
        sum(ref(images[half], targets[half]).values()).backward()
        grads = [g + p.grad / 2 for g, p in zip(grads, ref.parameters(), strict=True)]
    opt = torch.optim.AdamW(ref.parameters(), lr=trainer.optimizer.param_groups[0]["lr"], weight_decay=0.1)
    for p, g in zip(ref.parameters(), grads, strict=True):
        p.grad = g
    opt.step()
    assert_same_weights(model, ref)
    # Running statistics took one momentum step per micro-batch, as the two separate forwards did.
    assert model.bn.num_batches_tracked == 2
    torch.testing.assert_close(model.bn.running_mean, ref.bn.running_mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.bn.running_var, ref.bn.running_var, atol=1e-6, rtol=0)

    make_trainer(big, 1, max_iter=1, clip=None).train()
    assert big.bn.num_batches_tracked == 1
    diff = max((a - b).abs().max() for a, b in zip(big.parameters(), model.parameters(), strict=True))
    assert diff > 1e-7  # per-micro-batch statistics are not the 4-image batch's


def test_resume_with_accumulation_matches_uninterrupted(tmp_path):
    torch.manual_seed(0)
    a, b = Regressor(), Regressor()
    b.load_state_dict(a.state_dict())
    make_trainer(a, 2, max_iter=6).train()

    class Stop(HookBase):
        def after_step(self):
            if self.trainer.completed == 3:
                raise KeyboardInterrupt

    ckpt = H.Checkpoint(tmp_path / "ckpt", period=2)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(b, 2, max_iter=6, hooks=[ckpt, Stop()]).train()
    state = H.load_checkpoint(tmp_path / "ckpt" / "last.pth")
    assert state["iter"] == 2  # iterations count optimizer steps, not micro-batches
    c = Regressor()
    t = make_trainer(c, 2, max_iter=6, start_iter=2, hooks=[H.Checkpoint(tmp_path / "ckpt", period=2)])
    t.load_state_dict(H.restore_rng(state))
    t.train()
    assert_same_weights(a, c, atol=0)


def _ddp_worker(rank: int, world: int, port: int, results) -> None:
    """Worker: DDP over gloo, 1 image per rank × 2 accumulation steps = global batch 4, twice: counting the
    gradient all-reduces, then with bf16 gradient compression."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    from vitinit.engine.distributed import register_grad_compression

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for compression in ("none", "bf16"):
            torch.manual_seed(0)
            model = Regressor()
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            calls = []
            trainer = make_trainer(ddp, 2, world=world, rank=rank)
            if compression == "none":

                def counting_allreduce(state, bucket, calls=calls, trainer=trainer):
                    calls.append(trainer.iter)
                    return default_hooks.allreduce_hook(state, bucket)

                ddp.register_comm_hook(state=None, hook=counting_allreduce)
            else:
                register_grad_compression(ddp, compression)
            trainer.train()
            results[(rank, compression)] = (calls, {k: v.clone() for k, v in model.state_dict().items()})
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~25 s on the 2-core CI machine
def test_ddp_no_sync_skips_all_reduce_and_matches_one_process():
    """2 gloo processes × 1 image × 2 steps: one gradient all-reduce per optimizer step (on the second
    micro-batch only), and the weights of one process training on the same 4-image global batches; with
    bf16 gradient compression the ranks still agree exactly and stay within bf16 rounding of fp32."""
    out = spawn_with_deadline(_ddp_worker, 2, timeout=150)
    assert len(out) == 4
    torch.manual_seed(0)
    single = Regressor()
    make_trainer(single, 1).train()
    for rank in (0, 1):
        calls, state = out[(rank, "none")]
        # One bucket (a tiny model) → one hook call per iteration, none on the non-stepping micro-batch.
        assert calls == [0, 1, 2, 3], (rank, calls)
        for k, v in single.state_dict().items():
            torch.testing.assert_close(state[k], v, atol=1e-6, rtol=1e-5, msg=k)
    for k, v in single.state_dict().items():
        bf0, bf1 = out[(0, "bf16")][1][k], out[(1, "bf16")][1][k]
        torch.testing.assert_close(bf0, bf1, atol=0, rtol=0)  # every rank applies the same averaged gradient
        torch.testing.assert_close(bf0, v, atol=2e-2, rtol=0, msg=k)  # bf16 rounding of the gradients


def test_grad_compression_option_is_checked():
    from vitinit.engine.distributed import register_grad_compression

    register_grad_compression(Regressor(), "bf16")  # one process, no DDP: nothing to compress
    with pytest.raises(ConfigError, match="grad_compression must be one of"):
        register_grad_compression(Regressor(), "int8")


def test_memory_per_image_follows_the_model_size():
    """ViTDet's published per-image memory for each size (not ViT-B's for all) picks the micro-batch."""
    from vitinit.recipes import load_recipe, to_plain

    from vitinit.bench.plan import batch_plan, memory_per_image

    assert bytes_per_image("vit-b")[0] == int(10.9e9)
    assert bytes_per_image("vit-l")[0] == int(20.9e9)
    assert bytes_per_image("vit-h")[0] == int(31.5e9)
    assert "UNCONFIRMED" in bytes_per_image("vit-b", "resnet101")[1]
    assert "UNCONFIRMED" in bytes_per_image("custom")[1]
    vitb, vitl = (to_plain(load_recipe(n)) for n in ("mae-vitb", "mae-vitl"))
    assert memory_per_image(vitl)[0] == int(20.9e9)
    eighty = 80 * 10**9
    assert batch_plan(vitb, 8, eighty) == (4, 2)  # 6 ViT-B images fit 72 GB; 4 divides 8
    assert batch_plan(vitl, 8, eighty) == (2, 4)  # ViT-L: 3 fit, 2 divides 8 (ViT-B's figure gave 4: OOM)
    assert batch_plan(vitl, 8, 40 * 10**9) == (1, 8)


def test_describe_plan_says_how_it_was_chosen():
    assert describe_plan(64, 8, None, 80 * GB, bytes_per_image=int(20.9e9), source="vit-l") == (
        "8 GPUs × 2 images × 4 steps = 64: 80 GB fits 3 images (vit-l, 90% usable); 2 divides 8"
    )
    assert describe_plan(64, 8, None, 16 * GB, bytes_per_image=int(20.9e9), source="vit-l").startswith(
        "8 GPUs × 1 image × 8 steps = 64: 16 GB fits no image: 1, may run out of memory"
    )
    assert describe_plan(64, 8, None, None).endswith("GPU memory unknown, default 2 images; 2 divides 8")
    assert describe_plan(64, 8, 1, None) == "8 GPUs × 1 image × 8 steps = 64: train.images_per_gpu=1"
