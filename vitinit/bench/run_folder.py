"""The run folder's files that the results tools read: where it goes, ``results.json``, the saved recipe.

The layout is in :mod:`vitinit.bench`'s docstring.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vitinit.engine import distributed as du
from vitinit.errors import TrainingError
from vitinit.io.files import write_json


def default_run_dir(name: str, *, resume: bool, root: str | Path = "runs") -> Path:
    """``runs/NAME/<timestamp>``; with ``resume``, the newest existing one."""
    base = Path(root) / name
    if resume:
        runs = sorted(p for p in base.glob("*") if (p / "checkpoints" / "last.pth").is_file())
        if not runs:
            raise TrainingError(f"nothing to resume: no run of {name} with a checkpoint under {base}")
        return runs[-1]
    return base / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _summary(entry: dict | None) -> dict | None:
    return None if entry is None else {k: entry[k] for k in ("iter", "epoch", "bbox", "segm") if k in entry}


def write_results(
    run_dir: Path,
    recipe: dict,
    history: list[dict],
    status: str,
    val_annotations: Path,
    error: str | None = None,
) -> dict:
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
        "eval_dir": f"eval/iter_{final['iter']:07d}" if final else None,
    }
    if error:
        results["error"] = error
    write_json(run_dir / "results.json", results)
    return results


def load_run_recipe(run_dir: str | Path) -> DictConfig:
    return OmegaConf.load(Path(run_dir) / "recipe.yaml")  # type: ignore[return-value]
