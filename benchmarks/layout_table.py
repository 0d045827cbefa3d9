"""Every supported source layout × (auto-detected?, max |diff| vs its source model): the table of issue 9.

Builds each layout's tiny fixture with the real model code (the same builders and reference features as
tests/test_formats.py, tests/test_formats_newer.py and tests/test_formats_clip_siglip.py), reads it, and
compares the converted DetectionViT with the source model on patch tokens at the pre-training resolution
(every block global):

- **default options** (lossless: per-block tables kept where the source has them, a zero absolute
  position embedding where the source has none, layer scale kept; what the tests assert, ≤ 1e-5);
- **paper options** (``--rel-pos shared --abs-pos random``: the paper's two shared tables, a fresh absolute
  embedding where the source has none): lossy wherever the source has no abs pos or per-block tables;
- for the RoPE families (DINOv3, EVA-02, ``tests/fixtures/layouts_rope.py``) also **default options at 2x**
  the pre-training grid, every block global, against the source's own code run at that size.

    python benchmarks/layout_table.py          # ~1 min on 2 CPU cores
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

from fixtures import make_fixtures as mf  # noqa: E402
from fixtures.layouts import IMAGE_TEXT, NEWER  # noqa: E402
from fixtures.layouts_rope import ROPE  # noqa: E402
from fixtures.reference import backbone_features, converted_backbone  # noqa: E402
from test_formats import CASES  # noqa: E402
from test_formats_rope import rope_max_diff  # noqa: E402

from vitinit.formats import read_checkpoint  # noqa: E402


def rows():
    for name, (make, reference, file, family, fmt) in CASES.items():
        yield name, make, reference, file, family, fmt, not name.startswith("hf_"), "auto"
    for name, c in {**NEWER, **ROPE, **IMAGE_TEXT}.items():
        yield name, c.make, c.reference, c.name, c.family, c.format, c.needs_heads, c.from_family or "auto"


@torch.no_grad()
def max_diff(ckpt, source, reference, **options) -> float:
    s = ckpt.spec
    size = s.pretrain_grid[0] * s.patch_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    return (
        (backbone_features(converted_backbone(ckpt, **options), x) - reference(source, x)).abs().max().item()
    )


def main() -> None:
    logging.disable(logging.WARNING)  # the per-block averaging warning of the paper options
    root = Path(tempfile.mkdtemp(prefix="vitinit-layouts-"))
    start = time.perf_counter()
    print(
        "| layout | read as | auto-detected | heads from | max abs diff (default options) "
        "| max abs diff (paper options) | max abs diff at 2x, all global (RoPE families) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, make, reference, file, family, fmt, needs_heads, how in rows():
        source = make(root / file)
        ckpt = read_checkpoint(root / file, family=how, num_heads=mf.HEADS if needs_heads else None)
        assert (ckpt.provenance.family, ckpt.provenance.format) == (family, fmt), name
        default = max_diff(ckpt, source, reference)
        paper = max_diff(ckpt, source, reference, rel_pos="shared", abs_pos="random")
        twice = f"{rope_max_diff(ckpt, source, reference, 2):.1e}" if ckpt.spec.rope else "–"
        auto = "yes" if how == "auto" else f"no (--from {how}: same keys as beit)"
        from_config = "config.json" if (root / file).is_dir() else "the weights"
        heads = "--num-heads (tiny custom width)" if needs_heads else from_config
        print(f"| {name} | {family} ({fmt}) | {auto} | {heads} | {default:.1e} | {paper:.1e} | {twice} |")
    count = len(CASES) + len(NEWER) + len(ROPE) + len(IMAGE_TEXT)
    print(f"\n{count} layouts in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
