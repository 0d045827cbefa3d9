"""``vitinit bench --slurm``: one Slurm job of ``nodes × gpus_per_node`` tasks through submitit.

Each task is one rank: submitit's ``TorchDistributedEnvironment`` turns the Slurm variables into the
``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` ... that ``torch.distributed`` reads, then the task runs the same
:func:`vitinit.bench.train_worker` as a local run. On preemption or timeout the job requeues itself with
``resume=True`` (submitit's ``checkpoint`` protocol), continuing from the last checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitinit.errors import ConfigError


class BenchTask:
    """The picklable callable each Slurm task runs."""

    def __init__(self, recipe: dict, run_dir: str, resume: bool) -> None:
        self.recipe, self.run_dir, self.resume = recipe, run_dir, resume

    def __call__(self) -> dict:
        import submitit

        from vitinit.bench import train_worker

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return train_worker(self.recipe, self.run_dir, self.resume, progress=False)

    def checkpoint(self) -> Any:
        """Called by submitit before requeueing: continue from ``last.pth`` when one exists."""
        import submitit

        resume = (Path(self.run_dir) / "checkpoints" / "last.pth").is_file()
        return submitit.helpers.DelayedSubmission(BenchTask(self.recipe, self.run_dir, resume))


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
        slurm_signal_delay_s=120,
    )
    if partition:
        params["slurm_partition"] = partition
    if account:
        params["slurm_account"] = account
    return params


def submit(
    name: str | None,
    overrides: Sequence[str] = (),
    *,
    output_dir: str | Path | None = None,
    resume: bool = False,
    nodes: int = 1,
    gpus_per_node: int = 8,
    partition: str | None = None,
    account: str | None = None,
    time_min: int = 4320,
    cluster: str | None = None,
) -> Any:
    """Submit the benchmark; returns the submitit job (``cluster="local"``/``"debug"`` run it here)."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--slurm needs submitit: pip install 'vitinit[slurm]'") from None
    from vitinit.bench import default_run_dir, resolve

    recipe = resolve(name, overrides) if name else None
    if recipe is None:
        raise ConfigError("--slurm needs a recipe name")
    run_dir = Path(output_dir) if output_dir else default_run_dir(recipe["name"], resume=resume)
    executor = submitit.AutoExecutor(folder=run_dir / "slurm" / "%j", cluster=cluster)
    params = slurm_parameters(
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        partition=partition,
        account=account,
        time_min=time_min,
        name=recipe["name"],
    )
    if executor.cluster != "slurm":  # local/debug executors take only the generic knobs
        params = {
            k: v
            for k, v in params.items()
            if k in ("name", "timeout_min", "gpus_per_node", "tasks_per_node", "cpus_per_task", "nodes")
        }
    executor.update_parameters(**params)
    return executor.submit(BenchTask(recipe, str(run_dir.resolve()), resume))
