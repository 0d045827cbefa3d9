"""A small hookable training loop (the shape of detectron2's ``TrainerBase`` / ``SimpleTrainer``).

:meth:`Trainer.run_step` does forward, backward and the optimizer step, nothing else. Learning-rate
schedule, evaluation, checkpointing, metrics and the progress bar are hooks. The trainer and every hook save
and load their own state, which is what makes ``--resume`` reach the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from vitinit.errors import TrainingError

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class HookBase:
    """Called around training; ``self.trainer`` is set when registered."""

    trainer: Trainer

    def before_train(self) -> None: ...

    def after_train(self) -> None: ...

    def before_step(self) -> None: ...

    def after_step(self) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Trainer:
    """Runs iterations ``start_iter .. max_iter - 1`` over an endless ``data`` iterable of (images, targets).

    Args:
        model: a torchvision detection model (possibly DDP-wrapped) returning a loss dict in train mode.
        optimizer: its optimizer.
        data: endless iterable of batches; it must begin at :attr:`start_iter` (see ``StreamSampler``).
        max_iter: number of iterations of the whole run.
        device: where the batches go.
        amp: None, "bf16" or "fp16" autocast (fp16 adds a gradient scaler).
        clip_grad_norm: max total norm of the accumulated gradient, or None.
        accumulation_steps: micro-batches per iteration (see ``vitinit.engine.accumulation``): each one's
            loss is divided by it, DDP's gradient all-reduce runs only on the last one (``no_sync`` before),
            and the optimizer steps once. ``data`` then yields micro-batches; an iteration is one step.
        hooks: called in order (before_*) and reverse order is not needed: after_* run in the same order.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: Iterable,
        *,
        max_iter: int,
        device: torch.device | str = "cpu",
        amp: str | None = None,
        clip_grad_norm: float | None = None,
        hooks: Sequence[HookBase] = (),
        accumulation_steps: int = 1,
    ) -> None:
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be ≥ 1, got {accumulation_steps}")
        self.accumulation_steps = accumulation_steps
        self.model, self.optimizer, self.data = model, optimizer, data
        self.max_iter, self.device = max_iter, torch.device(device)
        if amp is not None and amp not in AMP_DTYPES:
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
        self.amp, self.clip_grad_norm = amp, clip_grad_norm
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self.iter = self.start_iter = 0
        self.completed = 0  # iterations done; a checkpoint resumes at this one
        self.last_losses: dict[str, float] = {}
        self.last_grad_norm: float | None = None
        self.step_time = 0.0
        self.hooks: list[HookBase] = []
        for h in hooks:
            self.register(h)

    def register(self, hook: HookBase) -> None:
        hook.trainer = self
        self.hooks.append(hook)

    # --- the loop -----------------------------------------------------------------------------------

    def train(self) -> None:
        """Run to ``max_iter``; a failure is logged and re-raised, and ``after_train`` hooks always run."""
        self._data_iter: Iterator = iter(self.data)
        self.model.train()
        self.failed: BaseException | None = None
        try:
            for h in self.hooks:
                h.before_train()
            for it in range(self.start_iter, self.max_iter):
                self.iter = it
                for h in self.hooks:
                    h.before_step()
                self.run_step()
                for h in self.hooks:
                    h.after_step()
        except BaseException as e:
            self.failed = e
            if not isinstance(e, KeyboardInterrupt):
                log.error("training stopped at iteration %d: %s", self.iter, e)
            raise
        finally:
            for h in self.hooks:
                h.after_train()

    def run_step(self) -> None:
        """Forward and backward of each micro-batch, then one optimizer step: one iteration."""
        start = time.perf_counter()
        steps = self.accumulation_steps
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        total_sum = torch.zeros((), device=self.device)
        for micro in range(steps):
            total, values = self._forward_backward(last=micro == steps - 1)
            total_sum += total.detach().float() / steps
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v / steps
        # Checked once per step, after the last (synchronizing) backward, so every rank has taken part in the
        # same all-reduces before all of them raise together; nothing has been applied to the weights yet.
        if not _finite_on_every_rank(total_sum):
            raise TrainingError(
                f"non-finite loss at iteration {self.iter}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in sums.items())
                + "; the last checkpoint written before it is kept"
                " (lower the lr, raise the warmup, or disable fp16)"
            )
        if self.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
            self.last_grad_norm = float(norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.last_losses = {"loss": float(total_sum), **sums}
        self.step_time = time.perf_counter() - start
        self.completed = self.iter + 1

    def _forward_backward(self, *, last: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """One micro-batch: loss / steps backward; DDP skips its gradient all-reduce unless ``last``."""
        images, targets = next(self._data_iter)
        images = [im.to(self.device, non_blocking=True) for im in images]
        targets = [
            {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets
        ]
        autocast = (
            torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp])
            if self.amp
            else contextlib.nullcontext()
        )
        no_sync = getattr(self.model, "no_sync", None)
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync:
            with autocast:
                losses = self.model(images, targets)
            total = sum(losses.values())
            self.scaler.scale(total / self.accumulation_steps).backward()
        return total, {k: float(v.detach()) for k, v in losses.items()}

    # --- state --------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: weights, optimizer, scaler, RNG, iteration, hooks."""
        model = self.model.module if hasattr(self.model, "module") else self.model
        state = {
            "iter": self.completed,
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"cpu": torch.get_rng_state()},
            "hooks": {type(h).__name__: h.state_dict() for h in self.hooks},
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        model = self.model.module if hasattr(self.model, "module") else self.model
        model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        for h in self.hooks:
            h.load_state_dict(state["hooks"].get(type(h).__name__, {}))
        self.iter = self.start_iter = self.completed = int(state["iter"])


def _finite_on_every_rank(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every process: a rank that raised alone would leave the others
    blocked in the next gradient all-reduce until the collective times out."""
    finite = loss.detach().float().isfinite().reshape(1).float()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())
