"""Write checkpoint files: :func:`write_safetensors` streams lazy tensors, :func:`save_torch` pickles.

Both write through :func:`vitinit.io.atomic.atomic_path` (temp file, fsync, no-clobber rename), so a failure
at any point leaves no file at the target path or beside it, and never touches the source. Both warn about
NaN/inf values as the tensors go by, and both refuse a file name that would make readers take the file for
the other container (readers go by the suffix).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from vitinit.errors import ConfigError
from vitinit.io.atomic import atomic_path, check_output_path
from vitinit.io.chunks import ChunkPool, HashingSink, tensor_chunks
from vitinit.io.finite import NonFiniteCheck
from vitinit.io.follow_hash import FollowingHash
from vitinit.io.lazy import LazyTensor
from vitinit.io.progress import byte_progress
from vitinit.io.safetensors_read import SAFETENSORS_DTYPES

__all__ = [
    "atomic_path", "check_output_path", "check_container_suffix", "save_torch", "sha256_file",
    "write_safetensors",
]

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".tar", ".ckpt", ".pkl")


def check_container_suffix(path: str | Path, container: str) -> Path:
    """Refuse a name whose suffix says the other container: readers pick safetensors or pickle by it."""
    path = Path(path)
    if container == "safetensors" and path.suffix != ".safetensors":
        hint = " (add --pth for a .pth copy)" if path.suffix in PICKLE_SUFFIXES else ""
        raise ConfigError(
            f"{path}: this output is a safetensors file and needs a name ending in .safetensors, e.g. "
            f"{path.with_suffix('.safetensors').name}{hint}"
        )
    if container == "torch" and path.suffix == ".safetensors":
        raise ConfigError(
            f"{path}: this output is a PyTorch pickle; a .safetensors name would make readers misread it "
            f"(use e.g. {path.with_suffix('.pth').name})"
        )
    return path


class HashCancelled(Exception):
    """:func:`sha256_file` was asked to stop (its caller failed and no longer needs the hash)."""


def sha256_file(path: str | Path, chunk: int = 1 << 20, *, cancel: threading.Event | None = None) -> str:
    """sha256 of a file, read into one reused buffer (no new allocation per chunk); ``cancel`` set stops
    it between two chunks."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            if cancel is not None and cancel.is_set():
                raise HashCancelled(str(path))
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
    before_publish: Callable[[], None] | None = None,
) -> str:
    """Write ``tensors`` as a ``.safetensors`` file one tensor at a time; return the file's sha256.

    The header is computed from the declared shapes first, then the tensors stream through in chunks
    (:mod:`vitinit.io.chunks`): a tensor stored as one run of bytes in its file is read chunk by chunk into
    a few reused buffers, any other is loaded whole and dropped once written and hashed, so peak memory is
    a few MiB plus the largest loaded tensor or two, never the checkpoint (``safetensors.torch.save_file``
    needs every tensor in memory). The output is hashed on a second thread as the chunks are written.
    The bytes go to a temp file beside ``path`` that is renamed into place only when complete: on any
    error, KeyboardInterrupt included, no file is left at ``path`` or beside it.

    ``late_metadata`` maps metadata keys to functions that may block until their value is known (say, a
    source hash computed by another thread meanwhile); they are called on the output's hashing thread while
    the tensors are written. The header is written with the provisional values in ``metadata`` and
    rewritten in place at the end, so each final value must have the byte length of its
    provisional one; the file is hashed as it is written, from the moment the final values are known
    (:mod:`vitinit.io.follow_hash`).

    ``before_publish`` is called once every byte is written and hashed, before the file is renamed into
    place: whatever it raises leaves no file (say, the source turned out not to be the one the header
    names).

    Example:
        >>> sha = write_safetensors("out.safetensors", {"w": LazyTensor.of(torch.zeros(2))}, {"k": "v"})
    """
    path = check_output_path(check_container_suffix(path, "safetensors"), overwrite=overwrite)
    if late_metadata:
        return _write_with_late_metadata(
            path, tensors, metadata, late_metadata, progress=progress, overwrite=overwrite,
            before_publish=before_publish,
        )
    prefix, order = safetensors_header(tensors, metadata)
    total = len(prefix) + sum(tensors[k].nbytes for k in order)
    finite = NonFiniteCheck(path)
    pool = ChunkPool()
    sink = HashingSink(prefix, pool)
    try:
        with (
            atomic_path(path, overwrite=overwrite) as tmp,
            open(tmp, "wb") as out,
            byte_progress(f"writing {path.name}", total, enabled=progress) as advance,
        ):
            out.write(prefix)
            advance(len(prefix))
            for name in order:
                declared = tensors[name]
                if declared.read_into is None:  # loaded whole: bound what waits for the hash
                    sink.wait_for_room(declared.nbytes)
                for chunk, buf in tensor_chunks(name, declared, pool, finite):
                    out.write(chunk)
                    sink.put(chunk, buf)
                    advance(len(chunk))
                    del chunk
            digest = sink.hexdigest()
            if before_publish is not None:
                before_publish()
    finally:
        sink.close()
    finite.report()
    return digest


def _write_with_late_metadata(
    path: Path,
    tensors: Mapping[str, LazyTensor],
    metadata: dict[str, str],
    late_metadata: Mapping[str, Callable[[], str]],
    *,
    progress: bool,
    overwrite: bool,
    before_publish: Callable[[], None] | None,
) -> str:
    """:func:`write_safetensors` when some metadata is only known after the data (see its docstring)."""
    missing = sorted(set(late_metadata) - set(metadata))
    if missing:
        raise ValueError(f"late metadata keys need a provisional value in metadata: {missing}")
    prefix, order = safetensors_header(tensors, metadata)
    total = len(prefix) + sum(tensors[k].nbytes for k in order)
    finite = NonFiniteCheck(path)

    def final_prefix() -> bytes:  # on the hashing thread: waits for the late values (the source's hash)
        final = {**metadata, **{k: str(get()) for k, get in late_metadata.items()}}
        final_prefix, final_order = safetensors_header(tensors, final)
        changed = [k for k in late_metadata if len(final[k].encode()) != len(metadata[k].encode())]
        if changed or len(final_prefix) != len(prefix) or final_order != order:
            raise ValueError(f"late metadata changed length: {changed or 'header'}")
        return final_prefix

    with (
        atomic_path(path, overwrite=overwrite) as tmp,
        open(tmp, "wb") as out,
        byte_progress(f"writing {path.name}", total, enabled=progress) as advance,
    ):
        # The output is hashed as it is written, from the moment its final header is known
        # (vitinit.io.follow_hash); the header itself is rewritten in place at the end.
        follower = FollowingHash(tmp, total, final_prefix)
        try:
            out.write(prefix)
            advance(len(prefix))
            pool = ChunkPool()
            for name in order:
                for chunk, buf in tensor_chunks(name, tensors[name], pool, finite):
                    out.write(chunk)
                    if buf is not None:
                        pool.give(buf)
                    advance(len(chunk))
                    del chunk
                out.flush()  # the kernel has the bytes: the hashing thread may read them back
                follower.advance(out.tell())
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitinit-fsync") as syncer:
                synced = syncer.submit(os.fsync, out.fileno())  # the data goes to disk while hashing ends
                final, digest = follower.result()
                synced.result()
            if before_publish is not None:
                before_publish()
        except BaseException:
            follower.abort()
            raise
        out.seek(0)
        out.write(final)
        out.flush()
    finite.report()
    return digest


def save_torch(path: str | Path, obj: Any, *, overwrite: bool = False) -> str:
    """``torch.save(obj)`` to ``path`` atomically and without clobbering; return the file's sha256.

    torch's zip writer reports any failed write (a full disk, a quota) as an opaque ``RuntimeError``
    ("unexpected pos ..."). So it writes through :class:`_WriteRecorder`, which keeps the real ``OSError``;
    that one is raised instead, and :func:`atomic_path` turns it into a one-line error naming the file.
    """
    path = check_output_path(check_container_suffix(path, "torch"), overwrite=overwrite)
    finite = NonFiniteCheck(path)
    for name, tensor in _tensors_in(obj):
        finite.check(name, tensor)
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "wb") as f:
        recorder = _WriteRecorder(f)
        try:
            torch.save(obj, recorder)
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise
    finite.report()
    return sha256_file(path)


class _WriteRecorder:
    """A file for torch.save that writes every byte it is given (looping over short writes) and keeps
    the first ``OSError``, which torch's writer would otherwise replace by its own message."""

    def __init__(self, f: Any):
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += self.f.write(view[done:])
        except OSError as e:
            self.error = self.error or e
            raise
        return done

    def flush(self) -> None:
        self.f.flush()


def _tensors_in(obj: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        return [(prefix, obj)]
    if isinstance(obj, Mapping):
        return [t for k, v in obj.items() for t in _tensors_in(v, f"{prefix}.{k}" if prefix else str(k))]
    return []
