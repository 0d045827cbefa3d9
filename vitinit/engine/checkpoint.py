"""Checkpoints of our own trainer: written atomically, refused in one line when empty, cut or corrupt.

A killed job or a full disk leaves exactly those behind, and ``--resume`` must say so before it builds
anything (``check_checkpoint`` reads no tensor).
"""

from __future__ import annotations

import pickle
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
