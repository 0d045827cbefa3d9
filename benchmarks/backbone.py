"""Forward + backward time and peak memory of the paper's ViT backbone for its attention strategies.

The paper's memory/time ablation (Li et al. 2021): all blocks windowed; windowed + 4 global blocks (its
choice, the baseline here); all blocks global with activation checkpointing; all global without (it ran out of
memory there).
Batch 1, one square image, loss = mean of the returned maps (the 4 group-final blocks, as the adapter reads).

Each strategy runs in its own subprocess so peak memory is its own: on CPU the peak resident set size
(``ru_maxrss``) above the size right before the first forward; on CUDA ``torch.cuda.max_memory_allocated``
above the memory allocated before the first forward (weights, input). Times are medians over ``--iters``:
wall time, and on CPU also the process's CPU time (all threads), steadier than wall time on a shared machine.

    python benchmarks/backbone.py                 # ViT-B at 1024 px (CPU: several minutes per strategy)
    python benchmarks/backbone.py --size 512      # the same, 4× fewer tokens
    python benchmarks/backbone.py --quick         # 256 px, one timed iteration, no warmup (smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

STRATEGIES = {
    # name: (description, global blocks: "none" | "quarter" | "all", activation checkpointing)
    "window": ("all window", "none", False),
    "window+4global": ("window + 4 global (paper)", "quarter", False),
    "global+ckpt": ("all global + act. ckpt", "all", True),
    "global": ("all global", "all", False),
}
BASELINE = "window+4global"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def estimate_attention_bytes(model: str, size: int, strategy: str) -> int:
    """Rough bytes kept for backward by global attention: ~2 (heads, N, N) fp32 tensors per global block.

    Calibrated on the measured 15.1 GB of all-global ViT-B at 1024 px (performance.md); used only to skip a
    run that would not fit, never reported as a measurement.
    """
    from vitinit.variants import get_variant

    v = get_variant(model)
    n = (size // v.patch_size) ** 2
    _, which, ckpt = STRATEGIES[strategy]
    blocks = {"none": 0, "quarter": min(4, v.depth), "all": v.depth}[which]
    if ckpt:
        blocks = min(blocks, 1)  # one block's activations are recomputed at a time
    return 2 * blocks * v.num_heads * n * n * 4


def run_worker(args: argparse.Namespace) -> dict:
    """One strategy, in this process: returns times and peak memory as a dict."""
    import torch

    from vitinit.modeling.vit import DetectionViT, ViTBackboneConfig, quarter_block_indexes
    from vitinit.variants import get_variant

    _, which, ckpt = STRATEGIES[args.worker]
    depth = get_variant(args.model).depth
    global_blocks = {"none": (), "quarter": quarter_block_indexes(depth), "all": tuple(range(depth))}[which]
    cfg = ViTBackboneConfig.for_variant(
        args.model, img_size=args.size, global_block_indexes=global_blocks, use_act_checkpoint=ckpt,
        out_indices=quarter_block_indexes(depth),
    )
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = DetectionViT(cfg).to(device).train()
    x = torch.randn(1, 3, args.size, args.size, device=device)

    def step() -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        loss = sum(f.float().mean() for f in model(x))
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, time.process_time() - c0

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
    try:
        for _ in range(args.warmup):
            step()
        times, cpu_times = zip(*[step() for _ in range(args.iters)], strict=True)
    except torch.OutOfMemoryError:
        return {"status": "out of memory"}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"status": "ok", "time_s": statistics.median(times), "cpu_s": statistics.median(cpu_times),
            "threads": torch.get_num_threads(), "peak_bytes": peak}


def run_strategy(args: argparse.Namespace, strategy: str) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", strategy, "--model", args.model, "--size", str(args.size),
        "--iters", str(args.iters), "--warmup", str(args.warmup), "--device", args.device,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return {"status": f"failed: {last[:80]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit-b", help="ViT size (default vit-b)")
    p.add_argument("--size", type=int, default=1024, help="square input size in pixels (default 1024)")
    p.add_argument("--iters", type=int, default=2, help="timed iterations per strategy (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help=", ".join(STRATEGIES))
    p.add_argument("--quick", action="store_true", help="256 px, 1 iteration, no warmup")
    p.add_argument("--worker", choices=list(STRATEGIES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.iters, args.warmup = 256, 1, 0
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        print(json.dumps(run_worker(args)))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=110)  # logs and pipes: keep the table on one line per row
    wanted = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STRATEGIES]
    if unknown:
        p.error(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    if BASELINE not in wanted:
        wanted.insert(0, BASELINE)  # ratios need the baseline measured in the same run
    results = {}
    available = _available_bytes() if args.device == "cpu" else None
    for strategy in wanted:
        need = estimate_attention_bytes(args.model, args.size, strategy)
        if available is not None and need > 0.7 * available:
            gib = f"~{need / 2**30:.0f} GiB, {available / 2**30:.0f} free"
            results[strategy] = {"status": f"skipped: needs {gib}"}
            continue
        what = f"{STRATEGIES[strategy][0]}: {args.warmup} warmup + {args.iters} timed iterations"
        with console.status(what):
            results[strategy] = run_strategy(args, strategy)
        r = results[strategy]
        console.log(f"{strategy}: " + (f"{r['time_s']:.2f} s, {r['peak_bytes'] / 2**30:.2f} GiB"
                                       if r["status"] == "ok" else r["status"]))

    base = results[BASELINE]
    table = Table(
        title=f"ViT-{args.model.split('-')[-1].upper()} backbone, forward + backward, batch 1, "
        f"{args.size}×{args.size}, {args.device}",
        caption=f"median of {args.iters} after {args.warmup} warmup; memory = peak above the model at rest; "
        f"ratios against '{STRATEGIES[BASELINE][0]}'",
    )
    table.add_column("strategy", no_wrap=True)
    for col in ("time", "×", "CPU time", "×", "peak memory", "×"):
        table.add_column(col, justify="right", no_wrap=True)
    for strategy, r in results.items():
        name = STRATEGIES[strategy][0]
        if r["status"] != "ok":
            table.add_row(name, r["status"], *[""] * 5)
            continue
        ratio = {k: f"{r[k] / base[k]:.2f}" if base["status"] == "ok" else "n/a"
                 for k in ("time_s", "cpu_s", "peak_bytes")}
        table.add_row(
            name, f"{r['time_s']:.2f} s", ratio["time_s"], f"{r['cpu_s']:.1f} s", ratio["cpu_s"],
            f"{r['peak_bytes'] / 2**30:.2f} GiB", ratio["peak_bytes"],
        )
    console.print(table)


if __name__ == "__main__":
    main()
