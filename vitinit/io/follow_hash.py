"""sha256 of a file while it is being written, when its first bytes are only known later.

A converted file's header records the source's sha256, which another thread is still computing while the
tensors are written; sha256 reads a file from its first byte, so the output's hash cannot begin before that
header is final. :class:`FollowingHash` begins the moment it is: its thread hashes the final header (from
memory) and then reads the tensor bytes back (from the page cache) as fast as the writer makes them
available, so hashing the output overlaps the rest of the writing instead of following all of it. What
stays sequential is the dependency itself: source hash, then output hash (two sha256 passes; see
``benchmarks/convert.py``). hashlib and file reads release the GIL, so the writer is not held up.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

_CHUNK = 1 << 20  # one reused read buffer; fits in L2 cache


class FollowingHash:
    """Hash ``path`` as it grows: ``prefix()`` (called on the thread; it may block) gives the file's first
    bytes, which the writer will put there at the end; bytes from ``len(prefix)`` to ``total`` are read back
    once :meth:`advance` says they are written."""

    def __init__(self, path: Path, total: int, prefix: Callable[[], bytes]) -> None:
        self.path, self.total, self._prefix = path, total, prefix
        self._written = 0
        self._aborted = False
        self._cond = threading.Condition()
        self._result: tuple[bytes, str] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vitinit-output-sha256", daemon=True)
        self._thread.start()

    def advance(self, written: int) -> None:
        """The file now holds its first ``written`` bytes (flushed to the kernel)."""
        with self._cond:
            self._written = written
            self._cond.notify_all()

    def abort(self) -> None:
        """Stop at the next chunk; the thread is not waited for (it may be blocked in ``prefix()``)."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def result(self) -> tuple[bytes, str]:
        """(the final prefix, the file's sha256), once every byte is hashed; re-raises the thread's error."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _wait_for(self, end: int) -> bool:
        with self._cond:
            while self._written < end and not self._aborted:
                self._cond.wait()
            return not self._aborted

    def _run(self) -> None:
        try:
            prefix = self._prefix()
            digest = hashlib.sha256(prefix)
            buf = bytearray(_CHUNK)
            view = memoryview(buf)
            pos = len(prefix)
            with open(self.path, "rb", buffering=0) as f:
                f.seek(pos)
                while pos < self.total:
                    want = min(_CHUNK, self.total - pos)
                    if not self._wait_for(pos + want):
                        return
                    n = f.readinto(view[:want])
                    if n != want:
                        raise OSError(f"{self.path}: short read at byte {pos} while hashing")
                    digest.update(view[:n])
                    pos += n
            self._result = (prefix, digest.hexdigest())
        except BaseException as e:  # handed to the writer by result()
            self._error = e
