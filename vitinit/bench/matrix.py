"""The paper's matrix in one command: several recipes (names or globs), run one after another here or one
Slurm job each, then one report comparing them.

``vitinit bench '*-vitb'`` expands the glob against the bundled recipes, checks every recipe (with the
overrides) before anything runs, then runs each into ``ROOT/NAME``: a failure is recorded and the next
recipe starts; a finished run is not run again, a run with a checkpoint is resumed (``--resume``). The
comparison report goes to ``ROOT/report`` (``vitinit report ROOT`` writes it again later, e.g. once Slurm
jobs are done).

:func:`estimate` is what ``--dry-run`` prints: GPU-hours at the per-GPU training speed of ViTDet's README
(detectron2 ``projects/ViTDet``: Mask R-CNN, 64 A100s at 1 image per GPU, AMP). It is an estimate from a
different recipe (ViTDet's simple pyramid, LN heads) on other hardware, not a measurement of this code.
"""

from __future__ import annotations

import datetime
import fnmatch
import glob
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitinit.bench import run_bench
from vitinit.bench.weights import is_resnet
from vitinit.engine.run_folder import RunFolder
from vitinit.errors import ConfigError, VitinitError
from vitinit.recipes import as_recipe, list_recipes
from vitinit.recipes.schema import Recipe

log = logging.getLogger(__name__)

REPORT_DIR = "report"
# Training seconds per image on one A100 (= s/iter at 1 image per GPU), ViTDet's README (detectron2
# projects/ViTDet, COCO Mask R-CNN table "train time (s/im)"): ViT-B 0.314, ViT-L 0.603, ViT-H 1.098.
SECONDS_PER_IMAGE = {"vit-b": 0.314, "vit-l": 0.603, "vit-h": 1.098}
SPEED_SOURCE = "ViTDet README (detectron2 projects/ViTDet): A100, 1 image per GPU, AMP"


@dataclass(frozen=True)
class Estimate:
    """GPU-hours of a recipe's training at :data:`SECONDS_PER_IMAGE`; None where no figure is published."""

    seconds_per_image: float | None
    gpu_hours: float | None
    note: str


def estimate(recipe: Recipe) -> Estimate:
    """The training's GPU-hours: iterations × batch × seconds per image, at ViTDet's A100 speed."""
    s = recipe.schedule
    if is_resnet(recipe):
        return Estimate(None, None, "no published A100 speed for the R-101 baseline (UNCONFIRMED)")
    per_image = SECONDS_PER_IMAGE.get(recipe.model.variant)
    if per_image is None:
        return Estimate(None, None, f"no published speed for {recipe.model.variant} (not a paper size)")
    hours = s.iters * recipe.train.batch_size * per_image / 3600
    return Estimate(per_image, hours, f"{s.iters} it × {recipe.train.batch_size} img × {per_image} s/img")


def expand(patterns: Sequence[str]) -> list[str]:
    """Recipe names and files from names, ``.yaml`` paths and globs (``'*-vitb'`` matches bundled recipes,
    ``'my/*.yaml'`` files); order kept, repeats dropped. A glob matching nothing is an error."""
    out: list[str] = []
    for pattern in patterns:
        if not any(c in pattern for c in "*?["):
            out.append(pattern)
            continue
        if pattern.endswith((".yaml", ".yml")) or "/" in pattern:
            found = sorted(glob.glob(pattern))
        else:
            found = fnmatch.filter(list_recipes(), pattern)
        if not found:
            raise ConfigError(f"no recipe matches {pattern!r} (see vitinit bench --list)")
        out.extend(found)
    return list(dict.fromkeys(out))


def load_all(names: Sequence[str], overrides: Sequence[str] = ()) -> list[Recipe]:
    """Every recipe checked with the overrides, before the first one runs; two with one name are refused
    (their run folders ``ROOT/NAME`` would collide)."""
    recipes = [as_recipe(n, overrides) for n in names]
    seen: dict[str, str] = {}
    for name, r in zip(names, recipes, strict=True):
        if r.name in seen:
            raise ConfigError(f"{seen[r.name]} and {name} are both named {r.name}; rename one")
        seen[r.name] = name
    return recipes


def default_root() -> Path:
    return Path("runs") / f"matrix-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"


@dataclass
class Outcome:
    """What one recipe of the matrix did: ``finished``, ``failed`` or ``skipped`` (already finished)."""

    name: str
    status: str
    run_dir: Path
    results: dict | None = None
    error: str | None = None


def run_matrix(
    recipes: Sequence[Recipe],
    root: str | Path,
    *,
    resume: bool = False,
    runner: Callable[..., dict] = run_bench,
    notify: Callable[[str], None] = log.info,
    **kwargs: Any,
) -> list[Outcome]:
    """Run each recipe into ``root/NAME``, one after another; an exception in one is recorded, not raised
    (Ctrl-C still stops everything). ``resume``: finished runs are skipped, killed ones continue.
    ``notify`` gets one line as each recipe starts (the CLI prints it)."""
    outcomes = []
    for i, recipe in enumerate(recipes, 1):
        folder = RunFolder(Path(root) / recipe.name)
        notify(f"[{i}/{len(recipes)}] {recipe.name} → {folder.path}")
        if resume and _finished(folder):
            outcomes.append(Outcome(recipe.name, "skipped", folder.path, folder.read_results()))
            continue
        again = resume and folder.last_checkpoint.is_file()
        try:
            if again:
                results = runner(None, resume=True, output_dir=folder.path, **kwargs)
            else:
                results = runner(recipe, output_dir=folder.path, **kwargs)
        except Exception as e:  # noqa: BLE001 - one recipe's failure must not stop the others
            msg = " ".join(str(e).split()) or type(e).__name__
            if not isinstance(e, VitinitError):
                log.exception("%s failed", recipe.name)
            outcomes.append(Outcome(recipe.name, "failed", folder.path, error=msg))
            continue
        outcomes.append(Outcome(recipe.name, "finished", folder.path, results))
    return outcomes


def _finished(folder: RunFolder) -> bool:
    try:
        return folder.read_results()["status"] == "finished"
    except VitinitError:
        return False


def submit_matrix(recipes: Sequence[Recipe], root: str | Path, *, resume: bool = False, **slurm: Any) -> list:
    """One Slurm job per recipe into ``root/NAME`` (each requeues itself and resumes, as a single
    ``--slurm`` run does); ``resume`` continues the ones with a checkpoint and skips finished ones."""
    from vitinit.bench.slurm import submit

    jobs = []
    for recipe in recipes:
        folder = RunFolder(Path(root) / recipe.name)
        if resume and _finished(folder):
            continue
        again = resume and folder.last_checkpoint.is_file()
        job = submit(None if again else recipe, output_dir=folder.path, resume=again, **slurm)
        jobs.append((recipe.name, job))
    return jobs
