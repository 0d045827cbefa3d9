"""``vitinit bench --slurm``: the benchmark as one Slurm job, one rank per GPU (see ``vitinit.engine.slurm``).

Each task is one rank: submitit's ``TorchDistributedEnvironment`` turns the Slurm variables into the
``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` ... that ``torch.distributed`` reads, then the task runs the same
:func:`vitinit.bench.worker.train_worker` as a local run. On preemption or timeout the job requeues itself
with ``resume=True`` (submitit's ``checkpoint`` protocol), continuing from the last checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitinit.bench import resumable
from vitinit.bench.worker import train_worker
from vitinit.engine.run_folder import RunFolder
from vitinit.engine.slurm import slurm_parameters, submit_task
from vitinit.errors import ConfigError
from vitinit.recipes import RecipeLike, as_recipe
from vitinit.recipes.schema import Recipe


class BenchTask:
    """The picklable callable each Slurm task runs."""

    def __init__(self, recipe: Recipe, run_dir: str, resume: bool) -> None:
        self.recipe, self.run_dir, self.resume = recipe, run_dir, resume

    def __call__(self) -> dict:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return train_worker(self.recipe, self.run_dir, self.resume, progress=False)

    def checkpoint(self) -> Any:
        """Called by submitit before requeueing: continue from ``last.pth`` when one exists."""
        import submitit

        resume = RunFolder(self.run_dir).last_checkpoint.is_file()
        return submitit.helpers.DelayedSubmission(BenchTask(self.recipe, self.run_dir, resume))


def submit(
    name: RecipeLike | None,
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
    if resume:  # the run's own recipe, from its folder
        folder, recipe = resumable(name, overrides, output_dir)
    elif not name:
        raise ConfigError("--slurm needs a recipe name")
    else:
        recipe = as_recipe(name, overrides)
        folder = RunFolder(output_dir) if output_dir is not None else RunFolder.new(recipe.name)
    params = slurm_parameters(
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        partition=partition,
        account=account,
        time_min=time_min,
        name=recipe.name,
    )
    task = BenchTask(recipe, str(folder.path.resolve()), resume)
    return submit_task(task, folder.slurm, params, cluster=cluster)
