"""Wide tables stay readable: `--list-keys` never breaks a key, in a pipe (one line per key) or in an
80-column terminal (key = value, then its type and meaning wrapped at words)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from typer.testing import CliRunner
from vitinit.recipes.check import list_knobs
from vitinit_cli import bench as bench_cli
from vitinit_cli.main import app

from vitinit.bench import resolve

runner = CliRunner()


def test_list_keys_in_a_pipe_is_one_line_per_key():
    result = runner.invoke(app, ["bench", "demo", "--list-keys"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    keys = [k.key for k in list_knobs(resolve("demo"))]
    assert len(lines) == 1 + len(keys)  # the title, then exactly one line per key
    for key, line in zip(keys, lines[1:], strict=True):
        assert line.split()[0] == key
    assert any(line.split()[:2] == ["train.loggers", '["tensorboard"]'] for line in lines)


@pytest.mark.parametrize("width", [80, 140])
def test_list_keys_in_a_terminal_keeps_keys_whole(monkeypatch, width):
    out = io.StringIO()
    monkeypatch.setattr(bench_cli, "console", Console(file=out, force_terminal=True, width=width,
                                                      color_system=None))
    bench_cli.print_keys(resolve("mae-vitb"))
    lines = out.getvalue().splitlines()
    assert max(map(len, lines)) <= width
    words = {w for line in lines for w in line.replace("│", " ").split()}
    for k in list_knobs(resolve("mae-vitb")):
        assert k.key in words, k.key  # whole, on one line
