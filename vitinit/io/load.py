"""Open a checkpoint file or folder without trusting it, as a tree of lazy tensors.

Formats: PyTorch zip pickles (``.pth``, ``.pth.tar``, ``.bin``, ``.pt``), ``.safetensors``, and Hugging Face
folders (``config.json`` + weights). Pickles are read with ``torch.load(weights_only=True)`` plus a short
allow-list of the harmless globals real training checkpoints carry; anything else is refused unexecuted.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitinit.canonical import LazyTensor
from vitinit.errors import CheckpointFormatError, UnsafeCheckpointError

# Globals that released checkpoints are known to hold besides tensors. argparse.Namespace appears in MAE and
# DeiT training checkpoints (their 'args'); it only stores attributes, so rebuilding it runs no user code.
SAFE_EXTRA_GLOBALS: list[Any] = []
try:
    import argparse

    SAFE_EXTRA_GLOBALS.append(argparse.Namespace)
except ImportError:  # pragma: no cover
    pass

WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class RawCheckpoint:
    """A checkpoint as stored: a nested tree whose leaves are :class:`LazyTensor` or plain values."""

    path: Path
    tree: dict[str, Any]
    container: str  # "torch-zip", "torch-legacy", "safetensors", "hf-folder"
    config: dict | None = None  # config.json of a Hugging Face folder
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors header metadata

    def tensors(self, prefix: str = "") -> dict[str, LazyTensor]:
        """Flattened ``{key: LazyTensor}`` of the subtree at ``prefix`` (a key path joined by '/')."""
        node: Any = self.tree
        for part in filter(None, prefix.split("/")):
            node = node[part]
        return dict(_flatten_tensors(node))

    def top_keys(self) -> list[str]:
        return list(self.tree)


def _flatten_tensors(node: Any, prefix: str = "") -> Iterator[tuple[str, LazyTensor]]:
    if isinstance(node, LazyTensor):
        yield prefix, node
    elif isinstance(node, Mapping):
        for k, v in node.items():
            # Inside a state dict keys already carry dots; nesting only comes from containers.
            yield from _flatten_tensors(v, f"{prefix}.{k}" if prefix else str(k))


def _lazify(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return LazyTensor.of(obj)
    if isinstance(obj, Mapping):
        return {str(k): _lazify(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_lazify(v) for v in obj)
    return obj


def open_checkpoint(path: str | Path) -> RawCheckpoint:
    """Open ``path`` (file or Hugging Face folder) without executing anything it contains."""
    path = Path(path)
    if not path.exists():
        raise CheckpointFormatError(f"{path}: no such file or folder")
    if path.is_dir():
        return _open_hf_folder(path)
    if path.stat().st_size == 0:
        raise CheckpointFormatError(f"{path}: file is empty")
    if path.suffix == ".safetensors":
        return _open_safetensors(path)
    return _open_torch(path)


def _open_hf_folder(path: Path) -> RawCheckpoint:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointFormatError(f"{path}: a folder source must hold a Hugging Face config.json")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointFormatError(f"{cfg_file}: not valid JSON ({e.msg})") from None
    for name in WEIGHT_FILE_NAMES:
        if (path / name).is_file():
            inner = open_checkpoint(path / name)
            return RawCheckpoint(path, inner.tree, "hf-folder", config=config, metadata=inner.metadata)
    raise CheckpointFormatError(f"{path}: no {' or '.join(WEIGHT_FILE_NAMES)} beside config.json")


def _open_safetensors(path: Path) -> RawCheckpoint:
    from safetensors import SafetensorError, safe_open

    try:
        f = safe_open(str(path), framework="pt")
        keys = list(f.keys())
        tree = {}
        for k in keys:
            sl = f.get_slice(k)
            shape = tuple(sl.get_shape())
            dtype = _SAFETENSORS_DTYPES[sl.get_dtype()]
            tree[k] = LazyTensor(shape, dtype, lambda k=k: f.get_tensor(k))
        metadata = f.metadata() or {}
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    return RawCheckpoint(path, tree, "safetensors", metadata=dict(metadata))


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _open_torch(path: Path) -> RawCheckpoint:
    is_zip = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(SAFE_EXTRA_GLOBALS):
            # mmap keeps tensors on disk until touched; legacy (non-zip) pickles cannot be mapped.
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        msg = _first_line(e)
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise UnsafeCheckpointError(
                f"{path}: refused to unpickle an object outside the allow-list ({_unsafe_global(e)}); "
                "nothing in the file was executed"
            ) from None
        raise CheckpointFormatError(f"{path}: not a readable PyTorch checkpoint ({msg})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return RawCheckpoint(path, _lazify(obj), "torch-zip" if is_zip else "torch-legacy")


def _unsafe_global(e: Exception) -> str:
    text = str(e)
    marker = "Unsupported global: GLOBAL "
    if marker in text:
        return text.split(marker, 1)[1].split()[0]
    return "unsupported global"


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(e).__name__
