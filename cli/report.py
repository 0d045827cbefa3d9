"""`vitinit report RUN_DIR... [-o DIR]`: compare runs as the paper does (table, curves, error bars)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from vitinit_cli._common import console, err_console, setup_logging, user_errors


class _WarningsToConsole(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(f"[yellow]warning:[/] {record.getMessage()}", highlight=False, soft_wrap=True)


@user_errors
def report(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="Run folders from `vitinit bench`, or folders of runs.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for report.md and the PNGs.")] = Path(
        "vitinit-report"
    ),
    analyze: Annotated[
        bool, typer.Option("--analyze/--no-analyze", help="Run the TIDE error analysis where it is missing.")
    ] = True,
    pictures: Annotated[
        int, typer.Option("--pictures", min=0, help="Val images in each run's gallery (0: no gallery).")
    ] = 4,
    images: Annotated[
        Path | None, typer.Option("--images", help="Val image folder (default: beside the annotations).")
    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
) -> None:
    """Compare runs: box/mask AP per initialization and size, complexity, AP vs schedule, TIDE error bars,
    and a gallery of ground truth | predictions on fixed val images.

    Unfinished runs are skipped with a warning; a folder that is not a run is an error.
    """
    from vitinit.analysis.report import build_report, comparison_rows
    from vitinit.errors import OutputExistsError

    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"-o {output} is a file; give a folder for report.md and the PNGs")
    setup_logging(verbose)
    handler = _WarningsToConsole(logging.WARNING)
    logging.getLogger("vitinit.analysis").addHandler(handler)
    logging.getLogger("vitinit.analysis").propagate = False
    try:
        result = build_report(run_dirs, output, analyze=analyze, pictures=pictures, image_dir=images)
    finally:
        logging.getLogger("vitinit.analysis").removeHandler(handler)
        logging.getLogger("vitinit.analysis").propagate = True

    header, rows = comparison_rows(result.runs)
    table = Table(*header, title=f"{len(result.runs)} finished run(s): best AP box / AP mask")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    figures = [f for f in result.files if f.parent == result.out_dir]
    console.print("wrote " + ", ".join(str(f) for f in figures), highlight=False, soft_wrap=True)
    if result.pictures:
        n = sum(map(len, result.pictures.values()))
        where = result.out_dir / "gallery"
        console.print(f"gallery: {n} pictures in {where}/", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
