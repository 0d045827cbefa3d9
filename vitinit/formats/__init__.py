"""Readers: every supported checkpoint family → one canonical :class:`~vitinit.canonical.Checkpoint`.

Every reader module has the same shape (issue 11's reader protocol):

- ``FAMILIES``: the families it can produce (a family module: its own; a layout reader such as
  :mod:`~vitinit.formats.hf` or :mod:`~vitinit.formats.timm_hub`: several);
- ``score(raw) -> Score``: how well the source fits, for which family, and the evidence;
- ``read(raw, *, model=None, num_heads=None, family=None) -> Checkpoint``;
- optionally ``SHARED_LAYOUT``: families whose files it cannot tell apart (``--from`` may name any).

Auto-detection uses every signal a source carries before the keys: a config file (transformers'
``model_type``, timm's ``architecture``) or an ``args``/``arch`` entry naming the family scores
``DECLARED``, above any key score. Otherwise the single best key score wins; no match, or a tie between
families, is an error that asks for ``--from``. An explicit family wins over the scores, but a reader that can
produce it must still recognize the file; "it looks like X" names what was seen.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import ModuleType

from vitinit.canonical import Checkpoint, validate
from vitinit.errors import CheckpointFormatError
from vitinit.families import FAMILIES as KNOWN_FAMILIES
from vitinit.formats import (
    beit,
    clip,
    dinov2,
    dinov3,
    eva02,
    hf,
    mae,
    mocov3,
    random,
    siglip,
    supervised,
    timm_hub,
)
from vitinit.formats._common import DECLARED, Score, record_input_norm
from vitinit.io.hash_cache import cached_sha256
from vitinit.io.load import OPEN_CLIP_WEIGHT_FILE_NAMES, WEIGHT_FILE_NAMES, RawCheckpoint, open_checkpoint

logger = logging.getLogger(__name__)

FAMILIES = ("auto", *KNOWN_FAMILIES)
READERS: tuple[ModuleType, ...] = (
    timm_hub, hf, clip, siglip, dinov2, beit, mae, mocov3, supervised, dinov3, eva02
)

__all__ = ["FAMILIES", "READERS", "Score", "detect_family", "read_checkpoint"]


def _scores(raw: RawCheckpoint) -> dict[str, tuple[Score, ModuleType]]:
    """The best score per family, with the reader that gave it."""
    best: dict[str, tuple[Score, ModuleType]] = {}
    for reader in READERS:
        s = reader.score(raw)
        if s.points > 0 and s.points > best.get(s.family, (Score(s.family, 0), None))[0].points:
            best[s.family] = (s, reader)
    return best


def _looks_like(best: dict[str, tuple[Score, ModuleType]]) -> str:
    if not best:
        return "no known layout matches"
    s = max((s for s, _ in best.values()), key=lambda s: s.points)
    return f"it looks like {s.family}: {s.evidence}" if s.evidence else f"it looks like {s.family}"


def detect_family(raw: RawCheckpoint, family: str = "auto") -> tuple[str, ModuleType, dict[str, int]]:
    """(family, reader module, all scores) for ``raw``; raises when nothing or more than one fits."""
    best = _scores(raw)
    table = {f: s.points for f, (s, _) in best.items()}
    declared = {s.family for s, _ in best.values() if s.points >= DECLARED}
    if family != "auto":
        if raw.config is not None and declared and family not in declared:
            # A config file defines the model (an 'args' entry only describes a training run, so --from may
            # overrule that): a --from that contradicts it is a mistake.
            raise CheckpointFormatError(f"{raw.path}: not a {family} checkpoint ({_looks_like(best)})")
        if family in best:
            return family, best[family][1], table
        # One layout, several families (BEiT and BEiT v2 fine-tuned files): only the user can tell.
        able = [(s, r) for s, r in best.values() if family in getattr(r, "SHARED_LAYOUT", ())]
        if able:
            return family, max(able, key=lambda sr: sr[0].points)[1], table
        raise CheckpointFormatError(f"{raw.path}: not a {family} checkpoint ({_looks_like(best)})")
    if not table:
        keys = ", ".join(list(raw.tree)[:5]) or "none"
        raise CheckpointFormatError(
            f"{raw.path}: unknown checkpoint format (top-level keys: {keys}); pass --from to choose a reader"
        )
    top = max(table.values())
    tied = sorted(f for f, s in table.items() if s == top)
    if len(tied) > 1:
        why = "; ".join(f"{f}: {best[f][0].evidence}" for f in tied if best[f][0].evidence)
        raise CheckpointFormatError(
            f"{raw.path}: ambiguous format, fits {' and '.join(tied)} equally ({why}); pass --from to choose"
        )
    return tied[0], best[tied[0]][1], table


def evidence(raw: RawCheckpoint, family: str) -> str:
    """What made ``family`` fit ``raw`` (empty when it does not)."""
    s = _scores(raw).get(family)
    return s[0].evidence if s else ""


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
        family: one of :data:`FAMILIES`; ``auto`` detects it (config files first, then the keys).
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
    ckpt = reader.read(raw, model=model, num_heads=num_heads, family=fam)
    if ckpt.provenance.family != fam:
        raise CheckpointFormatError(f"{source}: holds a {ckpt.provenance.family} model, not {fam}")
    record_input_norm(ckpt, raw)
    if hash_source:
        ckpt.provenance.sha256 = source_sha256(raw.path)
    why = evidence(raw, fam)
    ckpt.provenance.notes.append(
        (f"detected as {fam} (scores: {table}" + (f"; {why})" if why else ")"))
        if family == "auto"
        else f"--from {fam}"
    )
    validate(ckpt)
    return ckpt


def source_sha256(path: str | Path, *, cancel: threading.Event | None = None) -> str:
    """sha256 of a checkpoint file, or of the weights file of a transformers / timm / open_clip folder;
    ``cancel`` set stops it between two chunks (:class:`~vitinit.io.save.HashCancelled`). A file hashed
    before and unchanged since is not read again (:mod:`vitinit.io.hash_cache`)."""
    return cached_sha256(source_weights_file(path), cancel=cancel)


def source_weights_file(path: str | Path) -> Path:
    """The file whose sha256 is a source's: ``path``, or the weights file of a folder."""
    path = Path(path)
    if path.is_dir():
        for name in (*WEIGHT_FILE_NAMES, *OPEN_CLIP_WEIGHT_FILE_NAMES):
            if (path / name).is_file():
                return path / name
    return path
