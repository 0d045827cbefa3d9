"""Slurm through submitit, for any picklable task: one job of ``nodes × gpus_per_node`` tasks, one rank each.

What the tasks run is the caller's (``vitinit.bench.slurm`` submits the benchmark); this module only knows
Slurm: the job's parameters, and the executor that submits a task with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitinit.errors import MissingDependencyError

# The keys submitit's local/debug executors accept; the others are Slurm's own.
_GENERIC_KEYS = ("name", "timeout_min", "gpus_per_node", "tasks_per_node", "cpus_per_task", "nodes")


def slurm_parameters(
    *, nodes: int, gpus_per_node: int, partition: str | None, account: str | None, time_min: int, name: str
) -> dict[str, Any]:
    """``AutoExecutor.update_parameters`` arguments: one task (rank) per GPU."""
    params: dict[str, Any] = dict(
        name=f"vitinit-{name}",
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        tasks_per_node=gpus_per_node,
        cpus_per_task=10,
        timeout_min=time_min,
        slurm_signal_delay_s=120,  # time for the requeue checkpoint before the kill
    )
    if partition:
        params["slurm_partition"] = partition
    if account:
        params["slurm_account"] = account
    return params


def submit_task(task: Any, log_dir: str | Path, params: dict[str, Any], *, cluster: str | None = None) -> Any:
    """Submit ``task`` (a picklable callable) with ``params``; logs go to ``log_dir/<job id>``.

    ``cluster="local"`` / ``"debug"`` run it on this machine (submitit's executors for tests).
    """
    try:
        import submitit
    except ImportError:
        raise MissingDependencyError("--slurm needs submitit: pip install 'vitinit[slurm]'") from None
    executor = submitit.AutoExecutor(folder=Path(log_dir) / "%j", cluster=cluster)
    if executor.cluster != "slurm":
        params = {k: v for k, v in params.items() if k in _GENERIC_KEYS}
    executor.update_parameters(**params)
    return executor.submit(task)
