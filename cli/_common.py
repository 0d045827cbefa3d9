"""Shared CLI plumbing: one-line errors, rich console, logging."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from vitinit.errors import VitinitError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)


def user_errors(fn: F) -> F:
    """Turn vitinit's own errors (and a few OS ones) into ``error: <message>`` and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (VitinitError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
            err_console.print(f"[bold red]error:[/] {escape(_one_line(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
