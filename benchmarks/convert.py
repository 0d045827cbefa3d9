"""Time and peak memory of a checkpoint conversion: streaming (vitinit) vs the naive pipeline vs a file copy
vs one sha256 pass of the source (the floor: a conversion records the source's hash, so it reads every byte
through sha256 at least once).

The benchmark writes its own random fp32 checkpoints in the MAE release layout (``{'model': state_dict}``):
ViT-L/16 (1.2 GB) and ViT-H/14 (2.5 GB). Then, for each, it runs in a fresh subprocess each:

- ``sha256``: one sha256 pass over the source (``vitinit.io.save.sha256_file``: hashlib, 1 MiB reads);
- ``copy``:   a plain copy of the same bytes (``shutil.copyfile``, which uses the kernel's copy);
- ``naive``:  ``torch.load`` everything, edit (drop cls/norm, resize pos_embed to the 1024-px grid, add
              the zero rel-pos tables), ``torch.save``;
- ``vitinit-cold``: ``vitinit.convert.convert(src, family="mae", target="vitdet", size=1024)``, the first
              conversion of the file (empty hash cache): lazy reads, one tensor at a time into a streamed
              ``.safetensors`` (sha256 of source and output included). Before ``vitinit.convert`` exists it
              falls back to the same streaming read/write done directly with ``open_checkpoint`` and
              ``write_safetensors`` (the table says which ran).
- ``vitinit-warm``: the same conversion again, right after: the source's sha256 comes from the hash cache
              (``vitinit.io.hash_cache``), as for every later conversion of the file or the first one of a
              file vitinit downloaded.
- ``vitinit-expected``: a first conversion again (empty hash cache), given the source's published sha256
              (``expected_sha256``, the CLI's ``--expect-sha256``): the source is still read through
              sha256 once, to check it, but alongside the writing.

Why the cold run's floor is two sha256 passes: the output's header records the source's sha256 and the
printed sha256 reads the output from byte 0, so hashing the output cannot start before the whole source is
hashed. The warm and expected runs' floor is one pass (the output's; the expected run's check of the
source runs on another thread beside it).

Measured per run: the whole process's wall time (interpreter, imports and teardown included), the work's
wall time inside the process and its CPU time (all threads: on a loaded machine the wall time of a
multi-threaded run says more about the neighbours than about the run), and peak RSS above the idle
interpreter (VmHWM after the work minus VmRSS after the imports; the peak is reset after the imports). The
file is in the page cache for every run (it was just written), so all of them read from memory; dirty
pages are flushed (``sync``) before each run so that no run pays for the previous one's writeback. Runs
are interleaved (sha256, copy, naive, vitinit-cold, vitinit-warm, sha256, ...) and the medians are
compared. Each round starts the cold and expected runs with an empty hash cache (``$VITINIT_CACHE`` is a
folder of the benchmark's own). Targets: memory ≤ 1/20 of naive; time ≤ 1/2 of naive, ≤ 2× the copy and
(work only, warm and expected) ≤ 1.2× the sha256 pass; judged on the whole process and on the work alone
(the machine is shared and noisy: compare ratios within a run).

    python benchmarks/convert.py                  # ViT-L and ViT-H, 3 rounds (a few minutes, ~8 GB disk)
    python benchmarks/convert.py --quick          # ViT-S-sized checkpoint, 1 round (seconds)

Nothing is written outside a temporary folder, which is removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# name: (embed dim, depth, patch, pre-training grid)
SIZES = {
    "vit-s": (384, 12, 16, 14),
    "vit-l": (1024, 24, 16, 14),
    "vit-h": (1280, 32, 14, 16),
}
DETECTION_SIZE = 1024  # rounded down to a multiple of the patch (ViT-H/14: 1022 px, a 73×73 grid)
MODES = ("sha256", "copy", "naive", "vitinit-cold", "vitinit-warm", "vitinit-expected")
CONVERSIONS = ("vitinit-cold", "vitinit-warm", "vitinit-expected")
ONE_PASS = ("vitinit-warm", "vitinit-expected")  # the source's hash is known when writing begins


# ---------------------------------------------------------------------------------------------------------
# Workers (each runs in its own subprocess)
# ---------------------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")


def _make_checkpoint(path: Path, size: str) -> None:
    """A random fp32 ViT in the MAE encoder release layout (keys as facebookresearch/mae models_vit.py)."""
    import torch

    d, depth, p, g = SIZES[size]
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.02

    sd = {
        "cls_token": rnd(1, 1, d),
        "pos_embed": rnd(1, 1 + g * g, d),
        "patch_embed.proj.weight": rnd(d, 3, p, p),
        "patch_embed.proj.bias": rnd(d),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        sd |= {
            b + "norm1.weight": torch.ones(d), b + "norm1.bias": rnd(d),
            b + "attn.qkv.weight": rnd(3 * d, d), b + "attn.qkv.bias": rnd(3 * d),
            b + "attn.proj.weight": rnd(d, d), b + "attn.proj.bias": rnd(d),
            b + "norm2.weight": torch.ones(d), b + "norm2.bias": rnd(d),
            b + "mlp.fc1.weight": rnd(4 * d, d), b + "mlp.fc1.bias": rnd(4 * d),
            b + "mlp.fc2.weight": rnd(d, 4 * d), b + "mlp.fc2.bias": rnd(d),
        }
    sd |= {"norm.weight": torch.ones(d), "norm.bias": rnd(d)}
    torch.save({"model": sd}, path)


def _naive(src: Path, dst: Path, size: str) -> None:
    import torch

    from vitinit.ops.pos_embed import resize_abs_pos_embed

    d, depth, p, g = SIZES[size]
    grid = DETECTION_SIZE // p
    sd = torch.load(src, map_location="cpu", weights_only=True)["model"]
    for k in ("cls_token", "norm.weight", "norm.bias"):
        sd.pop(k)
    sd["pos_embed"] = resize_abs_pos_embed(sd["pos_embed"], (g, g), (grid, grid), num_prefix_tokens=1)
    heads = d // 64
    sd["rel_pos_window"] = torch.zeros((2 * 14 - 1) ** 2, heads)
    sd["rel_pos_global"] = torch.zeros((2 * grid - 1) ** 2, heads)
    torch.save(sd, dst)


def _vitinit(src: Path, dst: Path, size: str, expected: str | None) -> str:
    try:
        from vitinit.convert import convert
    except ImportError:
        convert = None
    if convert is not None:
        img_size = DETECTION_SIZE // SIZES[size][2] * SIZES[size][2]
        hint = {"expected_sha256": expected} if expected else {}
        convert(
            str(src), family="mae", target="vitdet", size=img_size, output=str(dst), overwrite=True, **hint
        )
        return "vitinit.convert.convert"
    return _stream_without_convert(src, dst, size)


def _cache_state(src: Path) -> str:
    try:
        from vitinit.io.hash_cache import lookup
    except ImportError:
        return "no hash cache"
    return "source hash cached" if lookup(src) else "source hash not cached"


def _stream_without_convert(src: Path, dst: Path, size: str) -> str:
    """The same edit as :func:`_naive`, streamed: lazy tensors in, one tensor at a time out."""
    import torch

    from vitinit.canonical import LazyTensor
    from vitinit.io.load import open_checkpoint
    from vitinit.io.save import sha256_file, write_safetensors
    from vitinit.ops.pos_embed import resize_abs_pos_embed

    d, depth, p, g = SIZES[size]
    grid = DETECTION_SIZE // p
    tensors = open_checkpoint(src).tensors("model")
    for k in ("cls_token", "norm.weight", "norm.bias"):
        tensors.pop(k)
    tensors["pos_embed"] = tensors["pos_embed"].map(
        lambda t: resize_abs_pos_embed(t, (g, g), (grid, grid), num_prefix_tokens=1), shape=(1, grid, grid, d)
    )
    heads = d // 64
    for name, rows in (("rel_pos_window", (2 * 14 - 1) ** 2), ("rel_pos_global", (2 * grid - 1) ** 2)):
        tensors[name] = LazyTensor((rows, heads), torch.float32, lambda rows=rows: torch.zeros(rows, heads))
    write_safetensors(dst, tensors, {"source_sha256": sha256_file(src)}, overwrite=True)
    return "open_checkpoint + write_safetensors (vitinit.convert not available yet)"


def worker(mode: str, src: Path, dst: Path, size: str, expected: str | None = None) -> None:
    if mode in ("naive", "vitinit", "make", "sha256"):
        import torch  # noqa: F401  (imports are part of the idle interpreter, not of the work)

        import vitinit.io.load  # noqa: F401
    cache = ""
    if mode in CONVERSIONS:
        try:
            import vitinit.convert  # noqa: F401
        except ImportError:
            pass
        cache = _cache_state(src)
    idle_kib = _status_kib("VmRSS")
    _reset_peak_rss()
    start, cpu_start = time.perf_counter(), time.process_time()
    what = mode
    if mode == "make":
        _make_checkpoint(dst, size)
    elif mode == "sha256":
        from vitinit.io.save import sha256_file

        sha256_file(src)
    elif mode == "copy":
        shutil.copyfile(src, dst)
    elif mode == "naive":
        _naive(src, dst, size)
    else:
        what = f"{_vitinit(src, dst, size, expected)} ({mode}: {cache})"
    work_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    peak_kib = _status_kib("VmHWM")
    print(json.dumps({"work_s": work_s, "cpu_s": cpu_s, "idle_mib": idle_kib / 1024,
                      "peak_mib": (peak_kib - idle_kib) / 1024, "what": what}))


# ---------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------


def run_worker(mode: str, src: Path, dst: Path, size: str, expected: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--src", str(src), "--dst", str(dst), "--sizes", size]
    if mode == "vitinit-expected":
        cmd += ["--expect", expected or ""]
    cache = src.parent / "vitinit-cache"  # the benchmark's own hash cache, emptied for each first conversion
    if mode in ("vitinit-cold", "vitinit-expected"):
        shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "VITINIT_CACHE": str(cache)}
    os.sync()  # start every run with no dirty pages of an earlier one waiting for writeback
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    whole_s = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"{mode} run failed on {size}: {tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["whole_s"] = whole_s
    return result


def benchmark(size: str, folder: Path, rounds: int, console) -> dict[str, list[dict]]:
    src = folder / f"mae_pretrain_{size}.pth"
    console.print(f"[bold]{size}[/]: writing a random checkpoint …")
    run_worker("make", src, src, size)
    with open(src, "rb") as f:  # the "published" hash of the expected runs (not timed)
        published = hashlib.file_digest(f, "sha256").hexdigest()
    console.print(f"  {src.stat().st_size / 1e9:.2f} GB; {rounds} round(s) of {', '.join(MODES)}")
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(rounds):
        for mode in MODES:
            dst = folder / f"out_{mode}{'.safetensors' if mode in CONVERSIONS else '.pth'}"
            res = run_worker(mode, src, dst, size, published)
            dst.unlink(missing_ok=True)
            results[mode].append(res)
            console.print(
                f"  round {r + 1} {mode:12s} whole {res['whole_s']:6.2f} s  work {res['work_s']:6.2f} s  "
                f"(CPU {res['cpu_s']:6.2f} s)  peak {res['peak_mib']:8.1f} MiB above idle"
            )
    src.unlink()
    return results


_MEASURED = ("whole_s", "work_s", "cpu_s", "peak_mib")


def report(all_results: dict[str, dict[str, list[dict]]], console) -> None:
    from rich.table import Table

    med = {
        size: {m: {k: statistics.median(r[k] for r in runs) for k in _MEASURED}
               for m, runs in res.items()}
        for size, res in all_results.items()
    }
    table = Table(title="Checkpoint conversion (medians; peak RSS above the idle interpreter)")
    for col in ("size", "run", "whole process s", "work s", "work CPU s (all threads)", "peak MiB"):
        table.add_column(col, justify="right" if col not in ("size", "run") else "left")
    for size, rows in med.items():
        for mode, row in rows.items():
            cells = (*(f"{row[k]:.2f}" for k in ("whole_s", "work_s", "cpu_s")), f"{row['peak_mib']:.0f}")
            table.add_row(size, mode, *cells)
    console.print(table)

    ratios = Table(title="Ratios (vitinit vs baselines measured in this run)")
    for col in ("size", "run", "ratio", "target", "whole process", "work only", "work CPU"):
        ratios.add_column(col, justify="left" if col in ("size", "run", "ratio") else "right")
    for size, rows in med.items():
        n, c, h = rows["naive"], rows["copy"], rows["sha256"]
        for mode in CONVERSIONS:
            v = rows[mode]
            mem = v["peak_mib"] / max(n["peak_mib"], 1e-9)
            ratios.add_row(size, mode, "memory vs naive", "≤ 0.05", "", _verdict(mem, 1 / 20), "")
            for label, base, target in (("time vs naive", n, 0.5), ("time vs copy", c, 2.0)):
                whole, work = v["whole_s"] / base["whole_s"], v["work_s"] / base["work_s"]
                ratios.add_row(size, mode, label, f"≤ {target:g}", _verdict(whole, target),
                               _verdict(work, target), "")
            # The floor: the whole-process time of the sha256 run is mostly the interpreter, so work only.
            work, cpu = v["work_s"] / h["work_s"], v["cpu_s"] / h["cpu_s"]
            one = mode in ONE_PASS
            ratios.add_row(size, mode, "time vs sha256 pass", "≤ 1.2" if one else "floor 2", "",
                           _verdict(work, 1.2) if one else f"{work:.3g}", f"{cpu:.3g}")
    console.print(ratios)
    console.print(
        "cold floor 2 passes: the output's header records the source's sha256 and the printed sha256 reads "
        "the output from byte 0, so the output's hash starts only after the whole source's; warm: from the "
        "hash cache; expected: given (--expect-sha256) and checked alongside"
    )
    whats = {r["what"] for res in all_results.values() for m in CONVERSIONS for r in res[m]}
    console.print(f"vitinit runs: {'; '.join(sorted(whats))}")


def _verdict(value: float, target: float) -> str:
    return f"{value:.3g} [{'green]met' if value <= target else 'red]missed'}[/]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ViT-S-sized checkpoint and one round")
    parser.add_argument("--sizes", default=None, help="comma-separated, from: " + ", ".join(SIZES))
    parser.add_argument("--rounds", type=int, default=None, help="interleaved repetitions (3; quick: 1)")
    parser.add_argument("--tmpdir", default=None, help="where the temporary folder goes (default: $TMPDIR)")
    parser.add_argument("--worker", choices=("make", *MODES), help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dst", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--expect", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.src, args.dst, args.sizes, args.expect)
        return

    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 120)  # a log file gets the whole table
    sizes = (args.sizes or ("vit-s" if args.quick else "vit-l,vit-h")).split(",")
    rounds = args.rounds or (1 if args.quick else 3)
    folder = Path(tempfile.mkdtemp(prefix="vitinit-bench-", dir=args.tmpdir))
    try:
        results = {size: benchmark(size, folder, rounds, console) for size in sizes}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report(results, console)


if __name__ == "__main__":
    main()
