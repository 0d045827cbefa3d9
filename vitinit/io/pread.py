"""Byte ranges of an open checkpoint, read with ``pread`` into a caller's buffer.

``pread`` takes its offset as an argument, so any number of readers share one handle without seeking, and
the bytes land in the buffer the caller chose (a fresh tensor, or a writer's reused chunk buffer).
"""

from __future__ import annotations

import os
from pathlib import Path

from vitinit.errors import CheckpointFormatError


def pread_exact(fd: int, offset: int, view: memoryview, path: Path) -> None:
    """Fill ``view`` with the bytes of ``fd`` at ``offset``; a file that ends first is a format error
    (it may have been truncated since it was opened)."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise CheckpointFormatError(f"{path}: file is truncated (short read)")
        done += n
