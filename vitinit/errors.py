"""Typed errors. The CLI catches :class:`VitinitError` and prints its message on one line.

Each subclass also inherits the builtin a caller would naturally catch, so library users can be broad or
narrow (the pattern huggingface_hub's ``errors.py`` uses).
"""

from __future__ import annotations


class VitinitError(Exception):
    """Root of every error vitinit raises on purpose; its message is meant for the user."""


class CheckpointFormatError(VitinitError, ValueError):
    """A checkpoint is unreadable, of an unknown layout, or has a tensor of the wrong shape."""


class UnsafeCheckpointError(CheckpointFormatError):
    """A pickle asks for an object outside the allow-list; it was not executed."""


class SpecMismatchError(VitinitError, ValueError):
    """What the user asked for (``--model``, ``--from``) contradicts what the weights say."""


class OutputExistsError(VitinitError, FileExistsError):
    """The output path exists and ``--overwrite`` was not given."""


class OutputWriteError(VitinitError, OSError):
    """The filesystem refused to store an output (disk full, read-only, quota, permissions)."""


class DownloadError(VitinitError, ConnectionError):
    """A remote checkpoint could not be fetched (offline, missing, or hash mismatch)."""


class ChecksumMismatchError(VitinitError, ValueError):
    """A file's sha256 is not the one it was said to have (``--expect-sha256``)."""


class ConfigError(VitinitError, ValueError):
    """A recipe, override or model configuration is invalid."""


class DatasetError(VitinitError, ValueError):
    """A dataset is missing, empty or inconsistent."""


class TrainingError(VitinitError, RuntimeError):
    """Training cannot continue (for example a non-finite loss)."""


class MissingDependencyError(VitinitError, ImportError):
    """An optional extra is needed for this feature (the message names the ``pip install``)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (``timeout``, SLURM, ``docker stop``): unwinds like Ctrl-C, so every temp file is
    removed on the way out; the CLI then exits 143 (128 + SIGTERM)."""


def first_line(e: BaseException | str, limit: int | None = 200) -> str:
    """The first non-empty line of an exception's message, whitespace-folded, at most ``limit`` characters:
    the one helper behind every one-line error (the CLI's ``error: ...`` and the cause part of an error
    built around a library's often multi-line exception)."""
    lines = [" ".join(ln.split()) for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    return (text[:limit] if limit else text) or type(e).__name__


QUOTE_LIMIT = 80  # characters of a user value an error line repeats


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error lines that repeat what the user gave: a 10 MB
    architecture name or a 120 KB override is shown by its start and its length."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"
