"""Stream the tensors of a PyTorch zip checkpoint without unpickling anything the file asks for.

A ``torch.save`` file is a zip archive: ``<name>/data.pkl`` is a pickle of the containers (dicts, Namespaces,
...) whose tensors point by key at raw storage records ``<name>/data/<key>``, which torch writes *stored*
(uncompressed). So every tensor can be read with ``os.preadv`` straight from its byte
range in the file, into a fresh buffer, when its :class:`LazyTensor` is loaded -- one tensor at a time, and
nothing stays mapped (``torch.load(mmap=True)`` ends with the whole file in RSS).

``data.pkl`` is read by :class:`_StreamingUnpickler`, whose ``find_class`` only hands out a short allow-list
(harmless constructors, storage type markers, and torch's tensor rebuild functions replaced by descriptor
builders), so the pickle can name nothing that runs code. Anything outside what this reader handles (another
global, a foreign byte order, conj/neg bits) raises :class:`NotStreamable`, and
:func:`vitinit.io.load.open_checkpoint` hands the file to ``torch.load(weights_only=True)`` instead.

Hostile archives are refused before anything is allocated (:mod:`vitinit.io.zip_checks`: duplicate entry
names, compressed tensor records, a ``data.pkl`` bomb), and so is a tensor whose shape needs more bytes than
its storage record holds (a stride-0 view "expanded" to terabytes in a 1 KB file).
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import struct
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from vitinit.errors import CheckpointFormatError, first_line
from vitinit.io.lazy import LazyTensor
from vitinit.io.pread import pread_exact
from vitinit.io.zip_checks import check_archive, read_record


class NotStreamable(Exception):
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
            header = os.pread(self.handle.fileno(), 30, info.header_offset)
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise CheckpointFormatError(f"{self.path}: corrupt zip local header for record {key!r}")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            self._offsets[key] = info.header_offset + 30 + name_len + extra_len
        return self._offsets[key]

    def read(self, offset: int, nbytes: int) -> torch.Tensor:
        """``nbytes`` bytes at ``offset`` as a fresh uint8 tensor, read straight into its memory."""
        buf = torch.empty(nbytes, dtype=torch.uint8)
        self.read_into(offset, memoryview(buf.numpy()).cast("B"))
        return buf

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` with the bytes at ``offset``; a file that ends first is a format error."""
        if offset + len(view) > self.size:
            raise CheckpointFormatError(f"{self.path}: file is truncated (tensor data runs past its end)")
        pread_exact(self.handle.fileno(), offset, view, self.path)


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
    def compact(self) -> bool:
        """Whether the tensor is one run of bytes in the file (then :meth:`read_into` applies)."""
        return _is_compact(self.size, self.stride)

    def read_into(self, view: memoryview, start: int) -> None:
        """The tensor's bytes from byte ``start`` into ``view``, straight from the file (compact only)."""
        itemsize = self.storage.dtype.itemsize
        numel = 1
        for n in self.size:
            numel *= n
        if not self.compact:
            raise RuntimeError(f"storage {self.storage.key!r}: read_into needs a compact view")
        if self.offset + numel > self.storage.numel:
            raise CheckpointFormatError(
                f"{self.file.path}: a tensor view runs past its storage record {self.storage.key!r}"
            )
        if start < 0 or start + len(view) > numel * itemsize:
            raise ValueError(f"bytes {start}..{start + len(view)} are outside the tensor ({numel} items)")
        self.file.read_into(self.file.data_offset(self.storage.key) + self.offset * itemsize + start, view)


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
        raise NotStreamable(f"global {qualified}")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise NotStreamable(f"persistent id {str(pid)[:60]}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise NotStreamable(f"storage type {storage_type!r}")
        ref = _StorageRef(str(key), storage_type.dtype, int(numel))
        self.storages.setdefault(ref.key, ref)
        return self.storages[ref.key]

    def _rebuild_tensor(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple) -> LazyTensor:
        if not isinstance(storage, _StorageRef):
            raise CheckpointFormatError(f"{self.file.path}: malformed tensor record in data.pkl")
        size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
        if len(size) != len(stride) or any(s < 0 for s in size + stride) or offset < 0:
            raise CheckpointFormatError(f"{self.file.path}: malformed tensor record in data.pkl")
        numel = 1
        for n in size:
            numel *= n
        if numel > storage.numel:  # loading copies the view out: it must fit in the bytes the file holds
            raise CheckpointFormatError(
                f"{self.file.path}: a tensor of shape {list(size)} ({numel * storage.dtype.itemsize} bytes) "
                f"claims more data than its storage record {storage.key!r} holds "
                f"({storage.numel * storage.dtype.itemsize} bytes)"
            )
        reader = _ZipTensorReader(self.file, storage, int(offset), size, stride)
        return LazyTensor(size, storage.dtype, reader, reader.read_into if reader.compact else None)

    def _rebuild_tensor_v2(self, storage, offset, size, stride, requires_grad, hooks, metadata=None):
        if metadata:  # conj/neg bits: rare, let torch handle them
            raise NotStreamable("tensor metadata")
        return self._rebuild_tensor(storage, offset, size, stride)

    @staticmethod
    def _rebuild_parameter(data: LazyTensor, requires_grad: bool, hooks: Any, state: Any = None) -> Any:
        return data  # a Parameter is its data here: requires_grad means nothing to a converter


def open_torch_zip_streaming(path: Path) -> Mapping:
    """The unpickled ``data.pkl`` of ``path``, its tensors :class:`LazyTensor` reading from the file.

    Raises :class:`NotStreamable` when ``torch.load(weights_only=True)`` must decide instead, and
    :class:`CheckpointFormatError` for an archive no reader should trust (see the module docstring).
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointFormatError(f"{path}: not a readable PyTorch checkpoint ({first_line(e)})") from None
    with archive:
        check_archive(path, archive)
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointFormatError(f"{path}: zip file without a PyTorch data.pkl record")
        prefix = pickles[0].rsplit("/", 1)[0] + "/"
        byteorder = prefix + "byteorder"
        order = read_record(path, archive, byteorder, 16) if byteorder in archive.namelist() else None
        if order is not None and order != sys.byteorder.encode():
            raise NotStreamable("byte order differs from this machine's")
        entries = {
            info.filename[len(prefix + "data/"):]: info
            for info in archive.infolist()
            if info.filename.startswith(prefix + "data/")
        }
        data = read_record(path, archive, pickles[0])
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
    return obj


STREAMING_GLOBALS = frozenset(
    [*_STREAMING_PLAIN_GLOBALS, *_STREAMING_REBUILDERS, *(f"torch.{n}" for n in _STORAGE_TYPES)]
)
"""Every global a ``data.pkl`` may name for this reader (used to name the culprit of a refused file)."""


def _unpickle_lazily(data: bytes, file: _ZipTensorFile) -> Any:
    """Unpickle ``data.pkl``; check every storage record against the zip before any tensor is read."""
    unpickler = _StreamingUnpickler(io.BytesIO(data), file)
    try:
        obj = unpickler.load()
    except (NotStreamable, CheckpointFormatError):
        raise
    except Exception as e:  # a malformed pickle raises anything from UnpicklingError to TypeError
        raise CheckpointFormatError(f"{file.path}: corrupt data.pkl ({first_line(e)})") from None
    for ref in unpickler.storages.values():
        info = file.entries.get(ref.key)
        nbytes = ref.numel * ref.dtype.itemsize
        if info is None:
            raise CheckpointFormatError(f"{file.path}: tensor data record {ref.key!r} is missing")
        if info.file_size < nbytes:
            raise CheckpointFormatError(f"{file.path}: tensor data record {ref.key!r} is too short")
        if file.data_offset(ref.key) + nbytes > file.size:
            raise CheckpointFormatError(f"{file.path}: file is truncated (tensor data runs past its end)")
    return obj


