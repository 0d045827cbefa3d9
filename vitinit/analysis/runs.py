"""Read the run folders ``vitinit bench`` writes, for reports and error analysis.

What a folder holds, and the checks on each file, are :class:`vitinit.engine.run_folder.RunFolder`'s; this
module turns them into a :class:`Run` for the report. It only reads; it never writes into a run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from vitinit.engine.run_folder import RESULTS_FILE, TIDE_FILE, RunFolder, RunFolderError, UnfinishedRunError

__all__ = ["RESULTS_FILE", "TIDE_FILE", "EvalPoint", "Run", "RunFolderError", "UnfinishedRunError"]
__all__ += ["load_run"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation of a run: AP in percent (0-100), as detectron2 prints it."""

    iter: int
    epoch: float
    bbox: dict[str, float]
    segm: dict[str, float]


@dataclass
class Run:
    """What a report needs from one run folder."""

    path: Path
    name: str
    init: str
    variant: str
    status: str
    epochs: float  # the schedule length, not the epoch of the best evaluation
    iters: int
    best: EvalPoint | None
    final: EvalPoint | None
    curve: list[EvalPoint] = field(default_factory=list)  # every eval record of metrics.jsonl, by iter
    val_annotations: Path | None = None
    eval_dir: Path | None = None
    tide: dict | None = None  # analysis/tide.json when present

    @property
    def finished(self) -> bool:
        return self.status == "finished"


def _point(d: dict | None) -> EvalPoint | None:
    if not d:
        return None
    return EvalPoint(
        iter=int(d.get("iter", 0)), epoch=float(d.get("epoch", 0.0)),
        bbox=dict(d.get("bbox") or {}), segm=dict(d.get("segm") or {}),
    )


def _curve(folder: RunFolder) -> list[EvalPoint]:
    points = []
    for record in folder.read_metrics():
        if record.get("kind") != "eval":
            continue
        try:
            points.append(_point(record))
        except (TypeError, ValueError):  # a hand-edited or foreign line: the curve just lacks that point
            logger.warning("%s: eval record %s has values of the wrong type; skipped", folder.metrics, record)
    return sorted((p for p in points if p is not None), key=lambda p: p.iter)


def load_run(run_dir: str | Path, *, require_finished: bool = False) -> Run:
    """Read a run folder.

    Args:
        run_dir: the folder the trainer wrote.
        require_finished: raise :class:`UnfinishedRunError` unless ``status == "finished"``.

    Raises:
        RunFolderError: the folder does not exist or has no readable ``results.json``.

    Example:
        >>> run = load_run("runs/mae_vit-b_25ep")  # doctest: +SKIP
        >>> run.init, run.best.bbox["AP"]  # doctest: +SKIP
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise RunFolderError(f"{path} is not a folder")
    folder = RunFolder(path)
    results = folder.read_results()  # every field checked: a damaged file is a one-line error
    status = results["status"]
    if require_finished and status != "finished":
        raise UnfinishedRunError(f"{path} is not finished (status: {status}); wait for it or resume it")
    val = results.get("val_annotations")
    eval_dir = results.get("eval_dir")
    return Run(
        path=path,
        name=results.get("name") or path.name,
        init=results["init"],
        variant=results["variant"],
        status=status,
        epochs=float(results.get("epochs") or 0.0),
        iters=int(results.get("iters") or 0),
        best=_point(results.get("best")),
        final=_point(results.get("final")),
        curve=_curve(folder),
        val_annotations=Path(val) if val else None,
        eval_dir=(path / eval_dir) if eval_dir else None,
        tide=folder.read_tide(),
    )
