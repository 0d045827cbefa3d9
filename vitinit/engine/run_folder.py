"""The run folder: every path in it, and the reading and writing of its files, in one type.

``vitinit bench`` writes it, ``--resume`` and the results tools (``vitinit report``, TIDE) read it::

    RUN_DIR/recipe.yaml                  the fully resolved recipe
    RUN_DIR/weights.json                 provenance of the backbone weights, and its architecture
    RUN_DIR/metrics.jsonl                {"kind": "train", ...} and {"kind": "eval", ...} lines
    RUN_DIR/eval/iter_XXXXXXX/           metrics.json, bbox.json, segm.json (COCO results format)
    RUN_DIR/results.json                 status, final and best metrics, val annotations, last eval dir
    RUN_DIR/checkpoints/last.pth         trainer state for --resume
    RUN_DIR/analysis/tide.json           TIDE error analysis of the last evaluation
    RUN_DIR/tensorboard/, RUN_DIR/slurm/ TensorBoard events; submitit's logs

Every read of a damaged file (empty or truncated checkpoint, corrupt YAML, a value of the wrong type) is a
one-line error naming the file, since a killed job or a full disk leaves exactly those behind.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vitinit.engine import distributed as du
from vitinit.engine.checkpoint import check_checkpoint, load_checkpoint
from vitinit.errors import TrainingError, VitinitError
from vitinit.io.files import MAX_JSON_BYTES, MAX_LINE_BYTES, parse_json, read_json, read_lines, write_json
from vitinit.io.save import atomic_path
from vitinit.recipes import check_saved_recipe, to_yaml
from vitinit.recipes.schema import Recipe

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
LAST_CHECKPOINT = "last.pth"
TIDE_FILE = Path("analysis") / "tide.json"


class RunFolderError(VitinitError, ValueError):
    """A folder is not a run, a run's file is damaged, or a run is not in the state a command needs."""


class UnfinishedRunError(RunFolderError):
    """The run has not finished (status ``running`` or ``failed``)."""


def eval_name(iteration: int) -> str:
    """The evaluation folder of an iteration, relative to the run (as ``results.json`` names it)."""
    return f"eval/iter_{iteration:07d}"


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file; a line a killed writer left half-written is skipped, not fatal."""
    if not path.is_file():
        return []
    records = []
    for n, line in read_lines(path):  # line by line, each capped: one huge line cannot take the memory
        if line is None:
            logger.warning("%s:%d is over %d MiB; skipped", path, n, MAX_LINE_BYTES >> 20)
            continue
        if not line.strip():
            continue
        try:
            record = parse_json(line)
        except (ValueError, UnicodeDecodeError):
            logger.warning("%s:%d is not JSON; skipped", path, n)
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


# --- results.json: its fields and their types --------------------------------------------------------

_NUMBER = (int, float)
_RESULT_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "status": ((str,), "a string"),
    "name": ((str,), "a string"),
    "init": ((str,), "a string"),
    "variant": ((str,), "a string"),
    "iters": ((int,), "an integer"),
    "epochs": (_NUMBER, "a number"),
    "final": ((dict, type(None)), "a mapping or null"),
    "best": ((dict, type(None)), "a mapping or null"),
    "history": ((list,), "a list"),
    "world_size": ((int,), "an integer"),
    "val_annotations": ((str, type(None)), "a path or null"),
    "eval_dir": ((str, type(None)), "a path or null"),
    "error": ((str,), "a string"),
}
_POINT_FIELDS = {"iter": ((int,), "an integer"), "epoch": (_NUMBER, "a number")}


def _expect(path: Path, key: str, value: Any, kinds: tuple[type, ...], what: str) -> None:
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise RunFolderError(f"{path}: {key} must be {what}, got {value!r}; the file is damaged")


def check_results(results: Any, path: Path) -> dict:
    """``results.json`` content with every known field of the right type (one-line error otherwise)."""
    if not isinstance(results, dict):
        raise RunFolderError(f"{path} is not a results mapping; is it from `vitinit bench`?")
    missing = [k for k in ("status", "init", "variant") if k not in results]
    if missing:
        raise RunFolderError(f"{path} lacks {', '.join(missing)}; is it from `vitinit bench`?")
    for key, (kinds, what) in _RESULT_FIELDS.items():
        if key in results:
            _expect(path, key, results[key], kinds, what)
    points = [(k, results.get(k)) for k in ("final", "best")]
    points += [(f"history[{i}]", p) for i, p in enumerate(results.get("history") or [])]
    for key, point in points:
        if point is None:
            continue
        _expect(path, key, point, (dict,), "a mapping")
        for name, (kinds, what) in _POINT_FIELDS.items():
            if name in point:
                _expect(path, f"{key}.{name}", point[name], kinds, what)
        for task in ("bbox", "segm"):
            metrics = point.get(task) or {}
            _expect(path, f"{key}.{task}", metrics, (dict,), "a mapping of metrics")
            for metric, v in metrics.items():
                _expect(path, f"{key}.{task}.{metric}", v, (*_NUMBER, type(None)), "a number or null")
    return results


def _summary(entry: dict | None) -> dict | None:
    return None if entry is None else {k: entry[k] for k in ("iter", "epoch", "bbox", "segm") if k in entry}


def _plain(recipe: Recipe | dict) -> dict:
    return recipe.to_dict() if isinstance(recipe, Recipe) else recipe


@dataclass(frozen=True, init=False)
class RunFolder:
    """One run's folder. Paths are properties; ``read_*`` / ``write_*`` own each file's format.

    Example:
        >>> folder = RunFolder("runs/demo/20260101-120000")  # doctest: +SKIP
        >>> folder.read_results()["status"], folder.last_checkpoint.is_file()  # doctest: +SKIP
    """

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @classmethod
    def new(cls, name: str, *, root: str | Path = "runs") -> RunFolder:
        """``runs/NAME/<timestamp>``: where a fresh run of recipe ``name`` goes by default."""
        return cls(Path(root) / name / datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))

    @classmethod
    def newest(cls, name: str, *, root: str | Path = "runs") -> RunFolder:
        """The newest run of ``name`` with a checkpoint (what a bare ``--resume NAME`` continues)."""
        base = Path(root) / name
        runs = sorted(p for p in base.glob("*") if cls(p).last_checkpoint.is_file())
        if not runs:
            raise TrainingError(f"nothing to resume: no run of {name} with a checkpoint under {base}")
        return cls(runs[-1])

    # --- paths ---
    @property
    def recipe(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def weights(self) -> Path:
        return self.path / "weights.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def results(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST_CHECKPOINT

    @property
    def tide(self) -> Path:
        return self.path / TIDE_FILE

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def slurm(self) -> Path:
        return self.path / "slurm"

    def eval_dir(self, iteration: int) -> Path:
        return self.path / eval_name(iteration)

    # --- writing (the main process of a run) ---
    def write_recipe(self, recipe: Recipe | dict) -> None:
        with atomic_path(self.recipe) as tmp:
            tmp.write_text(to_yaml(_plain(recipe)))

    def write_weights(self, provenance: dict) -> None:
        write_json(self.weights, provenance)

    def write_eval(self, entry: dict) -> None:
        """``eval/iter_XXXXXXX/metrics.json`` of one evaluation record."""
        write_json(
            self.eval_dir(entry["iter"]) / "metrics.json", {k: v for k, v in entry.items() if k != "kind"}
        )

    def write_results(
        self,
        recipe: Recipe | dict,
        history: list[dict],
        status: str,
        val_annotations: Path,
        error: str | None = None,
    ) -> dict:
        """``results.json``: the run's status, its final and best evaluation, where its detections are."""
        recipe = _plain(recipe)
        final = history[-1] if history else None
        best = max(history, key=lambda e: e["bbox"]["AP"] or 0.0) if history else None
        results = {
            "status": status,
            "name": recipe["name"],
            "init": recipe["weights"]["init"],
            # The CNN baseline (recipes/random-r101.yaml) reports as "r-101", not as the unused ViT variant.
            "variant": "r-101" if (recipe["model"].get("detector") or {}).get("backbone_type") == "resnet101"
            else recipe["model"]["variant"],
            "iters": recipe["schedule"]["iters"],
            "epochs": recipe["schedule"]["epochs"],
            "final": _summary(final),
            "best": _summary(best),
            "history": [_summary(e) for e in history],
            "world_size": du.world_size(),
            "val_annotations": str(Path(val_annotations).resolve()),
            "eval_dir": eval_name(final["iter"]) if final else None,
        }
        if error:
            results["error"] = error
        write_json(self.results, results)
        return results

    # --- reading ---
    def read_recipe(self) -> dict:
        """The saved recipe, checked against the schema (a damaged file is a one-line error)."""
        if not self.recipe.is_file():
            raise RunFolderError(
                f"{self.path} has no recipe.yaml; is it a folder written by `vitinit bench`?"
            )
        if self.recipe.stat().st_size > MAX_JSON_BYTES:  # read whole: capped first
            raise RunFolderError(
                f"{self.recipe} is over {MAX_JSON_BYTES >> 20} MiB; the run folder is damaged"
            )
        try:
            tree = yaml.safe_load(self.recipe.read_text())
        except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
            raise RunFolderError(
                f"{self.recipe} is not valid YAML ({' '.join(str(e).split())[:120]})"
            ) from None
        return check_saved_recipe(tree, self.recipe)

    def read_results(self) -> dict:
        if not self.results.is_file():
            raise RunFolderError(
                f"{self.path} is not a run folder (no {RESULTS_FILE}); pass folders `vitinit bench` wrote"
            )
        return check_results(read_json(self.results, error=RunFolderError, what="run results"), self.results)

    def read_metrics(self) -> list[dict]:
        return read_jsonl(self.metrics)

    def read_weights(self) -> dict:
        """``weights.json`` (the backbone weights' provenance), or {} for a folder without one."""
        if not self.weights.is_file():
            return {}
        weights = read_json(self.weights, error=RunFolderError, what="weights provenance")
        if not isinstance(weights, dict):
            raise RunFolderError(f"{self.weights} is not a JSON object; the file is damaged")
        return weights

    def read_tide(self) -> dict | None:
        return (
            read_json(self.tide, error=RunFolderError, what="error analysis") if self.tide.is_file() else None
        )

    def load_checkpoint(self) -> dict[str, Any]:
        return load_checkpoint(self.last_checkpoint)

    def check_resumable(self) -> None:
        """Refuse at once, writing nothing, unless the folder holds a readable checkpoint."""
        if not self.path.is_dir():
            raise TrainingError(f"nothing to resume: {self.path} does not exist")
        check_checkpoint(self.last_checkpoint)
