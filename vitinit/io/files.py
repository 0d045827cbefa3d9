"""Small-file helpers shared by every layer that reads user-supplied JSON (configs, annotations, runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitinit.errors import VitinitError


def read_json(path: str | Path, *, error: type[VitinitError], what: str) -> Any:
    """Parse a JSON file; a missing or malformed file raises ``error`` with one line naming ``what`` it is."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{what} {path} is not valid JSON ({e})") from None
