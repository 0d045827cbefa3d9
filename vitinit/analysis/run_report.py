"""The end of a benchmark run: its own report inside the run folder, and what to do next.

``vitinit bench`` calls :func:`write_run_report` when a run finishes (the machinery of ``vitinit report``, for
one run: AP table, AP during training, TIDE breakdown when ``tidecv`` is installed, the gallery) and
prints :func:`next_steps`, so a run never ends on a bare table with nothing to look at.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

import torch.nn as nn

from vitinit.analysis.complexity import write_run_complexity
from vitinit.analysis.report import REPORT_FILE, build_report
from vitinit.errors import VitinitError

logger = logging.getLogger(__name__)

RUN_REPORT_DIR = "report"


def run_report_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / RUN_REPORT_DIR


def write_run_report(
    run_dir: str | Path,
    *,
    image_dir: str | Path | None = None,
    model: nn.Module | None = None,
    size: int | None = None,
    strict: bool = False,
) -> Path | None:
    """Write ``RUN/report/report.md`` with its figures and ``RUN/report/gallery/*.png``; returns report.md.

    Args:
        run_dir: a finished run folder.
        image_dir: the val images (the bench passes its dataset's folder; otherwise found beside the
            annotations).
        model, size: the trained detector and its test size: its parameters and FLOPs per part go into
            ``RUN/analysis/complexity.json`` first, and the report shows them beside AP.
        strict: raise on failure; by default a failure is logged and None returned, since the report is a
            bonus that must not fail a run that trained and evaluated.

    Example:
        >>> write_run_report("runs/demo/20261203-080000")  # doctest: +SKIP
        PosixPath('runs/demo/20261203-080000/report/report.md')
    """
    try:
        if model is not None and size is not None:
            write_run_complexity(model, run_dir, size)
        report = build_report([run_dir], run_report_dir(run_dir), image_dir=image_dir)
    except (VitinitError, OSError, RuntimeError) as e:  # RuntimeError: a FLOP count torch cannot trace
        if strict:
            raise
        logger.warning("run report skipped: %s", " ".join(str(e).split()))
        return None
    for note in report.notes:
        logger.info("run report: %s", note)
    return report.out_dir / REPORT_FILE


def next_steps(run_dir: str | Path) -> list[str]:
    """Lines to print when a run ends: where it is, its report and pictures, how to compare and resume."""
    run = Path(run_dir).resolve()
    q = shlex.quote(str(run))
    report = run_report_dir(run)
    lines = [f"run folder: {run}"]
    if (report / REPORT_FILE).is_file():
        lines.append(f"report:     {report / REPORT_FILE}")
        if (report / "gallery").is_dir():
            lines.append(f"pictures:   {report / 'gallery'}/ (ground truth | predictions, fixed val images)")
    lines.append(f"re-report / compare with other runs:  vitinit report {q} [OTHER_RUN ...] -o REPORT_DIR")
    lines.append(f"continue an interrupted run:          vitinit bench --resume -o {q}")
    if (run / "tensorboard").is_dir():
        lines.append(f"watch the curves:                     tensorboard --logdir {q}/tensorboard")
    return lines
