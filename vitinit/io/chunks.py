"""A writer's tensors as a stream of byte chunks, and the output's sha256 computed beside the writing.

Reading a tensor into a fresh buffer costs a page fault and a zeroed page per 4 KiB, and giving the buffer
back to the OS before the next tensor (:mod:`vitinit.io.memory`, which keeps the peak where it should be)
means paying that again for every tensor: in a ViT-L conversion this was 0.7 s of 1.0 s spent reading.
So a tensor that is one run of bytes in its file (:attr:`LazyTensor.read_into`) is read chunk by chunk into
a few buffers that are reused from first tensor to last; only tensors computed by the conversion (a
resized position table, a fused bias) are loaded whole.

:class:`HashingSink` hashes the chunks on its own thread, in order, after the writer has written them, and
hands each buffer back when done. The writer goes on reading the next chunk meanwhile (hashlib, ``pread``
and file writes release the GIL), so with two cores the work takes about one sha256 pass of the output
(``benchmarks/convert.py``). What waits to be hashed is bounded: :data:`IN_FLIGHT` buffers, plus whole
tensors up to :data:`MAX_PENDING_BYTES`.
"""

from __future__ import annotations

import hashlib
import mmap
import queue
import sys
import threading
from collections.abc import Iterator

import torch

from vitinit.io.finite import NonFiniteCheck
from vitinit.io.lazy import LazyTensor
from vitinit.io.memory import release_free_memory

__all__ = ["CHUNK_BYTES", "ChunkPool", "HashingSink", "tensor_bytes", "tensor_chunks"]

# Measured on a 2-core EPYC (ViT-L, warm): 1 MiB x 8 ran 0.95-1.1 s, 4 MiB x 4 1.1-1.2 s, 256 KiB x 32 1.3 s;
# small enough that a chunk is still in cache when the hashing thread gets to it, big enough that the
# per-chunk Python is noise.
CHUNK_BYTES = 1 << 20  # a multiple of every item size
IN_FLIGHT = 8  # buffers: one being read, the others written or waiting to be hashed
MAX_PENDING_BYTES = 16 << 20  # loaded tensors waiting to be hashed, beyond the pool: a ViT-L pos_embed


class ChunkPool:
    """A fixed set of reused buffers; :meth:`take` waits for one to come back.

    The buffers are anonymous maps, not ``bytearray``s: page-aligned, and so read into at memory speed (a
    4 MiB ``bytearray`` took ``pread`` 3x longer here, 0.4 s per GB).
    """

    def __init__(self, count: int | None = None, size: int | None = None):
        self.size = size or CHUNK_BYTES
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        for _ in range(count or IN_FLIGHT):
            self._free.put(mmap.mmap(-1, self.size))

    def take(self) -> mmap.mmap:
        return self._free.get()

    def give(self, buf: mmap.mmap) -> None:
        self._free.put(buf)


def tensor_chunks(
    name: str, declared: LazyTensor, pool: ChunkPool, finite: NonFiniteCheck
) -> Iterator[tuple[memoryview, mmap.mmap | None]]:
    """The tensor's bytes (safetensors' layout) as ``(chunk, buffer)`` pairs, NaN/inf counted on the way.

    ``buffer`` is the pool's buffer behind the chunk, to be given back once the chunk is used, or None when
    the chunk is a slice of a loaded tensor (it lives as long as the chunk is referenced).
    """
    if not declared.nbytes:
        return
    if declared.read_into is not None:
        for start in range(0, declared.nbytes, pool.size):
            buf = pool.take()
            chunk = memoryview(buf)[: min(pool.size, declared.nbytes - start)]
            declared.read_into(chunk, start)
            finite.check(name, torch.frombuffer(chunk, dtype=declared.dtype))
            yield chunk, buf
        return
    release_free_memory()  # the previous loaded tensor's pages go back before this one is read
    tensor = declared.load()
    if tensor.dtype != declared.dtype:
        raise ValueError(f"tensor {name!r} loaded as {tensor.dtype}, declared {declared.dtype}")
    finite.check(name, tensor)
    data = tensor_bytes(tensor)
    del tensor
    for start in range(0, len(data), pool.size):
        yield data[start : start + pool.size], None


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes in row-major little-endian order (safetensors' layout); no copy when contiguous."""
    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
        raise RuntimeError("writing safetensors on a big-endian machine is not supported")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


class HashingSink:
    """sha256 of ``prefix`` followed by the chunks :meth:`put` to it, computed on its own thread.

    Each pooled buffer goes back to ``pool`` once its chunk is hashed. :meth:`hexdigest` waits for the last
    chunk; :meth:`close` stops the thread without a result (the writer failed).
    """

    def __init__(self, prefix: bytes, pool: ChunkPool):
        self._digest = hashlib.sha256(prefix)
        self._pool = pool
        self._queue: queue.SimpleQueue[tuple[memoryview, mmap.mmap | None] | None] = queue.SimpleQueue()
        self._pending = 0  # bytes of loaded tensors not hashed yet
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vitinit-output-sha256", daemon=True)
        self._thread.start()

    def put(self, chunk: memoryview, buf: mmap.mmap | None) -> None:
        if buf is None:
            with self._cond:
                self._pending += len(chunk)
        self._queue.put((chunk, buf))

    def wait_for_room(self, nbytes: int) -> None:
        """Block until ``nbytes`` more of a loaded tensor fit in :data:`MAX_PENDING_BYTES`, or none waits."""
        with self._cond:
            while self._pending and self._pending + nbytes > MAX_PENDING_BYTES:
                self._cond.wait()

    def hexdigest(self) -> str:
        self.close()
        if self._error is not None:
            raise self._error
        return self._digest.hexdigest()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            chunk, buf = item
            if self._error is None:
                try:
                    self._digest.update(chunk)
                except BaseException as e:  # handed to the writer by hexdigest()
                    self._error = e
            if buf is not None:
                self._pool.give(buf)
            else:
                with self._cond:
                    self._pending -= len(chunk)
                    self._cond.notify_all()
            del chunk, item  # the loaded tensor behind a chunk is freed with its last chunk
