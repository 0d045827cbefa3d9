"""Small JSON files: user-supplied ones read with one-line errors, run outputs written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitinit.errors import VitinitError
from vitinit.io.atomic import atomic_path


def read_json(path: str | Path, *, error: type[VitinitError], what: str) -> Any:
    """Parse a JSON file; a missing or malformed file raises ``error`` with one line naming ``what`` it is."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{what} {path} is not valid JSON ({e})") from None


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (a reader never sees half a file)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
