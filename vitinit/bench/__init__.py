"""The benchmark as one library call: recipe → backbone weights → Mask R-CNN → training → COCO AP.

``run_bench("mae-vitb")`` is what ``vitinit bench mae-vitb`` does. It writes a run folder
(:class:`vitinit.engine.run_folder.RunFolder` says what is in it), the contract the results tools read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from vitinit.bench.datasets import Datasets, build_datasets
from vitinit.bench.plan import plan_lines
from vitinit.bench.weights import (
    apply_position_policy,
    describe_weights,
    load_weights,
    pretrained_backbone_config,
    random_backbone_config,
)
from vitinit.bench.worker import build_model, run_evaluation, train_worker
from vitinit.engine import distributed as du
from vitinit.engine.run_folder import RunFolder
from vitinit.errors import ConfigError
from vitinit.recipes import RecipeLike, as_recipe, load_recipe, to_plain
from vitinit.recipes.schema import Recipe

__all__ = [
    "Datasets",
    "Recipe",
    "RunFolder",
    "apply_position_policy",
    "as_recipe",
    "build_datasets",
    "build_model",
    "describe_weights",
    "load_weights",
    "plan_lines",
    "pretrained_backbone_config",
    "random_backbone_config",
    "resolve",
    "resumable",
    "run_bench",
    "run_evaluation",
    "train_worker",
]


def resolve(name: str | Path, overrides: Sequence[str] = ()) -> dict:
    """The fully resolved recipe as plain data (what ``--dry-run`` prints and ``recipe.yaml`` holds)."""
    return to_plain(load_recipe(name, overrides))


def _recipe_name(name: RecipeLike) -> str:
    """The name a recipe argument stands for (a file's stem), without loading it."""
    if isinstance(name, Recipe):
        return name.name
    if isinstance(name, dict):
        return str(name.get("name", ""))
    return Path(name).stem


def run_bench(
    name: RecipeLike | None = None,
    overrides: Sequence[str] = (),
    *,
    output_dir: str | Path | None = None,
    resume: bool = False,
    num_processes: int = 1,
    progress: bool = True,
) -> dict:
    """Run a benchmark; returns the content of ``results.json``.

    Args:
        name: a bundled recipe name (``mae-vitb``, ``demo``), a recipe file or a :class:`Recipe`; None with
            ``resume`` and ``output_dir`` continues that run with its saved recipe.
        overrides: dotted ``key=value`` pairs.
        output_dir: the run folder (default ``runs/NAME/<timestamp>``).
        resume: continue from ``RUN_DIR/checkpoints/last.pth`` with the run's own ``recipe.yaml``.
        num_processes: launch this many local processes (one per GPU, or CPU processes on gloo) unless this
            process is already part of a torchrun job.

    Example:
        >>> results = run_bench("demo")  # doctest: +SKIP
        >>> results["final"]["bbox"]["AP"]  # doctest: +SKIP
    """
    if resume:
        folder, recipe = resumable(name, overrides, output_dir)
    elif name is None:
        raise ConfigError("name a recipe (or --resume an existing --output-dir)")
    else:
        recipe = as_recipe(name, overrides)
        folder = RunFolder(output_dir) if output_dir is not None else RunFolder.new(recipe.name)
        if folder.last_checkpoint.exists():
            raise ConfigError(
                f"{folder.path} already holds a run; pass --resume to continue it or choose --output-dir"
            )
    run_dir = folder.path
    already_distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if num_processes > 1 and not already_distributed:
        out = du.launch(
            train_worker,
            num_processes,
            recipe,
            str(run_dir),
            resume,
            progress,
            run_id=f"vitinit-{os.getpid()}",
        )
        return out[0]
    return train_worker(recipe, run_dir, resume, progress)


def resumable(
    name: RecipeLike | None, overrides: Sequence[str] = (), output_dir: str | Path | None = None
) -> tuple[RunFolder, Recipe]:
    """The run folder ``--resume`` continues (``output_dir``, or the newest run of ``name``) and its own
    saved recipe, both checked before anything is built or written."""
    if overrides:
        raise ConfigError("a resumed run keeps its recipe; drop the key=value overrides")
    if output_dir is None:
        if name is None:
            raise ConfigError("--resume needs --output-dir or a recipe name (its newest run)")
        folder = RunFolder.newest(_recipe_name(name))
    else:
        folder = RunFolder(output_dir)
    folder.check_resumable()
    recipe = as_recipe(folder.read_recipe())
    if name is not None and _recipe_name(name) != recipe.name:
        raise ConfigError(f"{folder.path} is a run of {recipe.name}, not {_recipe_name(name)}")
    return folder, recipe
