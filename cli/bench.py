"""`vitinit bench NAME... [key=value ...]`: train and evaluate recipes (see ``vitinit.bench``); several
names or globs run the matrix (``vitinit.bench.matrix``) and end with one comparison report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table
from vitinit_cli._common import console, err_console, setup_logging, user_errors


def register(app: typer.Typer) -> None:
    app.command("bench", context_settings={"allow_extra_args": False})(bench)


@user_errors
def bench(
    args: list[str] = typer.Argument(
        None,
        metavar="NAME... [KEY=VALUE...]",
        help="Recipe names (see --list), .yaml files or globs ('*-vitb'), then dotted overrides such as "
        "optim.lr=1e-4 (applied to every recipe). Several recipes run one after another (--slurm: one "
        "job each) into -o ROOT/NAME, and one report compares them.",
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print the resolved recipe, the weights' source and the batch plan on --gpus (several "
        "recipes: a table with the estimated GPU-hours of each); run nothing.",
    ),
    gpus: int = typer.Option(
        1,
        "--gpus",
        min=1,
        help="Processes to launch on this machine (one per GPU; CPU processes on gloo without CUDA).",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in --output-dir (or the newest run of NAME) from its last checkpoint; with "
        "several recipes, skip the finished runs under -o ROOT and continue the others.",
    ),
    output_dir: Path = typer.Option(
        None,
        "--output-dir",
        "-o",
        help="Run folder (default runs/NAME/<timestamp>); with several recipes the root of their folders "
        "(default runs/matrix-<timestamp>).",
    ),
    slurm: bool = typer.Option(
        False, "--slurm", help="Submit to Slurm through submitit instead of running here."
    ),
    nodes: int = typer.Option(1, "--nodes", min=1, help="Slurm nodes (with --slurm); --gpus is per node."),
    partition: str = typer.Option(None, "--partition", help="Slurm partition (with --slurm)."),
    account: str = typer.Option(None, "--account", help="Slurm account (with --slurm)."),
    time_min: int = typer.Option(4320, "--time", help="Slurm time limit in minutes (with --slurm)."),
    list_recipes: bool = typer.Option(False, "--list", help="List the bundled recipes and exit."),
    list_keys: bool = typer.Option(
        False, "--list-keys", help="Print every key of the recipe with its type and value, and exit."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at info level."),
) -> None:
    """Benchmark a ViT initialization: recipe → weights → Mask R-CNN → COCO box/mask AP in a run folder."""
    setup_logging(verbose)
    from vitinit.recipes import list_recipes as bundled
    from vitinit.recipes import to_yaml

    from vitinit import bench as lib
    from vitinit.bench import matrix

    if list_recipes:
        console.print("\n".join(bundled()))
        return
    names = [a for a in args or [] if "=" not in a]
    overrides = [a for a in args or [] if "=" in a]
    if not names and not (resume and output_dir):
        raise typer.BadParameter("name a recipe (see --list), or --resume with --output-dir")
    expanded = matrix.expand(names)
    if len(expanded) > 1 or expanded != names:
        if list_keys:
            raise typer.BadParameter("--list-keys takes one recipe")
        slurm_options = dict(nodes=nodes, gpus_per_node=gpus, partition=partition, account=account,
                             time_min=time_min)
        run_many(expanded, overrides, output_dir, dry_run=dry_run, resume=resume, slurm=slurm_options if slurm
                 else None, gpus=gpus, quiet=quiet)
        return
    name = names[0] if names else None
    if list_keys:
        print_keys(lib.resolve(name, overrides))
        return
    if dry_run:
        recipe = lib.resolve(name, overrides)
        console.print(to_yaml(recipe), highlight=False, markup=False, end="")
        weights = lib.describe_weights(recipe)
        console.print(f"# weights: {weights}", highlight=False, markup=False, soft_wrap=True)
        console.print(
            f"# {recipe['schedule']['iters']} iterations = {recipe['schedule']['epochs']} epochs "
            f"at batch {recipe['train']['batch_size']}",
            highlight=False,
            markup=False,
        )
        console.print(f"# {_estimate_line(matrix.estimate(lib.as_recipe(recipe)))}", highlight=False,
                      markup=False, soft_wrap=True)
        # How the global batch splits over --gpus: this machine's GPU, or typical GPU memories without one.
        for line in lib.plan_lines(recipe, gpus):
            console.print(f"# {line}", highlight=False, markup=False, soft_wrap=True)
        return
    if slurm:
        from vitinit.bench.slurm import submit

        job = submit(
            name,
            overrides,
            output_dir=output_dir,
            resume=resume,
            nodes=nodes,
            gpus_per_node=gpus,
            partition=partition,
            account=account,
            time_min=time_min,
        )
        console.print(f"submitted Slurm job {job.job_id}; logs in {job.paths.folder}")
        return
    results = lib.run_bench(
        name,
        overrides,
        output_dir=output_dir,
        resume=resume,
        num_processes=gpus,
        progress=not quiet and os.environ.get("TERM") != "dumb",
    )
    print_summary(results)
    if results.get("run_dir"):  # where the run, its report and its pictures are, and what to run next
        from vitinit.analysis.run_report import next_steps

        console.print("\n".join(next_steps(results["run_dir"])), highlight=False, soft_wrap=True)


def run_many(
    names: list[str],
    overrides: list[str],
    root: Path | None,
    *,
    dry_run: bool,
    resume: bool,
    slurm: dict | None,
    gpus: int,
    quiet: bool,
) -> None:
    """The matrix: every recipe checked first, then run here one after another or submitted one job each."""
    from vitinit.bench import matrix

    if resume and root is None:
        raise typer.BadParameter("--resume with several recipes needs -o ROOT (the folder of their runs)")
    recipes = matrix.load_all(names, overrides)
    if dry_run:
        print_estimates(recipes)
        return
    root = root or matrix.default_root()
    if slurm is not None:
        jobs = matrix.submit_matrix(recipes, root, resume=resume, **slurm)
        for name, job in jobs:
            console.print(f"{name}: Slurm job {job.job_id} → {root / name}", highlight=False, soft_wrap=True)
        console.print(f"once they are done: vitinit report {root} -o {root / matrix.REPORT_DIR}",
                      highlight=False, soft_wrap=True)
        return
    outcomes = matrix.run_matrix(
        recipes, root, resume=resume, num_processes=gpus,
        progress=not quiet and os.environ.get("TERM") != "dumb",
        notify=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True),
    )
    print_outcomes(outcomes)
    finished = [o.run_dir for o in outcomes if o.status != "failed"]
    if finished:
        from vitinit.analysis.report import REPORT_FILE, build_report

        report = build_report(finished, root / matrix.REPORT_DIR)
        console.print(f"comparison report: {report.out_dir / REPORT_FILE}", highlight=False, soft_wrap=True)
    failed = [o.name for o in outcomes if o.status == "failed"]
    if failed:
        err_console.print(f"[bold red]error:[/] {len(failed)} of {len(outcomes)} recipes failed: "
                          f"{escape(', '.join(failed))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def print_estimates(recipes: list) -> None:
    """``--dry-run`` of several recipes: what would run, and its GPU-hours at ViTDet's A100 speed."""
    from vitinit.bench import matrix

    table = Table(title=f"{len(recipes)} recipes (GPU-hours: an estimate, see below)")
    for column in ("recipe", "init", "size", "epochs", "iters", "s/img", "GPU-h"):
        table.add_column(column, justify="left" if column in ("recipe", "init", "size") else "right",
                         no_wrap=column == "recipe")
    total, unknown = 0.0, []
    for r in recipes:
        e = matrix.estimate(r)
        size = "r-101" if matrix.is_resnet(r) else r.model.variant
        table.add_row(r.name, r.weights.init, size, f"{r.schedule.epochs:g}", str(r.schedule.iters),
                      "-" if e.seconds_per_image is None else f"{e.seconds_per_image:.3f}",
                      "-" if e.gpu_hours is None else f"{e.gpu_hours:,.0f}")
        total += e.gpu_hours or 0.0
        if e.gpu_hours is None:
            unknown.append(f"{r.name}: {e.note}")
    console.print(table)
    lines = [
        f"total: {total:,.0f} GPU-hours (about {total / 24:,.0f} GPU-days). An ESTIMATE: iterations × "
        f"batch × seconds per image, at {matrix.SPEED_SOURCE}; not measured with this code.",
        *unknown,
    ]
    console.print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)


def _estimate_line(e) -> str:
    if e.gpu_hours is None:
        return f"GPU-hours: {e.note}"
    return (
        f"about {e.gpu_hours:,.0f} GPU-hours to train ({e.note}): an estimate at the ViTDet README's A100 "
        "speed, not measured with this code"
    )


def print_outcomes(outcomes: list) -> None:
    """The matrix's summary: a narrow table (status, box / mask AP), then each run's folder or error on its
    own line, so that nothing is cut or broken mid-word in 80 columns or a pipe."""
    table = Table(title="matrix")
    for column in ("recipe", "status", "box AP", "mask AP"):
        table.add_column(column, justify="right" if "AP" in column else "left", no_wrap=column == "recipe")
    for o in outcomes:
        best = (o.results or {}).get("best") or {}
        table.add_row(o.name, o.status, _fmt((best.get("bbox") or {}).get("AP")),
                      _fmt((best.get("segm") or {}).get("AP")))
    console.print(table)
    lines = [f"{o.name}: {o.error if o.error else o.run_dir}" for o in outcomes]
    console.print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)


def print_keys(recipe: dict) -> None:
    """Every knob of the schema: key, type (and allowed values or range), the value here, what it does.

    Keys are never broken: in a pipe or a file, one line per key (grep-able, never wrapped); in a terminal
    of 120 columns or more, a table; in a narrower one, ``key = value`` with its type and meaning wrapped
    at words beneath.
    """
    from rich.padding import Padding
    from rich.text import Text
    from vitinit.recipes.check import list_knobs

    rows = [
        (k.key, k.type, json.dumps(list(k.value) if isinstance(k.value, tuple) else k.value), k.help)
        for k in list_knobs(recipe)
    ]
    title = f"{recipe['name']}: every key (override with key=value)"
    if not console.is_terminal:
        width = max(len(r[0]) for r in rows)
        lines = [f"# {title}", *(f"{k:<{width}}  {v}  # {tp}; {help_}" for k, tp, v, help_ in rows)]
        console.print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)
        return
    if console.width >= 120:
        table = Table(title=title)
        table.add_column("key", no_wrap=True)
        table.add_column("type", ratio=2)
        table.add_column("value", no_wrap=True, max_width=30, overflow="ellipsis")
        table.add_column("meaning", ratio=3)
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)
        return
    console.print(title, style="bold", highlight=False)
    for key, tp, value, meaning in rows:
        console.print(Text.assemble((key, "bold cyan"), " = ", value), overflow="fold")
        console.print(Padding(Text(f"{tp}; {meaning}", style="dim"), (0, 0, 0, 4)))


def print_summary(results: dict) -> None:
    """A short table: the final and best box / mask AP of the run."""
    table = Table(title=f"{results['name']} ({results['init']}, {results['variant']}): {results['status']}")
    table.add_column("eval")
    table.add_column("iter", justify="right")
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        table.add_column(f"box {key}", justify="right")
    table.add_column("mask AP", justify="right")
    rows = [
        ("first", (results.get("history") or [None])[0]),
        ("final", results.get("final")),
        ("best", results.get("best")),
    ]
    for label, entry in rows:
        if entry is None:
            continue
        box = entry["bbox"]
        table.add_row(
            label,
            str(entry["iter"]),
            *(_fmt(box.get(k)) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")),
            _fmt(entry["segm"].get("AP")),
        )
    console.print(table)
    if results.get("eval_dir"):
        console.print(
            f"detections and metrics: {results['eval_dir']} (val annotations {results['val_annotations']})"
        )


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"
