"""The trainer's hooks: lr schedule, evaluation, atomic checkpoints, JSON-lines metrics, progress bar."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vitinit.engine import distributed as du
from vitinit.engine.checkpoint import load_checkpoint, save_checkpoint
from vitinit.engine.optim import lr_factor
from vitinit.engine.run_folder import LAST_CHECKPOINT, read_jsonl
from vitinit.engine.trainer import HookBase
from vitinit.io.save import atomic_path

# load_checkpoint / save_checkpoint live in engine.checkpoint; callers of the hooks find them here too.
__all__ = [
    "Checkpoint",
    "Evaluate",
    "LRSchedule",
    "MetricsWriter",
    "Progress",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]

log = logging.getLogger(__name__)


class LRSchedule(HookBase):
    """Sets every param group's lr to ``base_lr × factor(iter)`` before the step (see ``optim.lr_factor``)."""

    def __init__(self, **schedule: Any) -> None:
        self.schedule = schedule

    def before_step(self) -> None:
        t = self.trainer
        f = lr_factor(t.iter, max_iter=t.max_iter, **self.schedule)
        for g in t.optimizer.param_groups:
            g["lr"] = g["base_lr"] * f

    @property
    def lr(self) -> float:
        """The lr of the group with the largest scale (the heads'), as detectron2 logs it."""
        return max(g["lr"] for g in self.trainer.optimizer.param_groups)


# --- checkpoints ---------------------------------------------------------------------------------------


class Checkpoint(HookBase):
    """Writes ``DIR/last.pth`` every ``period`` iterations and at the end (main process only).

    A failing run (non-finite loss, exception, interrupt) writes nothing more, so ``last.pth`` stays the
    last good state.
    """

    def __init__(self, directory: str | Path, period: int) -> None:
        self.directory, self.period = Path(directory), period

    @property
    def last(self) -> Path:
        return self.directory / LAST_CHECKPOINT

    def save(self) -> None:
        state = self.trainer.state_dict()
        rng = state["rng"]
        if du.world_size() > 1:  # each rank's RNG, so every process resumes its own random stream
            states: list[Any] = [None] * du.world_size()
            torch.distributed.all_gather_object(states, rng)
            state["rng"] = {"per_rank": states}
        if not du.is_main_process():
            return
        save_checkpoint(state, self.last)
        log.info("checkpoint at iteration %d → %s", self.trainer.completed, self.last)

    def after_step(self) -> None:
        n = self.trainer.completed
        if self.period and n % self.period == 0 and n < self.trainer.max_iter:
            self.save()

    def after_train(self) -> None:
        if self.trainer.failed is None and self.trainer.completed == self.trainer.max_iter:
            self.save()


def restore_rng(state: dict[str, Any]) -> dict[str, Any]:
    """Pick this rank's RNG state out of a checkpoint written by :class:`Checkpoint`."""
    rng = state["rng"]
    if "per_rank" in rng:
        per_rank = rng["per_rank"]
        rng = per_rank[du.rank()] if du.rank() < len(per_rank) else per_rank[0]
    return {**state, "rng": rng}


# --- evaluation ----------------------------------------------------------------------------------------


class Evaluate(HookBase):
    """Calls ``eval_fn(iteration)`` every ``period`` iterations, at the end, and optionally before training.

    ``eval_fn`` returns a metrics dict (the same on every rank); the history is part of the hook's state so a
    resumed run still knows its earlier evaluations.
    """

    def __init__(self, eval_fn: Callable[[int], dict], period: int, *, at_start: bool = False) -> None:
        self.eval_fn, self.period, self.at_start = eval_fn, period, at_start
        self.history: list[dict] = []

    def _run(self, iteration: int) -> None:
        was_training = self.trainer.model.training
        self.trainer.model.eval()
        try:
            # Forked RNG: evaluating must not shift the training stream (resume equivalence).
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                self.history.append(self.eval_fn(iteration))
        finally:
            self.trainer.model.train(was_training)

    def before_train(self) -> None:
        if self.at_start and self.trainer.start_iter == 0:
            self._run(0)

    def after_step(self) -> None:
        n = self.trainer.completed
        if n == self.trainer.max_iter or (self.period and n % self.period == 0):
            self._run(n)

    def state_dict(self) -> dict[str, Any]:
        return {"history": json.dumps(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = json.loads(state.get("history", "[]"))


# --- metrics -------------------------------------------------------------------------------------------


class MetricsWriter(HookBase):
    """Appends ``{"kind": "train", "iter", "loss", <each loss>, "lr", "time"}`` lines to a JSON-lines file
    every ``period`` iterations (main process), plus TensorBoard scalars when tensorboard is installed.

    On resume, lines past the checkpoint's iteration (written by the killed run) are dropped first, so the
    file reads as one uninterrupted run.
    """

    def __init__(
        self,
        path: str | Path,
        period: int = 20,
        *,
        lr_hook: LRSchedule | None = None,
        tensorboard: bool | Path = True,
        trackers: Sequence[Any] = (),
    ) -> None:
        self.path, self.period, self.lr_hook = Path(path), period, lr_hook
        self.trackers = list(trackers)  # each with start(), log(record), close(): vitinit.engine.tracking
        # True: events beside the metrics file; a path: there (the run folder's); False: none.
        self.tensorboard = self.path.parent / "tensorboard" if tensorboard is True else tensorboard
        self.tb = None

    def before_train(self) -> None:
        if not du.is_main_process():
            return
        start = self.trainer.start_iter
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            # A line the killed run left half-written is dropped with the others past the checkpoint.
            kept = [r for r in read_jsonl(self.path) if r.get("iter", 0) <= start]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self.tb = None
            else:
                self.tb = SummaryWriter(str(self.tensorboard), purge_step=start or None)
        for tracker in self.trackers:
            tracker.start()

    def write(self, record: dict[str, Any]) -> None:
        if not du.is_main_process():
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for tracker in self.trackers:
            tracker.log(record)
        if self.tb is not None:
            step = record["iter"]
            for k, v in record.items():
                if isinstance(v, int | float) and k != "iter":
                    self.tb.add_scalar(f"{record['kind']}/{k}", v, step)
                elif isinstance(v, dict):
                    for kk, vv in v.items():
                        if isinstance(vv, int | float):
                            self.tb.add_scalar(f"{record['kind']}/{k}/{kk}", vv, step)

    def after_step(self) -> None:
        t = self.trainer
        n = t.completed
        if n % self.period and n != t.max_iter:
            return
        record: dict[str, Any] = {
            "kind": "train",
            "iter": n,
            **{k: round(v, 6) for k, v in t.last_losses.items()},
        }
        if self.lr_hook is not None:
            record["lr"] = self.lr_hook.lr
        if t.last_grad_norm is not None:
            record["grad_norm"] = round(t.last_grad_norm, 4)
        record["time"] = round(t.step_time, 4)
        self.write(record)

    def after_train(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if du.is_main_process():
            for tracker in self.trackers:
                tracker.close()


class Progress(HookBase):
    """A rich progress bar: iteration, loss, lr, ETA (main process only; silent when ``enabled`` is False)."""

    def __init__(
        self, *, lr_hook: LRSchedule | None = None, enabled: bool = True, description: str = "train"
    ) -> None:
        self.lr_hook, self.enabled, self.description = lr_hook, enabled, description
        self.bar = None

    def before_train(self) -> None:
        if not (self.enabled and du.is_main_process()):
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self.bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("lr {task.fields[lr]}"),
            TextColumn("eta"),
            TimeRemainingColumn(),
            transient=False,
        )
        self.bar.start()
        t = self.trainer
        self.task = self.bar.add_task(
            self.description, total=t.max_iter, completed=t.start_iter, loss="-", lr="-"
        )
        self._t0 = time.perf_counter()

    def after_step(self) -> None:
        if self.bar is None:
            return
        t = self.trainer
        lr = f"{self.lr_hook.lr:.2e}" if self.lr_hook else "-"
        self.bar.update(
            self.task, completed=t.completed, loss=f"{t.last_losses.get('loss', float('nan')):.3f}", lr=lr
        )

    def after_train(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
