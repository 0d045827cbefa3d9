"""Shared CLI plumbing: one-line errors, SIGTERM handled like Ctrl-C, rich console, logging."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import click
import typer
from rich.console import Console
from rich.markup import escape

from vitinit.errors import Terminated, VitinitError, first_line

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


def user_errors(fn: F) -> F:
    """Run a command so that whatever a user can cause ends as ``error: <one line>`` and exit code 1.

    * vitinit's own errors (bad input, existing output, full disk, ...) print their message;
    * OS errors a user can cause (a missing file, a folder given for a file, permissions) name the file;
    * MemoryError says so instead of a traceback;
    * SIGTERM (``timeout``, SLURM, ``docker stop``) unwinds like Ctrl-C, so writers remove their temp files,
      and exits 143 (Ctrl-C: 130);
    * anything else is a bug in vitinit: one line saying so, or the full traceback with ``-v``.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with sigterm_as_interrupt():
                return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise  # typer's own exits and usage errors
        except VitinitError as e:
            _fail(first_line(e, limit=None))
        except OSError as e:
            _fail(_os_error_line(e))
        except MemoryError:
            _fail("out of memory; close other programs, or use a machine with more RAM")
        except Terminated:
            err_console.print("[bold red]terminated[/]")
            raise typer.Exit(EXIT_TERMINATED) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as e:
            if kwargs.get("verbose", True):  # -v given, or a command without -v: the traceback
                raise
            _fail(
                f"internal error ({type(e).__name__}: {first_line(e)}); this is a bug in vitinit, "
                "rerun with -v for the traceback and report it"
            )

    return wrapper  # type: ignore[return-value]


MAX_ERROR_CHARS = 600  # an error line stays readable even when it repeats a huge user value


def _fail(message: str) -> None:
    if len(message) > MAX_ERROR_CHARS:  # the start says what failed, the end often what to do
        message = f"{message[:400]} … ({len(message)} characters) … {message[-150:]}"
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1) from None


def _os_error_line(e: OSError) -> str:
    """``FILE: reason`` for an OS error (which file, and what went wrong with it)."""
    reason = e.strerror or first_line(e)
    if e.filename is not None and e.filename2 is not None:
        return f"{e.filename} → {e.filename2}: {reason}"
    return f"{e.filename}: {reason}" if e.filename is not None else reason


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread.

    Left alone when not on the main thread (signals cannot be set there) or when someone else already
    handles SIGTERM (a scheduler's requeue hook, say).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
