"""The command-line surface as a user meets it: help pages and one-line errors."""

import pytest
from typer.testing import CliRunner
from vitinit_cli import _common
from vitinit_cli.main import app

COMMANDS = ["convert", "inspect", "model-info", "bench", "eval", "predict", "report", "publish"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_renders_its_help(command):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_no_arguments_lists_the_commands():
    result = CliRunner().invoke(app, [], env={"COLUMNS": "100"})
    for command in COMMANDS:
        assert command in result.output


def test_error_messages_with_brackets_print_verbatim(capsys):
    """A message that looks like rich markup (hf://ORG/REPO[/FILE]) must neither crash nor lose text."""
    from vitinit.errors import ConfigError

    @_common.user_errors
    def fail():
        raise ConfigError("expected hf://ORG/REPO[/FILE], got [bold]x[/]")

    with pytest.raises(SystemExit) as exc:
        try:
            fail()
        except Exception as e:  # typer.Exit is a click exception, not SystemExit
            raise SystemExit(getattr(e, "exit_code", 99)) from None
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "hf://ORG/REPO[/FILE], got [bold]x[/]" in " ".join(err.split())
