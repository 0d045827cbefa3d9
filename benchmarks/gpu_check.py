"""One GPU check: where vitinit stands against detectron2's ViTDet on one GPU, in one table (~8 minutes).

    python benchmarks/gpu_check.py                 # CUDA, ViT-B at 1024 px, bf16
    python benchmarks/gpu_check.py --model vit-l   # ViT-L (detectron2: 0.603 s/iter, 20.9 GB)
    python benchmarks/gpu_check.py --smoke         # CPU, tiny sizes, seconds: keeps this script from rotting

Rows:
1. Backbone forward + backward, batch 1: time and peak memory per attention strategy (window + 4 global,
   all window, all global + activation checkpointing) × kernel (sdpa, flex); ratios against window + 4
   global with sdpa. On CPU flex has no backward (``n/a``).
2. Mask R-CNN training through vitinit's ``Trainer`` (bf16 autocast, AdamW, synthetic 1024 px targets) at 1
   and 2 images per GPU: s/iter, images/s, peak memory, with detectron2's published ViTDet figures and the
   ratio beside (``projects/ViTDet/README.md``: ViT-B 0.314 s/iter and 10.9 GB per A100 at 1 image per GPU;
   ViT-L 0.603 s, 20.9 GB; detectron2's ``max_mem`` is ``torch.cuda.max_memory_allocated`` / 1024², so
   its GB are compared as GiB).
   Kernels: sdpa (what ``model.attention: auto`` picks until this table says otherwise) and flex on CUDA;
   sdpa alone on CPU.
3. Evaluation: images/s of the eval-mode forward (batch 4) plus the COCO result encoding (RLE masks), in
   float32 (``eval.amp: none``, the default, as detectron2's ``do_test``) and, on CUDA, under bf16 autocast.

Peak memory is ``torch.cuda.max_memory_allocated`` since the last reset (weights and optimizer state
included, as detectron2's ``max_mem``); on CPU it is not measured in-process (``-``). Everything runs in one
process, one configuration after another, freeing memory between them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import time

import torch

from vitinit.engine.optim import build_optimizer
from vitinit.engine.trainer import HookBase, Trainer
from vitinit.evaluation.coco import instances_to_coco
from vitinit.modeling.mask_rcnn import MaskRCNNConfig, build_mask_rcnn
from vitinit.modeling.vit import DetectionViT, ViTBackboneConfig, quarter_block_indexes

DETECTRON2 = {"vit-b": (0.314, 10.9), "vit-l": (0.603, 20.9)}  # s/iter, GB at 1 image per A100
STRATEGIES = {"window+4global": "quarter", "window": "none", "global+ckpt": "all"}
KERNELS = ("sdpa", "flex")


def backbone_config(args: argparse.Namespace, strategy: str, kernel: str) -> ViTBackboneConfig:
    tiny = dict(embed_dim=32, depth=4, num_heads=2, mlp_hidden_dim=64, window_size=2,
                global_block_indexes=quarter_block_indexes(4))
    cfg = ViTBackboneConfig.for_variant(args.model, img_size=args.size, attention=kernel,
                                        **(tiny if args.smoke else {}))
    which = STRATEGIES[strategy]
    blocks = {"none": (), "quarter": quarter_block_indexes(cfg.depth), "all": tuple(range(cfg.depth))}[which]
    return cfg.replace(global_block_indexes=blocks, use_act_checkpoint=which == "all",
                       out_indices=quarter_block_indexes(cfg.depth))


class Clock:
    """Synchronized wall time and peak memory on ``device``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def bench_backbone(args, device, clock, strategy: str, kernel: str) -> dict:
    if device.type == "cpu" and kernel == "flex":
        return {"status": "n/a: no flex backward on CPU"}
    clock.reset()
    torch.manual_seed(0)
    model = DetectionViT(backbone_config(args, strategy, kernel)).to(device).train()
    x = torch.randn(1, 3, args.size, args.size, device=device)
    times = []
    try:
        for i in range(args.warmup + args.iters):
            clock.sync()
            t0 = time.perf_counter()
            with autocast(device):
                loss = sum(f.float().mean() for f in model(x))
            loss.backward()
            model.zero_grad(set_to_none=True)
            clock.sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        return {"status": "out of memory"}
    finally:
        del model
    times.sort()
    return {"status": "ok", "s": times[len(times) // 2], "peak": clock.peak_gib()}


def synthetic_batch(n: int, size: int, device: torch.device, num_classes: int):
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(n):
        k = 8
        xy = torch.rand(k, 2, generator=g) * size * 0.7
        wh = size * (0.05 + torch.rand(k, 2, generator=g) * 0.25)
        boxes = torch.cat([xy, xy + wh], 1).clamp(max=size - 1)
        masks = torch.zeros(k, size, size, dtype=torch.uint8)
        for j, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[j, y1:y2, x1:x2] = 1
        images.append(torch.rand(3, size, size, generator=g).to(device))
        targets.append({"boxes": boxes.to(device), "masks": masks.to(device),
                        "labels": torch.randint(1, num_classes + 1, (k,), generator=g).to(device)})
    return images, targets


class StepTimer(HookBase):
    """Synchronized time of each iteration after the warmup ones."""

    def __init__(self, clock: Clock, warmup: int) -> None:
        self.clock, self.warmup, self.times = clock, warmup, []

    def before_step(self) -> None:
        self.clock.sync()
        self.t0 = time.perf_counter()

    def after_step(self) -> None:
        self.clock.sync()
        if self.trainer.iter >= self.warmup:
            self.times.append(time.perf_counter() - self.t0)


def detector(args, kernel: str) -> torch.nn.Module:
    bb = backbone_config(args, "window+4global", kernel).replace(drop_path_rate=0.1, out_indices=None)
    extra = dict(fpn_channels=32, box_head_fc=64, box_batch_size_per_image=64) if args.smoke else {}
    cfg = MaskRCNNConfig(backbone=bb, num_classes=80, norm="BN", min_size=args.size, max_size=args.size,
                         **extra)
    return build_mask_rcnn(cfg)


def bench_train(args, device, clock, images_per_gpu: int, kernel: str) -> dict:
    clock.reset()
    torch.manual_seed(0)
    model = detector(args, kernel).to(device).train()
    optimizer = build_optimizer(model, lr=8e-5, weight_decay=0.1)
    batch = synthetic_batch(images_per_gpu, args.size, device, 80)
    timer = StepTimer(clock, args.warmup)
    trainer = Trainer(model, optimizer, iter(lambda: batch, None), max_iter=args.warmup + args.iters,
                      device=device, amp="bf16" if device.type == "cuda" else None, hooks=[timer])
    try:
        trainer.train()
    except torch.OutOfMemoryError:
        return {"status": "out of memory"}
    finally:
        del trainer, model, optimizer
    s = sorted(timer.times)[len(timer.times) // 2]
    return {"status": "ok", "s": s, "ips": images_per_gpu / s, "peak": clock.peak_gib()}


def bench_eval(args, device, clock, precision: str) -> dict:
    clock.reset()
    torch.manual_seed(0)
    model = detector(args, "auto").to(device).eval()
    cast = autocast(device) if precision == "bf16" else contextlib.nullcontext()
    images, _ = synthetic_batch(4, args.size, device, 80)
    label_to_category = {i: i for i in range(1, 81)}
    times = []
    with torch.no_grad():
        for i in range(args.warmup + args.iters):
            clock.sync()
            t0 = time.perf_counter()
            with cast:
                outputs = model(images)
            for j, out in enumerate(outputs):
                instances_to_coco(j, out, label_to_category)
            clock.sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    del model
    s = sorted(times)[len(times) // 2]
    return {"status": "ok", "ips": len(images) / s, "peak": clock.peak_gib()}


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> list[list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit-b", choices=list(DETECTRON2))
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations (flex compiles in the first)")
    p.add_argument("--smoke", action="store_true", help="CPU, a 4-block 32-wide ViT at 64 px, 1+1 iterations")
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.iters, args.warmup = 64, 1, 1
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_check.py needs a CUDA GPU (or --smoke); nothing was measured")
    else:
        device = torch.device("cuda")
    clock = Clock(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke)"
    print(f"{name}, torch {torch.__version__}, {args.model} at {args.size} px, "
          f"{args.warmup} warmup + {args.iters} timed iterations (median)", flush=True)

    rows = [["what", "config", "s/iter", "images/s", "peak GiB", "× ref time", "× ref mem", "ref"]]
    base = None
    for strategy in STRATEGIES:
        for kernel in KERNELS:
            r = bench_backbone(args, device, clock, strategy, kernel)
            if strategy == "window+4global" and kernel == "sdpa":
                base = r if r["status"] == "ok" else None
            what = ["backbone fwd+bwd", f"{strategy} {kernel}"]
            if r["status"] != "ok":
                rows.append([*what, r["status"], "", "", "", "", ""])
                continue
            rel_t = fmt(r["s"] / base["s"], ".2f") if base else "-"
            rel_m = fmt(r["peak"] / base["peak"], ".2f") if base and r["peak"] and base["peak"] else "-"
            rows.append([*what, fmt(r["s"], ".3f"), fmt(1 / r["s"], ".2f"), fmt(r["peak"], ".2f"),
                         rel_t, rel_m, "window+4global sdpa"])
            print(" | ".join(rows[-1]), flush=True)
    ref_s, ref_gb = DETECTRON2[args.model]
    # auto = sdpa until this row says flex is better on the GPU; on CPU flex cannot train.
    for kernel in ("sdpa", "flex") if device.type == "cuda" else ("sdpa",):
        for ipg in (1, 2):
            r = bench_train(args, device, clock, ipg, kernel)
            precision = " bf16" if device.type == "cuda" else ""
            what = ["Mask R-CNN train", f"{ipg} img/GPU {kernel}{precision}"]
            if r["status"] != "ok":
                rows.append([*what, r["status"], "", "", "", "", ""])
                continue
            ref = ipg == 1
            rows.append([
                *what, fmt(r["s"], ".3f"), fmt(r["ips"], ".2f"), fmt(r["peak"], ".2f"),
                fmt(r["s"] / ref_s, ".2f") if ref else "-",
                fmt(r["peak"] / ref_gb, ".2f") if ref and r["peak"] else "-",
                f"detectron2 {ref_s} s, {ref_gb} GB" if ref else "",
            ])
            print(" | ".join(rows[-1]), flush=True)
    for precision in ("fp32", "bf16") if device.type == "cuda" else ("fp32",):
        r = bench_eval(args, device, clock, precision)
        rows.append(["evaluation", f"batch 4 {precision}, fwd + COCO encoding", "-", fmt(r["ips"], ".2f"),
                     fmt(r["peak"], ".2f"), "", "", ""])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return rows


if __name__ == "__main__":
    main()
