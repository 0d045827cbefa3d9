"""Small JSON files: user-supplied ones read with one-line errors and bounds, run outputs written atomically.

A file read whole is capped before it is read (``max_bytes``), and what it holds is bounded too: nesting
at most :data:`MAX_DEPTH` deep and integers of at most :data:`MAX_DIGITS` digits (a 100 000-deep
``results.json`` overflows the parser's stack, a 5000-digit number Python's int conversion). The JSON Lines
reader reads line by line, each line capped, so one huge line cannot take the memory either.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vitinit.errors import VitinitError
from vitinit.io.atomic import atomic_path

MAX_JSON_BYTES = 16 << 20  # configs, results, run metadata: KBs; the cap leaves room for long histories
MAX_LINE_BYTES = 1 << 20  # one metrics.jsonl record
MAX_DEPTH = 64
MAX_DIGITS = 100


class _Bound(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise _Bound(f"an integer of {len(text)} digits")
    return int(text)


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, level + 1) for c in children if isinstance(c, dict | list))
    return deepest


def parse_json(text: str | bytes) -> Any:
    """``json.loads`` within the bounds above; :class:`ValueError` with one line otherwise."""
    try:
        value = json.loads(text, parse_int=_parse_int)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None
    except _Bound as e:
        raise ValueError(f"{e} (at most {MAX_DIGITS})") from None
    if _depth(value) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    return value


def read_json(
    path: str | Path, *, error: type[VitinitError], what: str, max_bytes: int | None = MAX_JSON_BYTES
) -> Any:
    """Parse a JSON file; a missing, oversized or malformed file raises ``error`` with one line naming
    ``what`` it is. ``max_bytes=None`` lifts the size cap (COCO annotation files run to hundreds of MB)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise error(f"{what} {path} is {size / 2**20:.1f} MiB; at most {max_bytes / 2**20:g} MiB is read")
    try:
        return parse_json(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise error(f"{what} {path} is not valid JSON ({' '.join(str(e).split())[:200]})") from None


def read_lines(path: Path, *, max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) of a text file read line by line; a line over ``max_bytes`` comes as None
    (skipped, never held whole in memory)."""
    with open(path, "rb") as f:
        n = 0
        while True:
            line = f.readline(max_bytes + 1)
            if not line:
                return
            n += 1
            if len(line) > max_bytes:
                while line and not line.endswith(b"\n"):  # drain the rest of the long line in bounded reads
                    line = f.readline(max_bytes + 1)
                yield n, None
                continue
            yield n, line


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (a reader never sees half a file)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
