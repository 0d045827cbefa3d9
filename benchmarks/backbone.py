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
    VITINIT_DETECTRON2_SRC=/path/to/detectron2 python benchmarks/backbone.py --against detectron2 \
        --strategies window+4global --kernels sdpa,flex --modes train,inference --repeats 2 --size 512

``--against detectron2`` runs the same job with upstream detectron2's ViT (ViTDet's backbone: window 14 with
4 global blocks, decomposed relative positions, its explicit softmax attention) from the source tree in
``$VITINIT_DETECTRON2_SRC`` (imported, never installed), interleaved with ours (A B A B … for ``--repeats``,
each in a fresh process), and prints our time and peak memory as ratios of detectron2's. Kernels: ``sdpa``;
``flex`` (on CPU inference-only, eager unless ``flex-compiled``, which compiles first during warmup).
Mode ``inference`` is the forward alone under ``torch.no_grad``.

``--rope dinov3,eva`` adds the same jobs with 2-D RoPE on q/k (DINOv3's or EVA-02's variant, windowed blocks
on whole-grid coordinates) and prints each as a ratio of the same strategy, kernel and mode without RoPE:
what RoPE costs per kernel.

    python benchmarks/backbone.py --size 512 --strategies window+4global --kernels sdpa,flex \
        --modes inference --rope dinov3,eva
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
KERNELS = ("sdpa", "flex", "flex-compiled")
ROPES = ("dinov3", "eva")
IMPLS = ("vitinit", "detectron2", *(f"vitinit+rope-{r}" for r in ROPES))
MODES = ("train", "inference")
D2_ENV = "VITINIT_DETECTRON2_SRC"


def detectron2_vit(model: str, size: int, global_blocks: tuple[int, ...], ckpt: bool):
    """Upstream detectron2's ViT as ViTDet configures it (``projects/ViTDet/configs``), from ``$D2_ENV``."""
    import types
    from functools import partial

    import torch.nn as nn

    from vitinit.variants import get_variant

    src = os.environ.get(D2_ENV)
    if not src:
        raise SystemExit(f"--against detectron2 needs {D2_ENV} (a detectron2 source tree)")
    sys.path.insert(0, src)
    sys.modules.setdefault("detectron2._C", types.ModuleType("detectron2._C"))  # its ops are not needed
    from detectron2.modeling.backbone.vit import ViT

    v = get_variant(model)
    return ViT(
        img_size=size, patch_size=16, embed_dim=v.embed_dim, depth=v.depth, num_heads=v.num_heads,
        mlp_ratio=v.mlp_hidden_dim / v.embed_dim, qkv_bias=True, drop_path_rate=0.0,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), window_size=14, use_rel_pos=True,
        window_block_indexes=[i for i in range(v.depth) if i not in global_blocks],
        use_act_checkpoint=ckpt, pretrain_img_size=224, pretrain_use_cls_token=True,
    )


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

    Calibrated on 15.1 GB measured here (CPU) for all-global ViT-B at 1024 px; used only to skip a run that
    would not fit, never reported as a measurement.
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
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.impl == "detectron2":
        model = detectron2_vit(args.model, args.size, global_blocks, ckpt)
    else:
        from vitinit.modeling import attention

        attention.FLEX_COMPILE = True if args.kernel == "flex-compiled" else None
        cfg = ViTBackboneConfig.for_variant(
            args.model, img_size=args.size, global_block_indexes=global_blocks, use_act_checkpoint=ckpt,
            out_indices=quarter_block_indexes(depth), attention=args.kernel.split("-")[0],
        )
        if args.impl.startswith("vitinit+rope-"):
            from vitinit.ops.rope import RopeSpec

            variant = args.impl.removeprefix("vitinit+rope-")
            rope = RopeSpec("dinov3", 100.0) if variant == "dinov3" else RopeSpec("eva", 1e4, (16, 16))
            cfg = cfg.replace(rope=rope)
        model = DetectionViT(cfg)
    model = model.to(device).train()
    x = torch.randn(1, 3, args.size, args.size, device=device)
    train = args.mode == "train"

    def maps(out) -> list:
        return list(out.values()) if isinstance(out, dict) else out  # detectron2 returns {name: map}

    def step() -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.set_grad_enabled(train):
            loss = sum(f.float().mean() for f in maps(model(x)))
        if train:
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


def run_strategy(
    args: argparse.Namespace, strategy: str, impl: str = "vitinit", kernel: str = "sdpa", mode: str = "train"
) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", strategy, "--model", args.model, "--size", str(args.size),
        "--iters", str(args.iters), "--warmup", str(args.warmup), "--device", args.device,
        "--impl", impl, "--kernel", kernel, "--mode", mode,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return {"status": f"failed: {last[:80]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_result(runs: list[dict]) -> dict:
    """One row from interleaved repeats: the median of each figure over the runs that succeeded."""
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return runs[-1]
    return {"status": "ok", "threads": ok[0]["threads"],
            **{k: statistics.median(r[k] for r in ok) for k in ("time_s", "cpu_s", "peak_bytes")}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit-b", help="ViT size (default vit-b)")
    p.add_argument("--size", type=int, default=1024, help="square input size in pixels (default 1024)")
    p.add_argument("--iters", type=int, default=2, help="timed iterations per strategy (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help=", ".join(STRATEGIES))
    p.add_argument("--kernels", default="sdpa", help="attention kernels: " + ", ".join(KERNELS))
    p.add_argument("--modes", default="train", help="train (forward + backward) and/or inference")
    p.add_argument("--against", choices=["detectron2"], help="also run detectron2's ViT; ratios against it")
    p.add_argument("--rope", default="", help="also with RoPE: " + ", ".join(ROPES) + " (ratios vs none)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds of every job (median)")
    p.add_argument("--quick", action="store_true", help="256 px, 1 iteration, no warmup")
    p.add_argument("--worker", choices=list(STRATEGIES), help=argparse.SUPPRESS)
    p.add_argument("--impl", default="vitinit", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--kernel", default="sdpa", choices=KERNELS, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="train", choices=MODES, help=argparse.SUPPRESS)
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
        console = Console(width=150)  # logs and pipes: keep the table on one line per row
    wanted = [s.strip() for s in args.strategies.split(",") if s.strip()]
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    ropes = [r.strip() for r in args.rope.split(",") if r.strip()]
    for name, got, allowed in (("strategies", wanted, STRATEGIES), ("kernels", kernels, KERNELS),
                               ("modes", modes, MODES), ("rope variants", ropes, ROPES)):
        unknown = [x for x in got if x not in allowed]
        if unknown:
            p.error(f"unknown {name} {unknown}; choose from {list(allowed)}")
    if args.against and not os.environ.get(D2_ENV):
        p.error(f"--against detectron2 needs {D2_ENV} set to a detectron2 source tree")
    if BASELINE not in wanted and not args.against:
        wanted.insert(0, BASELINE)  # ratios need the baseline measured in the same run
    # Jobs: (impl, strategy, kernel, mode); detectron2's ViT has one kernel (its explicit softmax).
    jobs = []
    for strategy in wanted:
        for mode in modes:
            if args.against:
                jobs.append(("detectron2", strategy, "-", mode))
            jobs += [("vitinit", strategy, k, mode) for k in kernels]
            jobs += [(f"vitinit+rope-{r}", strategy, k, mode) for r in ropes for k in kernels]
    if BASELINE in wanted and not args.against and "sdpa" not in kernels:
        jobs += [("vitinit", BASELINE, "sdpa", m) for m in modes]
    runs: dict[tuple, list[dict]] = {job: [] for job in jobs}
    available = _available_bytes() if args.device == "cpu" else None
    for _ in range(max(1, args.repeats)):
        for job in jobs:  # interleaved: A B A B … so drifting machine load hits every job alike
            impl, strategy, kernel, mode = job
            need = estimate_attention_bytes(args.model, args.size, strategy) if mode == "train" else 0
            if args.device == "cpu" and kernel.startswith("flex") and mode == "train":
                runs[job].append({"status": "n/a (CPU)"})  # torch's FlexAttention: no CPU backward
                continue
            if available is not None and need > 0.7 * available:
                gib = f"~{need / 2**30:.0f} GiB, {available / 2**30:.0f} free"
                runs[job].append({"status": f"skipped: needs {gib}"})
                continue
            with console.status(f"{impl} {strategy} {kernel} {mode}"):
                r = run_strategy(args, strategy, impl, "sdpa" if kernel == "-" else kernel, mode)
            runs[job].append(r)
            console.log(f"{impl} {strategy} {kernel} {mode}: " + (
                f"{r['time_s']:.2f} s, {r['peak_bytes'] / 2**30:.2f} GiB" if r["status"] == "ok"
                else r["status"]))
    results = {job: _median_result(rs) for job, rs in runs.items()}

    def baseline(job: tuple) -> dict:
        impl, strategy, kernel, mode = job
        key = ("detectron2", strategy, "-", mode) if args.against else ("vitinit", BASELINE, "sdpa", mode)
        if impl.startswith("vitinit+rope-"):  # RoPE's cost: against the same job without it
            key = ("vitinit", strategy, kernel, mode)
        return results.get(key, {"status": "missing"})

    against = (
        "detectron2's ViT, same strategy and mode" if args.against else f"'{STRATEGIES[BASELINE][0]}' sdpa"
    )
    threads = {r.get("threads") for r in results.values() if r["status"] == "ok"}
    table = Table(
        title=f"ViT-{args.model.split('-')[-1].upper()} backbone, batch 1, {args.size}×{args.size}, "
        f"{args.device}, {'/'.join(map(str, sorted(threads)))} thread(s)",
        caption=f"median of {args.iters} after {args.warmup} warmup, {max(1, args.repeats)} interleaved "
        f"round(s), each in a fresh process; memory = peak RSS (CPU) / max allocated (CUDA) above the model "
        f"at rest; × = ratio against {against}" + ("; RoPE rows: against the same row without RoPE" if ropes
                                                   else ""),
    )
    for col in ("backbone", "blocks", "kernel", "mode"):
        table.add_column(col, no_wrap=True)
    for col in ("time", "×", "CPU time", "×", "peak mem", "×"):
        table.add_column(col, justify="right", no_wrap=True)
    for job, r in results.items():
        impl, strategy, kernel, mode = job
        head = (impl, strategy, kernel, mode)
        if r["status"] != "ok":
            table.add_row(*head, r["status"], *[""] * 5)
            continue
        base = baseline(job)
        ratio = {k: f"{r[k] / base[k]:.2f}" if base["status"] == "ok" and base[k] else "n/a"
                 for k in ("time_s", "cpu_s", "peak_bytes")}
        table.add_row(
            *head, f"{r['time_s']:.2f} s", ratio["time_s"], f"{r['cpu_s']:.2f} s", ratio["cpu_s"],
            f"{r['peak_bytes'] / 2**30:.2f} GiB", ratio["peak_bytes"],
        )
    console.print(table)


if __name__ == "__main__":
    main()
