"""Run a function on N gloo processes with a deadline: a hung rank fails the test instead of hanging CI."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_with_deadline(fn: Callable[..., None], nprocs: int, *, timeout: float) -> dict[Any, Any]:
    """``fn(rank, nprocs, port, results)`` on ``nprocs`` processes; returns the ``results`` they filled."""
    import torch.multiprocessing as mp

    port = free_port()
    with mp.Manager() as manager:
        results = manager.dict()
        ctx = mp.spawn(fn, args=(nprocs, port, results), nprocs=nprocs, join=False)
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=1) and time.monotonic() < deadline:
            pass
        hung = [p for p in ctx.processes if p.is_alive()]
        for p in hung:
            p.terminate()
        assert not hung, "a rank is still running: the job hung"
        return dict(results)
