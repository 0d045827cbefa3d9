"""The CLI under hostile input, as the hostile-input test modules drive it.

``run`` asserts on every call that the output never holds the catch-all "internal error" line: that line is
for vitinit's own bugs, and hostile input must never reach it (only a test that injects a bug on purpose
passes ``bug=True``).
"""

from __future__ import annotations

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
