"""The record every reader's ``score`` returns (issue 11's reader protocol), and its arithmetic."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Score:
    """How well a source fits a family, and why: every reader's ``score`` returns one.

    ``points``: 0 = does not fit; 1-6 = the tensor keys fit (higher = more specific keys);
    :data:`DECLARED` = the source names its family itself (a config file, an ``args``/``arch`` entry), which
    outranks any key score. ``evidence`` is shown to the user ("it looks like mae: ...").
    """

    family: str
    points: int
    evidence: str = ""


DECLARED = 10


def plus(score: Score, points: int, evidence: str) -> Score:
    """``score`` with more points and one more piece of evidence."""
    why = f"{score.evidence}, {evidence}" if score.evidence else evidence
    return Score(score.family, score.points + points, why)
