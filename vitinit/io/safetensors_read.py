"""safetensors files, read lazily: each tensor's bytes are read when it is loaded, never the file at once."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch

from vitinit.errors import CheckpointFormatError, first_line
from vitinit.io.lazy import LazyTensor
from vitinit.io.pread import pread_exact

__all__ = ["SAFETENSORS_DTYPES", "open_safetensors_lazily"]

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def open_safetensors_lazily(path: Path) -> tuple[dict[str, LazyTensor], dict[str, str]]:
    """A safetensors file's tensors as :class:`LazyTensor` (read on ``load()``) and its metadata."""
    from safetensors import SafetensorError, safe_open

    try:
        # pread: a tensor's bytes are read into its own buffer on get_tensor; nothing stays mapped, so
        # streaming a file through keeps RSS at the largest tensor (the mmap backend ends at the file size).
        handle = safe_open(str(path), framework="pt", backend="pread")
        ranges = _SafetensorsRanges(path)
        tree = {}
        for k in handle.keys():
            sl = handle.get_slice(k)
            dtype_name = sl.get_dtype()
            if dtype_name not in SAFETENSORS_DTYPES:
                raise CheckpointFormatError(f"{path}: tensor {k!r} has unsupported dtype {dtype_name}")
            shape, dtype = tuple(sl.get_shape()), SAFETENSORS_DTYPES[dtype_name]
            tree[k] = LazyTensor(
                shape, dtype, _SafetensorsReader(handle, path, k), ranges.reader(k, shape, dtype)
            )
        metadata = handle.metadata() or {}
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as e:
        if isinstance(e, CheckpointFormatError):
            raise
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({first_line(e)})") from None
    return tree, dict(metadata)


class _SafetensorsReader:
    """Loader of one safetensors tensor; a read error becomes a one-line :class:`CheckpointFormatError`."""

    def __init__(self, handle: Any, path: Path, key: str):
        self.handle, self.path, self.key = handle, path, key

    def __call__(self) -> torch.Tensor:
        from safetensors import SafetensorError

        try:
            return self.handle.get_tensor(self.key)
        except (SafetensorError, OSError) as e:
            msg = f"{self.path}: cannot read tensor {self.key!r} ({first_line(e)})"
            raise CheckpointFormatError(msg) from None


class _SafetensorsRanges:
    """Where each tensor's bytes lie in a safetensors file, for :attr:`LazyTensor.read_into`.

    safetensors' ``safe_open`` has validated the header by the time this reads it again (safetensors does
    not expose the offsets); a header over :data:`MAX_HEADER_BYTES`, or an entry whose range disagrees with
    its shape and dtype, just gets no ``read_into``, and its tensor is read by ``get_tensor``.
    """

    MAX_HEADER_BYTES = 16 << 20

    def __init__(self, path: Path):
        self.path, self.offsets = path, {}
        self.file = open(path, "rb", buffering=0)  # noqa: SIM115 - lives as long as the tensors that read it
        (length,) = struct.unpack("<Q", os.pread(self.file.fileno(), 8, 0).ljust(8, b"\0"))
        if length > self.MAX_HEADER_BYTES:
            return
        header = json.loads(os.pread(self.file.fileno(), length, 8))
        for key, entry in header.items():
            offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
            if isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets):
                self.offsets[key] = (8 + length + offsets[0], offsets[1] - offsets[0])

    def reader(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> Any:
        offset, nbytes = self.offsets.get(key, (0, -1))
        numel = 1
        for n in shape:
            numel *= n
        if nbytes != numel * dtype.itemsize:
            return None

        def read_into(view: memoryview, start: int) -> None:
            if start < 0 or start + len(view) > nbytes:
                raise ValueError(f"bytes {start}..{start + len(view)} are outside {key!r} ({nbytes})")
            pread_exact(self.file.fileno(), offset + start, view, self.path)

        return read_into
