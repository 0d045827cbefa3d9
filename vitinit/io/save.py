"""Write outputs atomically: a temp file beside the target, fsync, then rename.

A failure at any point leaves no file at the target path (and never touches the source).
:func:`write_safetensors` streams a dict of lazy tensors into a ``.safetensors`` file that way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from vitinit.canonical import LazyTensor
from vitinit.errors import OutputExistsError
from vitinit.io.load import SAFETENSORS_DTYPES
from vitinit.io.progress import byte_progress


def check_output_path(path: str | Path, *, overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    if path.exists() and path.is_dir():
        raise OutputExistsError(f"{path} is a folder, not a file")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the output the mode a plain open() would (0666 minus the umask).
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _current_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read into one reused buffer (no new allocation per chunk)."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Streaming safetensors writer
# ---------------------------------------------------------------------------------------------------------

# The reader's table, inverted: one list of the dtypes safetensors stores.
SAFETENSORS_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


def safetensors_header(
    tensors: Mapping[str, LazyTensor], metadata: Mapping[str, str] | None = None
) -> tuple[bytes, list[str]]:
    """The file prefix (8-byte length + JSON header) and the order in which tensor bytes must follow.

    Everything comes from declared shapes and dtypes, so the header exists before any tensor is read.
    Tensors are laid out by decreasing item size, then name (as ``safetensors.torch.save_file`` does), so
    every tensor starts at a multiple of its item size; the JSON is padded with spaces to 8 bytes.
    """
    if metadata is not None:
        bad = {k: type(v).__name__ for k, v in metadata.items()
               if not isinstance(v, str) or not isinstance(k, str)}
        if bad:
            raise TypeError(f"safetensors metadata keys and values must be str, got {bad}")
    order = sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k))
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        t = tensors[name]
        if t.dtype not in SAFETENSORS_DTYPE_NAMES:
            raise TypeError(f"tensor {name!r}: dtype {t.dtype} cannot be stored in safetensors")
        header[name] = {
            "dtype": SAFETENSORS_DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, order


def write_safetensors(
    path: str | Path,
    tensors: Mapping[str, LazyTensor],
    metadata: dict[str, str],
    *,
    overwrite: bool = False,
    progress: bool = False,
    late_metadata: Mapping[str, Callable[[], str]] | None = None,
) -> str:
    """Write ``tensors`` as a ``.safetensors`` file one tensor at a time; return the file's sha256.

    The header is computed from the declared shapes first, then each tensor is loaded, written and hashed,
    and dropped before the next one is loaded, so peak memory is about the largest tensor, never the
    checkpoint (``safetensors.torch.save_file`` needs every tensor in memory). The bytes go to a temp file
    beside ``path`` that is renamed into place only when complete: on any error, KeyboardInterrupt
    included, no file is left at ``path`` or beside it.

    ``late_metadata`` maps metadata keys to functions called only after every tensor is written (say, a
    source hash computed by another thread meanwhile). The header is written with the provisional values
    in ``metadata`` and rewritten in place at the end, so each final value must have the byte length of its
    provisional one; the file is then hashed from the page cache while it is flushed to disk.

    Example:
        >>> sha = write_safetensors("out.safetensors", {"w": LazyTensor.of(torch.zeros(2))}, {"k": "v"})
    """
    path = check_output_path(path, overwrite=overwrite)
    if late_metadata:
        return _write_with_late_metadata(path, tensors, metadata, late_metadata, progress=progress)
    prefix, order = safetensors_header(tensors, metadata)
    total = len(prefix) + sum(tensors[k].nbytes for k in order)
    digest = hashlib.sha256(prefix)
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as out,
        byte_progress(f"writing {path.name}", total, enabled=progress) as advance,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitinit-sha256") as hasher,
    ):
        out.write(prefix)
        advance(len(prefix))
        for name in order:
            data = _loaded_bytes(name, tensors[name])
            if len(data):
                # The hasher thread walks the same bytes while this one writes them, chunk by chunk, so each
                # chunk is read from memory about once (hashlib and file writes release the GIL). Whole-tensor
                # write-then-hash ran ~2x slower here: memory bandwidth, not CPU, bounds this loop.
                hashing = hasher.submit(_update_in_chunks, digest, data)
                for start in range(0, len(data), _CHUNK):
                    out.write(data[start : start + _CHUNK])
                hashing.result()
                advance(len(data))
            del data  # drop this tensor's buffer before the next one is read
    return digest.hexdigest()


_CHUNK = 1 << 20  # fits in L2 cache


def _write_with_late_metadata(
    path: Path,
    tensors: Mapping[str, LazyTensor],
    metadata: dict[str, str],
    late_metadata: Mapping[str, Callable[[], str]],
    *,
    progress: bool,
) -> str:
    """:func:`write_safetensors` when some metadata is only known after the data (see its docstring)."""
    missing = sorted(set(late_metadata) - set(metadata))
    if missing:
        raise ValueError(f"late metadata keys need a provisional value in metadata: {missing}")
    prefix, order = safetensors_header(tensors, metadata)
    total = len(prefix) + sum(tensors[k].nbytes for k in order)
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as out,
        byte_progress(f"writing {path.name}", total, enabled=progress) as advance,
    ):
        out.write(prefix)
        advance(len(prefix))
        for name in order:
            data = _loaded_bytes(name, tensors[name])
            out.write(data)
            advance(len(data))
            del data  # drop this tensor's buffer before the next one is read
        out.flush()  # the data reaches the kernel while the late values may still be computing
        final = {**metadata, **{k: str(get()) for k, get in late_metadata.items()}}
        final_prefix, final_order = safetensors_header(tensors, final)
        changed = [k for k in late_metadata if len(final[k].encode()) != len(metadata[k].encode())]
        if changed or len(final_prefix) != len(prefix) or final_order != order:
            raise ValueError(f"late metadata changed length: {changed or 'header'}")
        out.seek(0)
        out.write(final_prefix)
        out.flush()
        # Hash (from the page cache) while the kernel writes the file out; atomic_path's fsync then finds
        # nothing left to do.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitinit-fsync") as syncer:
            synced = syncer.submit(os.fsync, out.fileno())
            digest = sha256_file(tmp)
            synced.result()
    return digest


def _loaded_bytes(name: str, declared: LazyTensor) -> memoryview:
    tensor = declared.load()
    if tensor.dtype != declared.dtype:
        raise ValueError(f"tensor {name!r} loaded as {tensor.dtype}, declared {declared.dtype}")
    return _tensor_bytes(tensor) if declared.nbytes else memoryview(b"")


def _update_in_chunks(digest: Any, data: memoryview) -> None:
    for start in range(0, len(data), _CHUNK):
        digest.update(data[start : start + _CHUNK])


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes in row-major little-endian order (safetensors' layout); no copy when contiguous."""
    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
        raise RuntimeError("writing safetensors on a big-endian machine is not supported")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")
