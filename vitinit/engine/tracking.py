"""Experiment trackers beside ``metrics.jsonl``: what ``train.loggers`` names, fed by ``MetricsWriter``.

``metrics.jsonl`` is always written (the run folder's contract); TensorBoard events are written when
``tensorboard`` is listed and installed; Weights & Biases (``pip install 'vitinit[wandb]'``) when ``wandb``
is listed. W&B's own settings apply: ``WANDB_PROJECT`` (default ``vitinit``), ``WANDB_ENTITY``,
``WANDB_MODE=offline`` (files only, ``wandb sync`` later). The W&B run lives in ``RUN/wandb/``; its id is
kept there, so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from vitinit.errors import MissingDependencyError

WANDB_ID_FILE = "vitinit-run-id.txt"


def check_loggers(loggers: list[str]) -> None:
    """Fail before training when a listed tracker that cannot be skipped is not installed."""
    if "wandb" in loggers:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise MissingDependencyError(
                "train.loggers lists wandb, which is not installed: pip install 'vitinit[wandb]'"
            ) from None


def flatten(record: dict[str, Any]) -> dict[str, float]:
    """``{"kind": "eval", "bbox": {"AP": …}}`` → ``{"eval/bbox/AP": …}``: numbers only, ``iter`` left out."""
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[prefix] = value

    for k, v in record.items():
        if k not in ("kind", "iter"):
            walk(f"{record.get('kind', 'train')}/{k}", v)
    return out


class WandbTracker:
    """One W&B run per run folder: the recipe as its config, every ``metrics.jsonl`` record logged at its
    iteration."""

    def __init__(self, run_dir: str | Path, name: str, config: dict[str, Any], tags: list[str]) -> None:
        self.run_dir, self.name, self.config, self.tags = Path(run_dir), name, config, tags
        self.run = None

    def _run_id(self) -> str:
        path = self.run_dir / "wandb" / WANDB_ID_FILE
        if path.is_file():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        run_id = uuid.uuid4().hex[:16]
        path.write_text(run_id + "\n")
        return run_id

    def start(self) -> None:
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "vitinit"),
            name=f"{self.name}/{self.run_dir.name}",
            id=self._run_id(),
            resume="allow",
            dir=str(self.run_dir),
            config=self.config,
            tags=self.tags,
        )

    def log(self, record: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log(flatten(record), step=int(record["iter"]))

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
