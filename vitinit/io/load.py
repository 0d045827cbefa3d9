"""Open a checkpoint file or folder without trusting it, as a tree of lazy tensors.

Formats: PyTorch zip pickles (``.pth``, ``.pth.tar``, ``.bin``, ``.pt``), legacy (pre-1.6, non-zip) pickles,
``.safetensors``, and Hugging Face folders (``config.json`` + weights).

Nothing is loaded when a checkpoint is opened: every tensor is a :class:`LazyTensor` that reads its own bytes
when :meth:`LazyTensor.load` is called, so a conversion can stream a multi-GB file one tensor at a time.

* zip pickles: streamed by :mod:`vitinit.io.torch_zip`, whose unpickler hands ``data.pkl`` only a short
  allow-list of globals; each tensor ``os.preadv``s exactly its own bytes from the (stored, uncompressed)
  zip entry. Why not ``torch.load(mmap=True)``: the mapped pages count towards RSS as they are read and stay
  there until the whole checkpoint is dropped, so peak memory still reaches the file size.
* Anything outside that allow-list (big-endian data, conj/neg bits) is handed to
  ``torch.load(weights_only=True)``, torch's own restricted unpickler: it either loads the file (eagerly, with
  mmap) or refuses it. So a pickle that asks for ``os.system`` is refused by both and never executed.
* legacy pickles cannot be read lazily: ``torch.load(weights_only=True)`` loads them whole.
* safetensors: ``safe_open(..., backend="pread")`` keeps the file closed to mmap, so reading one tensor
  costs that tensor's bytes and nothing stays mapped.
"""

from __future__ import annotations

import argparse
import io
import logging
import pickletools
import re
import tarfile
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitinit.errors import CheckpointFormatError, UnsafeCheckpointError, first_line, quote
from vitinit.io.files import read_json
from vitinit.io.lazy import LazyTensor
from vitinit.io.safetensors_read import open_safetensors_lazily
from vitinit.io.torch_zip import STREAMING_GLOBALS, NotStreamable, open_torch_zip_streaming
from vitinit.io.zip_checks import check_archive, read_record

log = logging.getLogger(__name__)

# Globals that released checkpoints are known to hold besides tensors. argparse.Namespace appears in MAE and
# DeiT training checkpoints (their 'args'); it only stores attributes, so rebuilding it runs no user code.
SAFE_EXTRA_GLOBALS: list[Any] = [argparse.Namespace]

WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin")
# open_clip's hub folder (open_clip.constants): its config and weights names.
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHT_FILE_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass
class RawCheckpoint:
    """A checkpoint as stored: a nested tree whose leaves are :class:`LazyTensor` or plain values."""

    path: Path
    tree: dict[str, Any]
    # "torch-zip", "torch-legacy", "safetensors", "hf-folder", "timm-folder", "open_clip-folder"
    container: str
    config: dict | None = None  # a folder's config.json (transformers, timm) or open_clip_config.json
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors header metadata

    def tensors(self, prefix: str = "") -> dict[str, LazyTensor]:
        """Flattened ``{key: LazyTensor}`` of the subtree at ``prefix`` (a key path joined by '/')."""
        node: Any = self.tree
        for part in filter(None, prefix.split("/")):
            node = node[part]
        return dict(_flatten_tensors(node))


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
    """Open ``path`` (file or Hugging Face folder) without executing anything it contains.

    Tensors are not read here: each leaf is a :class:`LazyTensor` whose ``load()`` reads its bytes.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointFormatError(f"{path}: no such file or folder")
    if path.is_dir():
        return _open_hf_folder(path)
    if path.stat().st_size == 0:
        raise CheckpointFormatError(f"{path}: file is empty")
    if path.suffix == ".safetensors":
        return _open_safetensors(path)
    try:
        return _open_torch(path)
    except RecursionError:  # a pickle nested thousands deep: no checkpoint looks like that
        msg = f"{path}: not a readable PyTorch checkpoint (nested too deeply)"
        raise CheckpointFormatError(msg) from None


def _open_hf_folder(path: Path) -> RawCheckpoint:
    """A transformers folder ("hf-folder") or a timm one ("timm-folder": its config.json names an
    ``architecture`` and has no ``model_type``); ``config`` carries the config.json to the readers.
    A folder with open_clip's ``open_clip_config.json`` and no config.json is an "open_clip-folder"."""
    if not (path / "config.json").is_file() and (path / OPEN_CLIP_CONFIG).is_file():
        return _open_open_clip_folder(path)
    if not (path / "config.json").is_file():
        raise CheckpointFormatError(f"{path}: a folder source must hold a Hugging Face config.json")
    config = read_json(path / "config.json", error=CheckpointFormatError, what="Hugging Face config")
    if not isinstance(config, dict):
        raise CheckpointFormatError(f"{path}: config.json is not a JSON object")
    timm = "architecture" in config and "model_type" not in config
    for name in WEIGHT_FILE_NAMES:
        if (path / name).is_file():
            inner = open_checkpoint(path / name)
            kind = "timm-folder" if timm else "hf-folder"
            return RawCheckpoint(path, inner.tree, kind, config=config, metadata=inner.metadata)
    raise CheckpointFormatError(f"{path}: no {' or '.join(WEIGHT_FILE_NAMES)} beside config.json")


def _open_open_clip_folder(path: Path) -> RawCheckpoint:
    """open_clip's hub folder (``save_for_hf``): ``open_clip_config.json`` + its weights file."""
    config = read_json(path / OPEN_CLIP_CONFIG, error=CheckpointFormatError, what="open_clip config")
    if not isinstance(config, dict):
        raise CheckpointFormatError(f"{path}: {OPEN_CLIP_CONFIG} is not a JSON object")
    for name in OPEN_CLIP_WEIGHT_FILE_NAMES:
        if (path / name).is_file():
            inner = open_checkpoint(path / name)
            return RawCheckpoint(path, inner.tree, "open_clip-folder", config=config, metadata=inner.metadata)
    names = " or ".join(OPEN_CLIP_WEIGHT_FILE_NAMES)
    raise CheckpointFormatError(f"{path}: no {names} beside {OPEN_CLIP_CONFIG}")


# ---------------------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------------------

def _open_safetensors(path: Path) -> RawCheckpoint:
    tree, metadata = open_safetensors_lazily(path)
    return RawCheckpoint(path, tree, "safetensors", metadata=metadata)


# ---------------------------------------------------------------------------------------------------------
# PyTorch pickles
# ---------------------------------------------------------------------------------------------------------


def _open_torch(path: Path) -> RawCheckpoint:
    # First: a tar of .pth files passes is_zipfile (its last member's zip directory sits near the end).
    _refuse_tar(path)
    if zipfile.is_zipfile(path):
        try:
            tree = _lazify(open_torch_zip_streaming(path))
            return RawCheckpoint(path, tree, "torch-zip")
        except NotStreamable as why:
            # torch's weights_only unpickler is the authority on what is safe: it loads what it allows
            # (eagerly, memory-mapped) and refuses the rest, unexecuted.
            log.info("%s: cannot stream (%s); using torch.load(weights_only=True, mmap=True)", path, why)
            return RawCheckpoint(path, _lazify(_torch_load(path, mmap=True)), "torch-zip")
    return RawCheckpoint(path, _lazify(_torch_load(path, mmap=False)), "torch-legacy")


def _refuse_tar(path: Path) -> None:
    """A tar archive (``.pth.tar`` is usually just a name) is several files, not one checkpoint: refused
    rather than read as whichever member a reader reaches. torch's own pre-0.4 tar format is never seen in
    released checkpoints and is refused the same way."""
    try:
        with tarfile.open(path) as archive:  # also gzip/bz2/xz-compressed tars
            names = [member.name for _, member in zip(range(4), archive, strict=False)]
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return
    if not names:
        return
    shown = ", ".join(quote(n, 40) for n in names[:3]) + (", …" if len(names) > 3 else "")
    raise CheckpointFormatError(
        f"{path}: a tar archive ({shown}), not a checkpoint; extract it and pass the checkpoint file"
    )


def _torch_load(path: Path, *, mmap: bool) -> Mapping:
    try:
        with torch.serialization.safe_globals(SAFE_EXTRA_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": noise for a CLI user
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        refused = "weights_only" in str(e) or "Unsupported global" in str(e)
        culprit = _unsafe_global(path, e) if refused else None
        if culprit is not None:
            raise UnsafeCheckpointError(
                f"{path}: refused to unpickle an object outside the allow-list ({culprit}); "
                "nothing in the file was executed"
            ) from None
        # Not torch's first line: it advises re-running with weights_only=False, which is what an
        # untrusted file must never get.
        cause = str(e).split("WeightsUnpickler error:", 1)[-1] if refused else str(e)
        raise CheckpointFormatError(
            f"{path}: not a readable PyTorch checkpoint ({first_line(ValueError(cause))})"
        ) from None
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def _unsafe_global(path: Path, e: Exception) -> str | None:
    """Name the global that made torch refuse the file, from its message or by scanning the pickle."""
    match = re.search(r"GLOBAL ([\w.]+)", str(e))
    if match:
        return f"global {match.group(1)}"
    found = _first_unknown_global(path)
    return f"global {found}" if found else None  # no global to blame: the file is just not a checkpoint


def _known_safe_globals() -> set[str]:
    names = set(STREAMING_GLOBALS)
    try:  # torch's own allow-list (a private helper): used only to name the culprit in an error message
        from torch._weights_only_unpickler import _get_allowed_globals

        names |= set(_get_allowed_globals())
    except Exception:  # pragma: no cover - depends on the torch version
        pass
    return names


def _first_unknown_global(path: Path) -> str | None:
    """First global a pickle refers to that no allow-list knows; the opcodes are parsed, never executed."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                check_archive(path, archive)
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                streams = [read_record(path, archive, name)]
        else:
            streams = [path.read_bytes()[: 64 << 20]]  # legacy files: pickles come first, then raw storages
    except Exception:
        return None
    safe = _known_safe_globals()
    for blob in streams:
        stream = io.BytesIO(blob)
        while stream.tell() < len(blob):  # legacy files hold several pickles back to back
            strings: list[str] = []
            try:
                for op, arg, _pos in pickletools.genops(stream):
                    if isinstance(arg, str):
                        strings.append(arg)
                    if op.name == "GLOBAL":
                        qualified = arg.replace(" ", ".")
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        qualified = f"{strings[-2]}.{strings[-1]}"
                    else:
                        continue
                    if qualified not in safe:
                        return qualified
            except Exception:
                break  # reached the raw tensor bytes of a legacy file, or a corrupt stream
    return None


