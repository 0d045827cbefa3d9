"""Checks on a zip archive no reader should trust, made before anything in it is read or inflated.

Duplicate entry names are a parser differential (zip readers disagree on which one counts, so vitinit's
reader and ``torch.load`` could see different weights); a compressed tensor record can inflate a few MB of
file into GBs of memory (``torch.save`` never compresses them); a ``data.pkl`` is read through a cap.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from vitinit.errors import CheckpointFormatError, first_line

MAX_PICKLE_BYTES = 64 << 20  # data.pkl holds structure only (tensors are records); real ones are KBs


def check_archive(path: Path, archive: zipfile.ZipFile) -> None:
    """Refuse duplicate entry names and compressed tensor records before anything is read or inflated."""
    names = archive.namelist()
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise CheckpointFormatError(
            f"{path}: the zip holds two entries named {dup!r}; refused, since zip readers disagree on which "
            "one counts (this reader and torch.load could see different weights)"
        )
    for info in archive.infolist():
        if "/data/" in info.filename and info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointFormatError(
                f"{path}: tensor record {info.filename!r} is compressed, which torch.save never does; "
                "refused rather than inflated into memory (re-save the weights with torch.save)"
            )


def read_record(path: Path, archive: zipfile.ZipFile, name: str, limit: int | None = None) -> bytes:
    """Entry ``name`` of ``archive``, inflating at most ``limit`` bytes (default :data:`MAX_PICKLE_BYTES`):
    a zip bomb stops there."""
    limit = MAX_PICKLE_BYTES if limit is None else limit
    try:
        with archive.open(name) as f:
            data = f.read(limit + 1)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as e:
        raise CheckpointFormatError(f"{path}: corrupt record {name!r} ({first_line(e)})") from None
    if len(data) > limit:
        raise CheckpointFormatError(
            f"{path}: record {name!r} inflates past {limit} bytes; refused (a checkpoint's "
            f"{name.rsplit('/')[-1]} is a few KB: this looks like a zip bomb)"
        )
    return data
