"""Read the run folders the trainer writes (see ``vitinit.engine``), for reports and error analysis.

A run folder holds ``results.json`` (status, init, variant, schedule, best/final metrics, where the detections
and the ground truth are), ``metrics.jsonl`` (train and eval records) and ``eval/iter_*/`` (COCO metrics and
detections). This module only reads; it never writes into a run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from vitinit.errors import VitinitError
from vitinit.io.files import read_json

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
TIDE_FILE = Path("analysis") / "tide.json"


class RunFolderError(VitinitError, ValueError):
    """A folder is not a run, or a run is not in the state a command needs."""


class UnfinishedRunError(RunFolderError):
    """The run has not finished (status ``running`` or ``failed``)."""


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


def _read_json(path: Path, what: str) -> dict:
    return read_json(path, error=RunFolderError, what=what)


def _read_curve(path: Path) -> list[EvalPoint]:
    if not path.is_file():
        return []
    points = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            # A run killed mid-write leaves a truncated last line; the rest is still good.
            logger.warning("%s:%d is not JSON; skipped", path, n)
            continue
        if record.get("kind") == "eval":
            points.append(_point(record))
    return sorted(points, key=lambda p: p.iter)


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
    results_path = path / RESULTS_FILE
    if not results_path.is_file():
        raise RunFolderError(
            f"{path} is not a run folder (no {RESULTS_FILE}); pass folders written by `vitinit bench`"
        )
    results = _read_json(results_path, "run results")
    missing = [k for k in ("status", "init", "variant") if k not in results]
    if missing:
        raise RunFolderError(f"{results_path} lacks {', '.join(missing)}; is it from `vitinit bench`?")
    status = str(results["status"])
    if require_finished and status != "finished":
        raise UnfinishedRunError(f"{path} is not finished (status: {status}); wait for it or resume it")

    tide_path = path / TIDE_FILE
    val = results.get("val_annotations")
    eval_dir = results.get("eval_dir")
    return Run(
        path=path,
        name=str(results.get("name") or path.name),
        init=str(results["init"]),
        variant=str(results["variant"]),
        status=status,
        epochs=float(results.get("epochs") or 0.0),
        iters=int(results.get("iters") or 0),
        best=_point(results.get("best")),
        final=_point(results.get("final")),
        curve=_read_curve(path / "metrics.jsonl"),
        val_annotations=Path(val) if val else None,
        eval_dir=(path / eval_dir) if eval_dir else None,
        tide=_read_json(tide_path, "error analysis") if tide_path.is_file() else None,
    )
