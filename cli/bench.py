"""`vitinit bench NAME [key=value ...]`: train and evaluate a recipe (see ``vitinit.bench``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table
from vitinit_cli._common import console, setup_logging, user_errors


def register(app: typer.Typer) -> None:
    app.command("bench", context_settings={"allow_extra_args": False})(bench)


@user_errors
def bench(
    name: str = typer.Argument(None, help="Recipe name (see --list) or a recipe .yaml file."),
    overrides: list[str] = typer.Argument(
        None, help="Dotted overrides, e.g. optim.lr=1e-4 train.batch_size=16."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the resolved recipe, weights and batch plan on --gpus; run nothing."
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
        help="Continue the run in --output-dir (or the newest run of NAME) from its last checkpoint.",
    ),
    output_dir: Path = typer.Option(
        None, "--output-dir", "-o", help="Run folder (default runs/NAME/<timestamp>)."
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

    if list_recipes:
        console.print("\n".join(bundled()))
        return
    if name is None and not (resume and output_dir):
        raise typer.BadParameter("name a recipe (see --list), or --resume with --output-dir")
    overrides = overrides or []
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


def print_keys(recipe: dict) -> None:
    """Every knob of the schema: key, type (and allowed values or range), the value here, what it does."""
    from vitinit.recipes.check import list_knobs

    table = Table(title=f"{recipe['name']}: every key (override with key=value)")
    for column in ("key", "type", "value", "meaning"):
        table.add_column(column, overflow="fold")
    for k in list_knobs(recipe):
        value = json.dumps(list(k.value) if isinstance(k.value, tuple) else k.value)
        table.add_row(*(escape(cell) for cell in (k.key, k.type, value, k.help)))
    console.print(table)


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
