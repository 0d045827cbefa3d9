"""Training-iteration throughput of ViT-B Mask R-CNN at 1024 px, batch 2, bf16, for the paper's 3 strategies.

    python benchmarks/gpu_train.py [--iters 10] [--warmup 3] [--batch 2]

Strategies (the paper's memory/time ablation): all windowed; windowed + 4 global (the paper's choice,
the baseline of the ratios); all global with activation checkpointing. Each runs in the same process on
the same GPU with random weights and synthetic 1024×1024 targets, and reports images/s, peak memory and
the ratio to the baseline. Needs CUDA; exits with a message otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from vitinit.engine.optim import build_optimizer
from vitinit.modeling.mask_rcnn import MaskRCNNConfig, build_mask_rcnn
from vitinit.modeling.vit import ViTBackboneConfig, quarter_block_indexes

STRATEGIES = {
    "window": dict(global_block_indexes=()),
    "window+4global": dict(global_block_indexes=quarter_block_indexes(12)),
    "global+ckpt": dict(global_block_indexes=tuple(range(12)), use_act_checkpoint=True),
}


def batch(n: int, size: int, device: torch.device) -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(n):
        boxes = torch.rand(8, 2, generator=g) * (size - 300)
        boxes = torch.cat([boxes, boxes + 50 + torch.rand(8, 2, generator=g) * 250], 1)
        masks = torch.zeros(8, size, size, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        images.append(torch.rand(3, size, size, generator=g).to(device))
        targets.append(
            {
                "boxes": boxes.to(device),
                "labels": torch.randint(1, 81, (8,), generator=g).to(device),
                "masks": masks.to(device),
            }
        )
    return images, targets


def measure(name: str, args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    torch.manual_seed(0)
    bb = ViTBackboneConfig.for_variant("vit-b", drop_path_rate=0.1, **STRATEGIES[name])
    model = build_mask_rcnn(MaskRCNNConfig(backbone=bb, num_classes=80, norm="BN")).to(device).train()
    opt = build_optimizer(model, lr=8e-5, weight_decay=0.1)
    images, targets = batch(args.batch, 1024, device)
    torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup + args.iters):
        if i == args.warmup:
            torch.cuda.synchronize(device)
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses = model(images, targets)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    del model, opt
    torch.cuda.empty_cache()
    return args.iters * args.batch / seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu_train.py needs a CUDA GPU (none is visible); nothing was measured")
    device = torch.device("cuda")
    print(
        f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, batch {args.batch}, bf16, 1024 px"
    )
    rows = {name: measure(name, args, device) for name in STRATEGIES}
    base = rows["window+4global"][0]
    print(f"{'strategy':<16} {'images/s':>9} {'peak GiB':>9} {'speed vs 4global':>17}")
    for name, (ips, peak) in rows.items():
        print(f"{name:<16} {ips:>9.2f} {peak:>9.2f} {ips / base:>16.2f}x")


if __name__ == "__main__":
    main()
