"""Claim an output path and write it atomically: a temp file beside the target, fsync, no-clobber rename.

A failure at any point (an error, Ctrl-C, SIGTERM through the CLI) leaves no file at the target path or
beside it. Three things a plain ``os.replace`` would get wrong:

* two writers racing for one path: the existence check must hold at the final rename, so a path that was
  free when writing began is published with ``renameat2(RENAME_NOREPLACE)`` (Linux) or ``os.link`` + unlink,
  both of which fail instead of replacing a file another process put there meanwhile;
* a writer killed with SIGKILL cannot clean up: its temp name carries a marker, the host and its pid, so a
  later write to the same path removes the temp files of writers that are provably dead;
* the filesystem refusing the bytes (disk full, read-only, quota): one-line :class:`OutputWriteError`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vitinit.errors import OutputExistsError, OutputWriteError

TEMP_MARK = "vitinit"  # temp files are .<name>.vitinit-<host>-<pid>-<random>.tmp

# errno → what the user can do about it. Other errors (EIO, ...) are not about the output and pass through.
_WRITE_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space or write to another folder",
    errno.EDQUOT: "disk quota exceeded; free some space or write to another folder",
    errno.EFBIG: "file too large for this filesystem or the process's file size limit",
    errno.EROFS: "the filesystem is read-only; choose another output folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
}


def check_output_path(path: str | Path, *, overwrite: bool) -> Path:
    """Refuse an existing output (unless ``overwrite``) or a folder, before any heavy work starts."""
    path = Path(path)
    if path.is_symlink() and not path.exists():  # a loop or a dangling link: exists() is False for both
        if _is_link_loop(path):
            raise OutputExistsError(f"{path} is a symbolic link loop; remove it or choose another name")
        if not overwrite:
            raise OutputExistsError(f"{path} exists (a link to nothing); pass --overwrite to replace it")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    if path.exists() and path.is_dir():
        raise OutputExistsError(f"{path} is a folder, not a file")
    return path


def _is_link_loop(path: Path) -> bool:
    try:
        path.resolve(strict=True)
    except RuntimeError:  # pathlib's "Symlink loop from ..." (Python < 3.13)
        return True
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


@contextlib.contextmanager
def atomic_path(path: str | Path, *, overwrite: bool | None = None) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success it is renamed onto ``path``.

    ``overwrite=True`` replaces whatever is at ``path``; ``False`` never does. ``None`` (the default)
    replaces a file that existed when writing began (the caller chose to rewrite it) but never one that
    appeared meanwhile: another writer won the race, and :class:`OutputExistsError` says so.
    """
    path = Path(path)
    replace = path.exists() if overwrite is None else overwrite
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with writing(path):
            yield tmp_path
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            # mkstemp creates 0600; give the output the mode a plain open() would (0666 minus the umask).
            os.chmod(tmp_path, 0o666 & ~_current_umask())
        if replace:
            os.replace(tmp_path, path)
        else:
            _publish_noreplace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """The filesystem refusing to store ``path`` (full, read-only, ...) as one :class:`OutputWriteError`."""
    try:
        yield
    except OSError as e:
        if isinstance(e, OutputWriteError) or e.errno not in _WRITE_HINTS:
            raise
        raise OutputWriteError(f"cannot write {path}: {_WRITE_HINTS[e.errno]}") from None


def _publish_noreplace(tmp: Path, path: Path) -> None:
    try:
        _rename_noreplace(tmp, path)
    except FileExistsError:
        raise OutputExistsError(
            f"{path} was created by another process while this one was writing; it was left as it is "
            "(pass --overwrite to replace it)"
        ) from None


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` unless ``dst`` exists (FileExistsError), atomically."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # else: this filesystem lacks the flag
            raise OSError(err, os.strerror(err), str(dst))
    try:
        os.link(src, dst)  # link(2) never replaces: FileExistsError if dst appeared
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # No hard links here (FAT, some FUSE mounts): the best left is a check right before the rename.
        if dst.exists():
            raise FileExistsError(errno.EEXIST, "File exists", str(dst)) from None
        os.replace(src, dst)
        return
    src.unlink()


def _libc_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_RENAMEAT2 = _libc_renameat2()
_AT_FDCWD = -100  # <fcntl.h> on Linux
_RENAME_NOREPLACE = 1  # <linux/fs.h>


# ---------------------------------------------------------------------------------------------------------
# Temp files of writers that died
# ---------------------------------------------------------------------------------------------------------


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _temp_prefix(name: str) -> str:
    return f".{name}.{TEMP_MARK}-{_host()}-{os.getpid()}-"


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove temp files of earlier writes to ``path`` whose writer, on this host, is no longer alive.

    Only names this module makes are considered, and only when their pid is dead: a live writer's temp
    file (or another host's, on a shared filesystem, whose pids mean nothing here) is left alone.
    """
    removed = []
    pattern = f".{glob.escape(path.name)}.{TEMP_MARK}-*.tmp"
    for tmp in path.parent.glob(pattern):
        host, _, rest = tmp.name[len(f".{path.name}.{TEMP_MARK}-"):].partition("-")
        pid = rest.partition("-")[0]
        if host == _host() and pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _current_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask
