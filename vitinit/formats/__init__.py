"""Readers: every supported checkpoint family → one canonical :class:`~vitinit.canonical.Checkpoint`.

Each family module scores how well a file's keys fit it (``score``) and reads it (``read``). Auto-detection
takes the single best score; no match, or a tie between families, is an error that asks for ``--from``.
An explicit family wins over the scores, but its reader must still recognize the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vitinit.canonical import Checkpoint, validate
from vitinit.errors import CheckpointFormatError
from vitinit.formats import beit, hf, mae, mocov3, random, supervised
from vitinit.io.load import RawCheckpoint, open_checkpoint
from vitinit.io.save import sha256_file

logger = logging.getLogger(__name__)

FAMILIES = ("auto", "beit", "mae", "mocov3", "supervised", "random")
READERS = (hf, beit, mae, mocov3, supervised)

__all__ = ["FAMILIES", "detect_family", "read_checkpoint"]


def detect_family(raw: RawCheckpoint, family: str = "auto") -> tuple[str, object, dict[str, int]]:
    """(family, reader module, all scores) for ``raw``; raises when nothing or more than one fits."""
    scores: dict[str, tuple[int, object]] = {}
    for reader in READERS:
        fam, s = reader.score(raw)
        if s > scores.get(fam, (0, None))[0]:
            scores[fam] = (s, reader)
    table = {f: s for f, (s, _) in scores.items() if s > 0}
    if family != "auto":
        if family not in table:
            seen = f"it looks like {_best(table)}" if table else "no known layout matches"
            raise CheckpointFormatError(f"{raw.path}: not a {family} checkpoint ({seen})")
        return family, scores[family][1], table
    if not table:
        keys = ", ".join(list(raw.tree)[:5]) or "none"
        raise CheckpointFormatError(
            f"{raw.path}: unknown checkpoint format (top-level keys: {keys}); pass --from to choose a reader"
        )
    top = max(table.values())
    best = sorted(f for f, s in table.items() if s == top)
    if len(best) > 1:
        raise CheckpointFormatError(
            f"{raw.path}: ambiguous format, fits {' and '.join(best)} equally; pass --from to choose"
        )
    return best[0], scores[best[0]][1], table


def _best(table: dict[str, int]) -> str:
    return max(table, key=table.get)


def read_checkpoint(
    source: str | Path | None,
    *,
    family: str = "auto",
    model: str | None = None,
    num_heads: int | None = None,
    seed: int = 0,
    hash_source: bool = True,
) -> Checkpoint:
    """Read a local checkpoint file or transformers folder into canonical form, validated.

    Args:
        source: a local path (remote sources are resolved before, by ``vitinit.io.remote``); None only
            for ``family="random"``.
        family: one of :data:`FAMILIES`; ``auto`` detects it from the keys.
        model: expected size (``vit-b``...); an error when the shapes say otherwise.
        num_heads: head count for custom sizes (it cannot be read from the weights).
        seed: seed of the random initialization.
        hash_source: put the source's sha256 into the provenance now; a caller that hashes it
            concurrently (``vitinit.convert``) passes False and fills it in with :func:`source_sha256`.

    Example:
        >>> ckpt = read_checkpoint("mae_pretrain_vit_base.pth")  # doctest: +SKIP
        >>> ckpt.spec.variant, ckpt.provenance.dropped  # doctest: +SKIP
    """
    if family not in FAMILIES:
        raise CheckpointFormatError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if family == "random":
        if source is not None:
            raise CheckpointFormatError("--from random takes no source checkpoint")
        ckpt = random.random_checkpoint(model, num_heads=num_heads, seed=seed)
        validate(ckpt)
        return ckpt
    if source is None:
        raise CheckpointFormatError(f"no source checkpoint given for --from {family}")
    raw = open_checkpoint(source)
    fam, reader, table = detect_family(raw, family)
    logger.info("%s: read as %s (scores %s)", source, fam, table)
    ckpt = reader.read(raw, model=model, num_heads=num_heads)
    if ckpt.provenance.family != fam:
        raise CheckpointFormatError(f"{source}: holds a {ckpt.provenance.family} model, not {fam}")
    if hash_source:
        ckpt.provenance.sha256 = source_sha256(raw.path)
    ckpt.provenance.notes.append(
        f"detected as {fam} (scores: {table})" if family == "auto" else f"--from {fam}"
    )
    validate(ckpt)
    return ckpt


def source_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint file, or of the weights file of a transformers folder."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return sha256_file(path / name)
    return sha256_file(path)
