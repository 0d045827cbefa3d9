"""Checkpoints of our own trainer: written atomically, refused in one line when empty, cut or corrupt.

A killed job or a full disk leaves exactly those behind, and ``--resume`` must say so before it builds
anything (``check_checkpoint`` reads no tensor).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from vitinit.errors import TrainingError
from vitinit.io.save import atomic_path


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` into a temp file renamed onto ``path``: a crash never leaves a torn checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def check_checkpoint(path: str | Path) -> Path:
    """Fail at once, with one line, on a missing, empty or truncated checkpoint (no tensor is read).

    ``torch.save`` writes a zip whose directory is at the end, so a file cut short has none.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"nothing to resume: {path} does not exist")
    if path.stat().st_size == 0:
        raise TrainingError(f"checkpoint {path} is empty; delete it to start the run over")
    try:
        with zipfile.ZipFile(path):
            pass
    except (zipfile.BadZipFile, OSError) as e:
        raise TrainingError(
            f"checkpoint {path} is damaged (truncated?: {e}); delete it to start over, or restore a copy"
        ) from None
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Our trainer state holds only tensors and plain containers, so ``weights_only`` loading suffices."""
    path = check_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        cause = " ".join(str(e).split())[:160]
        raise TrainingError(f"checkpoint {path} cannot be read ({cause}); delete it to start over") from None


_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def describe_model(state: dict[str, Any]) -> str:
    """A model's size as its state dict shows it: ``ViT width 768, depth 12`` (or its tensor count)."""
    width = next((tuple(t.shape)[0] for k, t in state.items() if k.endswith("patch_embed.proj.weight")), None)
    blocks = {int(m.group(1)) for k in state if (m := _BLOCK.search(k))}
    if width is None or not blocks:
        return f"{len(state)} tensors"
    return f"ViT width {width}, depth {max(blocks) + 1}"


def check_same_model(state: dict[str, Any], model: torch.nn.Module, *, checkpoint: Path, run: str) -> None:
    """Refuse, in one line naming both, a checkpoint whose model is not the one ``run``'s recipe builds
    (another size, another recipe copied into the folder): loading it would fail half-way, or train on."""
    saved = state.get("model") if isinstance(state, dict) else None
    if not isinstance(saved, dict):
        raise TrainingError(f"checkpoint {checkpoint} holds no model state; delete it to start over")
    own = model.state_dict()
    shapes = {k: tuple(getattr(v, "shape", ())) for k, v in saved.items()}
    wrong = sorted(k for k in own.keys() & shapes.keys() if shapes[k] != tuple(own[k].shape))
    missing, extra = sorted(own.keys() - shapes.keys()), sorted(shapes.keys() - own.keys())
    if not (wrong or missing or extra):
        return
    if wrong:
        first = f"{wrong[0]} is {shapes[wrong[0]]} there, {tuple(own[wrong[0]].shape)} here"
    else:
        first = f"{(missing or extra)[0]} is {'missing there' if missing else 'not in this model'}"
    raise TrainingError(
        f"checkpoint {checkpoint} is of another model ({describe_model(saved)}) than {run} "
        f"({describe_model(own)}): {first}; resume it with the recipe that wrote it"
    )
