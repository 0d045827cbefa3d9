"""Process-group plumbing with PyTorch's own stack: torchrun / elastic launch, DDP, gloo on CPU, nccl on GPU.

A run is distributed when ``WORLD_SIZE`` > 1 is in the environment (torchrun, :func:`launch`, or submitit's
``TorchDistributedEnvironment`` set it); otherwise everything here degrades to one process.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from vitinit.errors import ConfigError

log = logging.getLogger(__name__)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def init_distributed() -> torch.device:
    """Join the process group described by the environment and return this process's device.

    nccl with one GPU per process when CUDA is available, gloo on CPU (the configuration the tests run).
    """
    n = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if n > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        log.info("process %d/%d joined the %s process group", dist.get_rank(), n, backend)
    return device


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def seed_everything(seed: int, *, offset_by_rank: bool = True) -> int:
    """Seed Python, NumPy and torch (all devices); each rank gets ``seed + rank`` so augmentations differ."""
    s = seed + (rank() if offset_by_rank else 0)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return s


def launch(fn: Callable[..., Any], nprocs: int, *args: Any, run_id: str = "vitinit") -> dict[int, Any]:
    """Run ``fn(*args)`` in ``nprocs`` local processes through torch's elastic launcher (what torchrun uses).

    ``fn`` must be importable (a module-level function); the children find the rendezvous in their
    environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ...). Returns each rank's return value.
    Multi-node jobs use ``torchrun --nnodes ... -m vitinit_cli.main bench ...`` or ``--slurm`` instead.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nprocs,
        run_id=run_id,
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    return elastic_launch(config, fn)(*args)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GRAD_COMPRESSION = ("none", "bf16", "fp16")


def register_grad_compression(model: torch.nn.Module, kind: str) -> None:
    """Compress DDP's gradient all-reduce to 16 bits (``train.grad_compression``): torch's
    ``default_hooks.bf16_compress_hook`` / ``fp16_compress_hook`` (ViTDet trains with fp16 compression).

    Gradients are cast for the wire and restored to their dtype after the average; ``none`` or a model that is
    not DDP-wrapped (one process) leaves everything as it is.
    """
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    if kind not in GRAD_COMPRESSION:
        raise ConfigError(f"train.grad_compression must be one of {GRAD_COMPRESSION}, got {kind!r}")
    if kind == "none" or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return
    hook = default_hooks.bf16_compress_hook if kind == "bf16" else default_hooks.fp16_compress_hook
    model.register_comm_hook(state=None, hook=hook)
