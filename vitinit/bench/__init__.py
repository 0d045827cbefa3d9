"""The benchmark as one library call: recipe → backbone weights → Mask R-CNN → training → COCO AP.

``run_bench("mae-vitb")`` is what ``vitinit bench mae-vitb`` does. The run folder (the contract the results
tools read)::

    RUN_DIR/recipe.yaml           the fully resolved recipe
    RUN_DIR/weights.json          provenance of the backbone weights
    RUN_DIR/metrics.jsonl         {"kind": "train", ...} and {"kind": "eval", ...} lines
    RUN_DIR/eval/iter_XXXXXXX/    metrics.json, bbox.json, segm.json (COCO results format)
    RUN_DIR/results.json          status, final and best metrics, val annotations, last eval dir
    RUN_DIR/checkpoints/last.pth  trainer state for --resume
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from vitinit.bench.run_folder import default_run_dir, load_run_recipe, write_json, write_results
from vitinit.bench.weights import (
    INITS,
    apply_position_policy,
    describe_weights,
    global_blocks,
    load_weights,
    pretrained_backbone_config,
    random_backbone_config,
)
from vitinit.bench.worker import Datasets, build_datasets, build_model, run_evaluation, train_worker
from vitinit.engine import distributed as du
from vitinit.errors import ConfigError
from vitinit.recipes import load_recipe, to_plain

__all__ = [
    "INITS",
    "Datasets",
    "apply_position_policy",
    "build_datasets",
    "build_model",
    "default_run_dir",
    "describe_weights",
    "global_blocks",
    "load_run_recipe",
    "load_weights",
    "pretrained_backbone_config",
    "random_backbone_config",
    "resolve",
    "run_bench",
    "run_evaluation",
    "train_worker",
    "write_json",
    "write_results",
]


def resolve(name: str | Path, overrides: Sequence[str] = ()) -> dict:
    """The fully resolved recipe as plain data (what ``--dry-run`` prints and ``recipe.yaml`` holds)."""
    return to_plain(load_recipe(name, overrides))


def run_bench(
    name: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    output_dir: str | Path | None = None,
    resume: bool = False,
    num_processes: int = 1,
    progress: bool = True,
) -> dict:
    """Run a benchmark; returns the content of ``results.json``.

    Args:
        name: a bundled recipe name (``mae-vitb``, ``demo``) or a recipe file; None with ``resume`` and
            ``output_dir`` continues that run with its saved recipe.
        overrides: dotted ``key=value`` pairs.
        output_dir: the run folder (default ``runs/NAME/<timestamp>``).
        resume: continue from ``RUN_DIR/checkpoints/last.pth`` with the run's own ``recipe.yaml``.
        num_processes: launch this many local processes (one per GPU, or CPU processes on gloo) unless this
            process is already part of a torchrun job.

    Example:
        >>> results = run_bench("demo")  # doctest: +SKIP
        >>> results["final"]["bbox"]["AP"]  # doctest: +SKIP
    """
    if resume and output_dir is not None and (Path(output_dir) / "recipe.yaml").is_file():
        recipe = to_plain(OmegaConf.load(Path(output_dir) / "recipe.yaml"))  # type: ignore[arg-type]
        if overrides:
            raise ConfigError("a resumed run keeps its recipe; drop the key=value overrides")
    elif name is None:
        raise ConfigError("name a recipe (or --resume an existing --output-dir)")
    else:
        recipe = resolve(name, overrides)
    run_dir = Path(output_dir) if output_dir is not None else default_run_dir(recipe["name"], resume=resume)
    if not resume and (run_dir / "checkpoints" / "last.pth").exists():
        raise ConfigError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose --output-dir"
        )
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
