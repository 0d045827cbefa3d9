"""The CLI under hostile input, as the hostile-input test modules drive it.

``run`` asserts on every call that the output never holds the catch-all "internal error" line: that line is
for vitinit's own bugs, and hostile input must never reach it (only a test that injects a bug on purpose
passes ``bug=True``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

from typer.testing import CliRunner
from vitinit_cli.main import app

INTERNAL_ERROR = "internal error"
runner = CliRunner()


def run(*args: str, bug: bool = False):
    result = runner.invoke(app, list(args))
    if not bug:
        assert INTERNAL_ERROR not in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def one_line_error(result, contains: str) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert contains in lines[0], lines[0]
    return lines[0]


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a server that accepts connections and never answers."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.05)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(sock.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        sock.close()
