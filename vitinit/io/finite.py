"""NaN/inf values in weights, noticed as the tensors stream through a writer."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger("vitinit.io.save")  # the writers' logger: one place to silence or capture


class NonFiniteCheck:
    """Counts NaN/inf values per tensor as the tensors stream through a writer; one warning at the end.

    A warning, not a refusal: the values are the source's (a converter must not invent others), some are
    harmless (a never-used table row), and the trainer already stops at a non-finite loss; but a user must
    hear about them before spending GPU hours, not discover them in a NaN loss.
    """

    def __init__(self, path: Path):
        self.path, self.found = path, {}

    def check(self, name: str, tensor: torch.Tensor) -> None:
        if not tensor.is_floating_point() or not tensor.numel():
            return
        # One sum is finite exactly when no value is NaN/inf (or the sum overflows: then count exactly).
        # It reads the tensor once without allocating; isfinite().all() ran 20x slower here.
        if bool(torch.isfinite(tensor.sum())):
            return
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            self.found[name] = bad

    def report(self) -> None:
        if self.found:
            listed = ", ".join(f"{k} ({n})" for k, n in list(self.found.items())[:5])
            more = f" and {len(self.found) - 5} more" if len(self.found) > 5 else ""
            log.warning(
                "%s: %d tensor(s) hold NaN/inf values, copied as they are: %s%s",
                self.path, len(self.found), listed, more,
            )
