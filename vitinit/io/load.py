"""Open a checkpoint file or folder without trusting it, as a tree of lazy tensors.

Formats: PyTorch zip pickles (``.pth``, ``.pth.tar``, ``.bin``, ``.pt``), legacy (pre-1.6, non-zip) pickles,
``.safetensors``, and Hugging Face folders (``config.json`` + weights).

Nothing is loaded when a checkpoint is opened: every tensor is a :class:`LazyTensor` that reads its own bytes
when :meth:`LazyTensor.load` is called, so a conversion can stream a multi-GB file one tensor at a time.

* zip pickles: ``data.pkl`` is read by :class:`_StreamingUnpickler`, a :class:`pickle.Unpickler` whose
  ``find_class`` only hands out a short allow-list (``OrderedDict``, tensor rebuild functions replaced by
  descriptor builders, storage type markers, ``argparse.Namespace``, ...). Each tensor remembers its byte
  range inside the (stored, uncompressed) zip entry and ``os.preadv``s exactly those bytes into a fresh
  buffer. Why not ``torch.load(mmap=True)``: the mapped pages count towards RSS as they are read and stay
  there until the whole checkpoint is dropped, so peak memory still reaches the file size
  (shared/reference/performance.md).
* Anything outside that allow-list (or a compressed entry, big-endian data, conj/neg bits) is handed to
  ``torch.load(weights_only=True)``, torch's own restricted unpickler: it either loads the file (eagerly, with
  mmap) or refuses it. So a pickle that asks for ``os.system`` is refused by both and never executed.
* legacy pickles cannot be read lazily: ``torch.load(weights_only=True)`` loads them whole.
* safetensors: ``safe_open(..., backend="pread")`` keeps the file closed to mmap, so reading one tensor
  costs that tensor's bytes and nothing stays mapped.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import logging
import os
import pickle
import pickletools
import re
import struct
import sys
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from vitinit.canonical import LazyTensor
from vitinit.errors import CheckpointFormatError, UnsafeCheckpointError

log = logging.getLogger(__name__)

# Globals that released checkpoints are known to hold besides tensors. argparse.Namespace appears in MAE and
# DeiT training checkpoints (their 'args'); it only stores attributes, so rebuilding it runs no user code.
SAFE_EXTRA_GLOBALS: list[Any] = [argparse.Namespace]

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


# ---------------------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------------------

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_SAFETENSORS_DTYPES = SAFETENSORS_DTYPES  # old private name, kept for callers of the first version


def _open_safetensors(path: Path) -> RawCheckpoint:
    from safetensors import SafetensorError, safe_open

    try:
        # pread: a tensor's bytes are read into its own buffer on get_tensor; nothing stays mapped, so
        # streaming a file through keeps RSS at the largest tensor (the mmap backend ends at the file size).
        handle = safe_open(str(path), framework="pt", backend="pread")
        tree = {}
        for k in handle.keys():
            sl = handle.get_slice(k)
            dtype_name = sl.get_dtype()
            if dtype_name not in SAFETENSORS_DTYPES:
                raise CheckpointFormatError(f"{path}: tensor {k!r} has unsupported dtype {dtype_name}")
            tree[k] = LazyTensor(
                tuple(sl.get_shape()), SAFETENSORS_DTYPES[dtype_name], _SafetensorsReader(handle, path, k)
            )
        metadata = handle.metadata() or {}
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as e:
        if isinstance(e, CheckpointFormatError):
            raise
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    return RawCheckpoint(path, tree, "safetensors", metadata=dict(metadata))


class _SafetensorsReader:
    """Loader of one safetensors tensor; a read error becomes a one-line :class:`CheckpointFormatError`."""

    def __init__(self, handle: Any, path: Path, key: str):
        self.handle, self.path, self.key = handle, path, key

    def __call__(self) -> torch.Tensor:
        from safetensors import SafetensorError

        try:
            return self.handle.get_tensor(self.key)
        except (SafetensorError, OSError) as e:
            msg = f"{self.path}: cannot read tensor {self.key!r} ({_first_line(e)})"
            raise CheckpointFormatError(msg) from None


# ---------------------------------------------------------------------------------------------------------
# PyTorch pickles
# ---------------------------------------------------------------------------------------------------------


def _open_torch(path: Path) -> RawCheckpoint:
    if zipfile.is_zipfile(path):
        try:
            tree = _open_torch_zip_streaming(path)
            return RawCheckpoint(path, tree, "torch-zip")
        except _NotStreamable as why:
            # torch's weights_only unpickler is the authority on what is safe: it loads what it allows
            # (eagerly, memory-mapped) and refuses the rest, unexecuted.
            log.info("%s: cannot stream (%s); using torch.load(weights_only=True, mmap=True)", path, why)
            return RawCheckpoint(path, _lazify(_torch_load(path, mmap=True)), "torch-zip")
    return RawCheckpoint(path, _lazify(_torch_load(path, mmap=False)), "torch-legacy")


def _torch_load(path: Path, *, mmap: bool) -> Mapping:
    try:
        with torch.serialization.safe_globals(SAFE_EXTRA_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": noise for a CLI user
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise UnsafeCheckpointError(
                f"{path}: refused to unpickle an object outside the allow-list ({_unsafe_global(path, e)}); "
                "nothing in the file was executed"
            ) from None
        raise CheckpointFormatError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


class _NotStreamable(Exception):
    """The zip pickle needs something the streaming reader does not handle; torch.load decides instead."""


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: torch.dtype
    numel: int  # in elements of dtype


class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co. in the pickle: only its dtype matters."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


_STORAGE_TYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ZipTensorFile:
    """One open handle on a zip checkpoint plus the byte offset of every ``data/<key>`` entry."""

    def __init__(self, path: Path, handle: BinaryIO, entries: dict[str, zipfile.ZipInfo]):
        self.path, self.handle, self.entries = path, handle, entries
        self.size = os.fstat(handle.fileno()).st_size
        self._offsets: dict[str, int] = {}

    def data_offset(self, key: str) -> int:
        """File offset of entry ``key``'s first byte (behind its local header, which carries padding)."""
        if key not in self._offsets:
            info = self.entries.get(key)
            if info is None:
                raise CheckpointFormatError(f"{self.path}: tensor data record {key!r} is missing")
            if info.compress_type != zipfile.ZIP_STORED:
                raise _NotStreamable(f"record {key} is compressed")
            header = os.pread(self.handle.fileno(), 30, info.header_offset)
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise CheckpointFormatError(f"{self.path}: corrupt zip local header for record {key!r}")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            self._offsets[key] = info.header_offset + 30 + name_len + extra_len
        return self._offsets[key]

    def read(self, offset: int, nbytes: int) -> torch.Tensor:
        """``nbytes`` bytes at ``offset`` as a fresh uint8 tensor, read straight into its memory."""
        if offset + nbytes > self.size:
            raise CheckpointFormatError(f"{self.path}: file is truncated (tensor data runs past its end)")
        buf = torch.empty(nbytes, dtype=torch.uint8)
        view = memoryview(buf.numpy()).cast("B")
        done = 0
        while done < nbytes:
            n = os.preadv(self.handle.fileno(), [view[done:]], offset + done)
            if n <= 0:
                raise CheckpointFormatError(f"{self.path}: file is truncated (short read)")
            done += n
        return buf


class _ZipTensorReader:
    """Loader of one tensor of a zip checkpoint: reads only the bytes its view spans."""

    def __init__(self, file: _ZipTensorFile, storage: _StorageRef, offset: int, size: tuple, stride: tuple):
        self.file, self.storage, self.offset, self.size, self.stride = file, storage, offset, size, stride

    def __call__(self) -> torch.Tensor:
        itemsize = self.storage.dtype.itemsize
        if any(s == 0 for s in self.size):
            return torch.empty(self.size, dtype=self.storage.dtype)
        # Elements the view spans in its storage (a transposed or sliced view spans more than its numel).
        extent = 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if self.offset + extent > self.storage.numel:
            raise CheckpointFormatError(
                f"{self.file.path}: a tensor view runs past its storage record {self.storage.key!r}"
            )
        start = self.file.data_offset(self.storage.key) + self.offset * itemsize
        flat = self.file.read(start, extent * itemsize).view(self.storage.dtype)
        if _is_compact(self.size, self.stride):
            return flat.view(self.size)
        # A strided view (e.g. a transposed weight) is copied out so that the caller never keeps a larger
        # buffer alive than the tensor itself.
        return torch.as_strided(flat, self.size, self.stride).contiguous()

    @property
    def byte_range(self) -> tuple[int, int] | None:
        """(file offset, nbytes) when the tensor is one compact run of bytes in the file, else None.

        Lets a writer copy a tensor that passes through unchanged without bringing it into Python.
        """
        if not _is_compact(self.size, self.stride):
            return None
        numel = 1
        for n in self.size:
            numel *= n
        itemsize = self.storage.dtype.itemsize
        return self.file.data_offset(self.storage.key) + self.offset * itemsize, numel * itemsize


def _is_compact(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """True when (size, stride) is C-contiguous (dims of size 1 may carry any stride)."""
    expected = 1
    for n, s in zip(reversed(size), reversed(stride), strict=True):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


# What data.pkl may name, besides the storage types: harmless constructors ...
_STREAMING_PLAIN_GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,
    "argparse.Namespace": argparse.Namespace,
    "torch.Size": torch.Size,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
}
# ... and torch's tensor rebuild functions, replaced by the unpickler's descriptor builders (method names).
_STREAMING_REBUILDERS = {
    "torch._utils._rebuild_tensor_v2": "_rebuild_tensor_v2",
    "torch._utils._rebuild_tensor": "_rebuild_tensor",
    "torch._utils._rebuild_parameter": "_rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state": "_rebuild_parameter",
}


class _StreamingUnpickler(pickle.Unpickler):
    """Reads ``data.pkl`` of a zip checkpoint into plain containers whose tensors are :class:`LazyTensor`.

    Only the globals below can be named by the pickle; the tensor rebuild functions are replaced by
    functions that build descriptors, so nothing here can run code the file asks for (the restricted
    ``find_class`` pattern of the Python ``pickle`` documentation).
    """

    def __init__(self, data: BinaryIO, file: _ZipTensorFile):
        super().__init__(data)
        self.file = file
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if module == "torch" and name in _STORAGE_TYPES:
            return _StorageType(_STORAGE_TYPES[name])
        if qualified in _STREAMING_REBUILDERS:
            return getattr(self, _STREAMING_REBUILDERS[qualified])
        if qualified in _STREAMING_PLAIN_GLOBALS:
            return _STREAMING_PLAIN_GLOBALS[qualified]
        raise _NotStreamable(f"global {qualified}")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _NotStreamable(f"persistent id {str(pid)[:60]}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise _NotStreamable(f"storage type {storage_type!r}")
        ref = _StorageRef(str(key), storage_type.dtype, int(numel))
        self.storages.setdefault(ref.key, ref)
        return self.storages[ref.key]

    def _rebuild_tensor(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple) -> LazyTensor:
        if not isinstance(storage, _StorageRef):
            raise CheckpointFormatError(f"{self.file.path}: malformed tensor record in data.pkl")
        size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
        if len(size) != len(stride) or any(s < 0 for s in size + stride) or offset < 0:
            raise CheckpointFormatError(f"{self.file.path}: malformed tensor record in data.pkl")
        reader = _ZipTensorReader(self.file, storage, int(offset), size, stride)
        return LazyTensor(size, storage.dtype, reader)

    def _rebuild_tensor_v2(self, storage, offset, size, stride, requires_grad, hooks, metadata=None):
        if metadata:  # conj/neg bits: rare, let torch handle them
            raise _NotStreamable("tensor metadata")
        return self._rebuild_tensor(storage, offset, size, stride)

    @staticmethod
    def _rebuild_parameter(data: LazyTensor, requires_grad: bool, hooks: Any, state: Any = None) -> Any:
        return data  # a Parameter is its data here: requires_grad means nothing to a converter


def _open_torch_zip_streaming(path: Path) -> dict[str, Any]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointFormatError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointFormatError(f"{path}: zip file without a PyTorch data.pkl record")
        prefix = pickles[0].rsplit("/", 1)[0] + "/"
        byteorder = prefix + "byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).decode() != sys.byteorder:
            raise _NotStreamable("byte order differs from this machine's")
        entries = {
            info.filename[len(prefix + "data/"):]: info
            for info in archive.infolist()
            if info.filename.startswith(prefix + "data/")
        }
        try:
            data = archive.read(pickles[0])
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise CheckpointFormatError(f"{path}: corrupt data.pkl ({_first_line(e)})") from None
    # The handle stays open as long as any LazyTensor refers to it (the GC closes it).
    handle = open(path, "rb")
    file = _ZipTensorFile(path, handle, entries)
    try:
        obj = _unpickle_lazily(data, file)
    except BaseException:
        handle.close()
        raise
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return _lazify(obj)


def _unpickle_lazily(data: bytes, file: _ZipTensorFile) -> Any:
    """Unpickle ``data.pkl``; check every storage record against the zip before any tensor is read."""
    unpickler = _StreamingUnpickler(io.BytesIO(data), file)
    try:
        obj = unpickler.load()
    except (_NotStreamable, CheckpointFormatError):
        raise
    except Exception as e:  # a malformed pickle raises anything from UnpicklingError to TypeError
        raise CheckpointFormatError(f"{file.path}: corrupt data.pkl ({_first_line(e)})") from None
    for ref in unpickler.storages.values():
        info = file.entries.get(ref.key)
        nbytes = ref.numel * ref.dtype.itemsize
        if info is None:
            raise CheckpointFormatError(f"{file.path}: tensor data record {ref.key!r} is missing")
        if info.file_size < nbytes:
            raise CheckpointFormatError(f"{file.path}: tensor data record {ref.key!r} is too short")
        if file.data_offset(ref.key) + nbytes > file.size:  # also: _NotStreamable for a compressed record
            raise CheckpointFormatError(f"{file.path}: file is truncated (tensor data runs past its end)")
    return obj


def _unsafe_global(path: Path, e: Exception) -> str:
    """Name the global that made torch refuse the file, from its message or by scanning the pickle."""
    match = re.search(r"GLOBAL ([\w.]+)", str(e))
    if match:
        return f"global {match.group(1)}"
    found = _first_unknown_global(path)
    return f"global {found}" if found else "unsupported pickle content"


def _known_safe_globals() -> set[str]:
    names = set(_STREAMING_PLAIN_GLOBALS) | set(_STREAMING_REBUILDERS)
    names |= {f"torch.{n}" for n in _STORAGE_TYPES}
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
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                streams = [archive.read(name)]
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


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(e).__name__
