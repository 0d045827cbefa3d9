"""`vitinit eval RUN [--checkpoint FILE] [data.*=... eval.*=...]`: score a trained run again (see
``vitinit.bench.trained``), into ``RUN/eval/<name>/`` and a section of the run's report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from vitinit_cli._common import console, setup_logging, user_errors


@user_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `vitinit bench`.")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="data.* / eval.* overrides, e.g. data.val.annotations=x.json eval.batch_size=4."),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Weights to score (default RUN/checkpoints/last.pth).")
    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
) -> None:
    """Score a trained run again: COCO box / mask AP on the full val set or another dataset.

    A run that evaluated eval.max_images is scored on every val image; data.val.* points at another
    COCO-format dataset. Written into RUN/eval/<checkpoint>-<annotations>/ and a section of the run's report.
    """
    setup_logging(verbose)
    from vitinit.bench.trained import evaluate_run

    entry = evaluate_run(run_dir, tuple(overrides or ()), checkpoint=checkpoint)
    table = Table(title=f"{run_dir} at iteration {entry['iter']}: {entry['images']} images")
    for column in ("", "AP", "AP50", "AP75", "APs", "APm", "APl"):
        table.add_column(column, justify="right" if column else "left")
    for kind in ("bbox", "segm"):
        table.add_row(kind, *("-" if entry[kind].get(k) is None else f"{entry[kind][k]:.1f}"
                              for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")))
    console.print(table)
    console.print(f"detections and metrics: {entry['eval_dir']}", highlight=False, soft_wrap=True)
    console.print(f"report: {Path(run_dir) / 'report' / 'report.md'}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
