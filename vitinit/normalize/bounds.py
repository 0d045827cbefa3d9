"""Sane ranges of the sizes a user chooses (input side, patch, window), checked before any file is read.

``MAX_IMG_SIZE`` is 4096 px: a 256×256 grid at patch 16, whose global attention already needs a
65536×65536 score matrix per head (16 GiB in fp32; the paper's detection size is 1024). The patch range,
2 to 64 px, covers every released ViT (8, 14, 16, 32) and the resamplings between them; a bigger kernel
only multiplies the patch embedding's memory (``--patch-size 10000`` asked for 78 GB).
"""

from __future__ import annotations

from vitinit.errors import ConfigError, quote
from vitinit.variants import VIT_SIZE_BOUNDS

MIN_IMG_SIZE, MAX_IMG_SIZE = 16, 4096
MIN_PATCH, MAX_PATCH = VIT_SIZE_BOUNDS["patch_size"]
MAX_WINDOW = 256  # tokens per window side: a 4096-px input at patch 16


def _int_in(value: object, lo: int, hi: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be an integer from {lo} to {hi}, got {quote(value)}")
    return value


def check_sizes(img_size: object, patch_size: object, window_size: object) -> None:
    """One line naming the option unless the input side, patch (None: the source's) and window are sane,
    and a chosen patch divides the input side (the detection grid is ``img_size / patch``)."""
    _int_in(img_size, MIN_IMG_SIZE, MAX_IMG_SIZE, "--size (the input side in pixels)")
    _int_in(window_size, 1, MAX_WINDOW, "--window-size (tokens)")
    if patch_size is None:
        return
    _int_in(patch_size, MIN_PATCH, MAX_PATCH, "--patch-size (pixels)")
    if img_size % patch_size:
        raise ConfigError(
            f"--patch-size {patch_size} does not divide --size {img_size}; pick a size that is a multiple "
            f"of it (e.g. {img_size // patch_size * patch_size})"
        )
