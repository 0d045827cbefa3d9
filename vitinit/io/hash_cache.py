"""A cache of verified sha256 digests of source checkpoints, so that a file is read through sha256 once.

A conversion records its source's sha256 in the output's header, and the sha256 it prints is the output's
own, read from byte 0, so the output cannot be hashed before the whole source is: a first conversion costs
two sha256 passes back to back. With the source's digest known at once, the output's hash overlaps the
conversion and the work is about one pass (``benchmarks/convert.py``, rows ``vitinit-cold``/``-warm``).

Entries are keyed by what ``stat`` says of the real file: device, inode, size, mtime and ctime in
nanoseconds. A user can set mtime but not ctime, and any write or ``utime`` moves ctime, so a modified file
misses. A digest computed by reading the file is stored only when the file's last change is older than
:data:`RACY_NS` before the read began, and ``stat`` did not change during the read: a change within the same
timestamp tick as the read would otherwise be invisible (git's "racy clean" rule). A download is stored as
soon as it is in place: its digest is of the bytes vitinit itself wrote (:mod:`vitinit.io.remote`).

The entries live in one JSON file, ``$VITINIT_CACHE/sha256-cache.json`` (default ``~/.cache/vitinit``), at
most :data:`MAX_ENTRIES` of them (the oldest go first), written atomically. The cache is never an error: a
missing, damaged, oversized or unwritable file, or an entry that is not a sha256 digest, is ignored and the
file is hashed. ``VITINIT_HASH_CACHE=0`` turns it off. Whoever can write the cache folder can make
provenance lie, as they could by editing the outputs; the cache trusts it as vitinit trusts its downloads.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from pathlib import Path

from vitinit.errors import VitinitError
from vitinit.io.env import env_flag
from vitinit.io.files import read_json, write_json
from vitinit.io.save import sha256_file

__all__ = ["cache_dir", "cached_sha256", "enabled", "file_key", "lookup", "store"]

log = logging.getLogger(__name__)

CACHE_FILE = "sha256-cache.json"
MAX_ENTRIES = 4096
MAX_BYTES = 1 << 20  # 4096 entries of ~140 bytes each
RACY_NS = 2_000_000_000  # coarser than any filesystem's timestamps (FAT: 2 s)
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# One process's stores one at a time; across processes the last writer wins and an entry may be lost
# (a later miss, never a wrong digest).
_lock = threading.Lock()


def cache_dir() -> Path:
    """vitinit's cache folder: ``$VITINIT_CACHE``, else ``~/.cache/vitinit`` (read at call time)."""
    env = os.environ.get("VITINIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vitinit"


def enabled() -> bool:
    return env_flag("VITINIT_HASH_CACHE", default=True)


def file_key(path: str | Path) -> str | None:
    """The cache key of the real file behind ``path``; None when it cannot be stat'ed or is not a file."""
    try:
        st = os.stat(os.path.realpath(path))
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def lookup(path: str | Path) -> str | None:
    """The cached sha256 of ``path``'s current content, or None."""
    if not enabled():
        return None
    key = file_key(path)
    return _load().get(key) if key else None


def store(path: str | Path, digest: str, *, key: str | None = None) -> None:
    """Remember ``digest`` for ``path`` as it is now (or for ``key``, taken earlier). Never raises."""
    if not enabled() or not SHA256_HEX.fullmatch(digest):
        return
    key = key or file_key(path)
    if key is None:
        return
    with _lock:
        entries = _load()
        entries.pop(key, None)
        entries[key] = digest  # most recent last: the oldest are dropped first
        kept = dict(list(entries.items())[-MAX_ENTRIES:])
        try:
            write_json(cache_dir() / CACHE_FILE, {"version": 1, "sha256": kept})
        except (OSError, VitinitError) as e:  # a read-only home, a full disk, a racing first writer
            log.debug("hash cache not written: %s", e)


def cached_sha256(path: str | Path, *, cancel: threading.Event | None = None) -> str:
    """sha256 of a file: from the cache when it has this exact file, else read (and then stored)."""
    known = lookup(path)
    if known is not None:
        log.info("%s: sha256 from the hash cache", path)
        return known
    began = time.time_ns()
    before = file_key(path)
    digest = sha256_file(path, cancel=cancel)
    if before is not None and before == file_key(path) and _settled(before, began):
        store(path, digest, key=before)
    return digest


def _settled(key: str, began_ns: int) -> bool:
    """Whether the file's last change (mtime, ctime) is :data:`RACY_NS` older than the read."""
    *_, mtime_ns, ctime_ns = key.split(":")
    return max(int(mtime_ns), int(ctime_ns)) < began_ns - RACY_NS


def _load() -> dict[str, str]:
    """The cache's valid entries; {} for a missing or damaged file (a damaged entry alone is skipped)."""
    path = cache_dir() / CACHE_FILE
    try:
        if not path.is_file():
            return {}
        data = read_json(path, error=VitinitError, what="hash cache", max_bytes=MAX_BYTES)
    except (OSError, VitinitError, RecursionError) as e:
        log.debug("hash cache ignored: %s", e)
        return {}
    table = data.get("sha256") if isinstance(data, dict) and data.get("version") == 1 else None
    if not isinstance(table, dict):
        return {}
    return {k: v for k, v in table.items()
            if isinstance(k, str) and isinstance(v, str) and SHA256_HEX.fullmatch(v)}

