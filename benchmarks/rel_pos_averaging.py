"""What averaging a fine-tuned BEiT's per-block relative-position tables into the paper's two shared tables
costs (``--rel-pos shared``), against keeping them per block (the default, lossless).

A ViT-B BEiT in timm's fine-tuned layout (``beit_base_patch16_224``: per-block tables, layer scale) at
224 px, with per-block tables built around one table whose bias falls with the token distance (an assumed
shape, not read from a real checkpoint), differing per block in one of two ways:

- ``slope``: each block and head has its own locality strength (slope ``U(0, 2·s)`` per unit distance);
- ``noise``: independent per-entry deviations ``N(0, s²)`` around the shared table.

These are synthetic layouts (no real fine-tuned checkpoint is read). Printed per layout: the largest
relative-position bias error |mean table − own table| over blocks, heads and offsets, and the last block's
patch-token features of the averaged conversion vs the per-block one (max |diff| and relative L2), same
input, and the largest total-variation distance between a query's attention distribution under the mean
table and under its own table with q·k = 0 (what the bias alone changes; the random weights here make
q·k and each block's output small, so the feature numbers understate what a trained model would show).
Windows cover the 14×14 grid, global blocks 2, 5, 8, 11 (the paper's), so the window table is the mean of
the 8 windowed blocks and the global table the mean of the 4 global ones.

    python benchmarks/rel_pos_averaging.py            # ViT-B, ~1 min on one CPU core
    python benchmarks/rel_pos_averaging.py --quick    # ViT-S-sized, seconds
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch
from timm.models.beit import Beit

from vitinit.formats import read_checkpoint
from vitinit.modeling.vit import DetectionViT, load_backbone_state
from vitinit.normalize.options import NormalizeOptions
from vitinit.ops.rel_pos import gather_rel_pos_bias, relative_position_index
from vitinit.targets import TARGETS


def distance_table(grid: int, heads: int) -> torch.Tensor:
    """((2g-1)², heads) Euclidean offset lengths, one column per head (timm's row order: dy major)."""
    r = torch.arange(-(grid - 1), grid, dtype=torch.float32)
    d = (r[:, None] ** 2 + r[None, :] ** 2).sqrt().flatten()
    return d[:, None].expand(-1, heads)


def fine_tuned_like(beit: Beit, kind: str, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    grid, heads = beit.patch_embed.grid_size[0], beit.blocks[0].attn.num_heads
    dist = distance_table(grid, heads)
    base = -0.5 * dist  # the shared pre-training-like table
    with torch.no_grad():
        for blk in beit.blocks:
            t = blk.attn.relative_position_bias_table
            if kind == "slope":
                own = -torch.rand(1, heads, generator=g) * 2 * scale * dist
            else:
                own = base + scale * torch.randn(dist.shape, generator=g)
            t[: dist.shape[0]] = own
            t[dist.shape[0] :] = torch.randn(3, heads, generator=g)  # the 3 cls rows (dropped anyway)


def features(normalized, x: torch.Tensor) -> torch.Tensor:
    cfg = normalized.config.replace(out_indices=(normalized.config.depth - 1,))
    net = DetectionViT(cfg).eval()
    load_backbone_state(net, normalized.state_dict())
    with torch.no_grad():
        return net(x)[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="ViT-S-sized (width 384, 6 heads) instead of ViT-B")
    args = ap.parse_args()
    logging.getLogger("vitinit").setLevel(logging.ERROR)  # the averaging warning, once per layout
    width, heads = (384, 6) if args.quick else (768, 12)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    opts = dict(img_size=224, window_size=14, global_block_indexes=(2, 5, 8, 11))
    print(
        f"| layout | scale | max bias error | max attention TV (bias only) | features max abs diff "
        f"| features rel. L2 |  (width {width})"
    )
    print("|---|---|---|---|---|---|")
    for kind, scale in (("slope", 0.25), ("slope", 0.5), ("slope", 1.0), ("noise", 0.1), ("noise", 0.5)):
        beit = Beit(
            img_size=224, patch_size=16, embed_dim=width, depth=12, num_heads=heads, num_classes=0,
            use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1,  # BEiT-B's layer-scale init
        ).eval()
        fine_tuned_like(beit, kind, scale, seed=3)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "beit_ft.pth"
            torch.save({"model": beit.state_dict()}, path)
            ckpt = read_checkpoint(path, family="beit")
            own = TARGETS["vitdet"].normalize(ckpt, NormalizeOptions(**opts))  # rel_pos auto: per block
            avg = TARGETS["vitdet"].normalize(ckpt, NormalizeOptions(**opts, rel_pos="shared"))
            tables = avg.state_dict()
            own_state = own.state_dict()
            err, tv, index = 0.0, 0.0, relative_position_index((14, 14))
            for i in range(12):
                shared = "global" if i in opts["global_block_indexes"] else "window"
                mean = tables[f"rel_pos_{shared}.relative_position_bias_table"]
                block = own_state[f"blocks.{i}.rel_pos.relative_position_bias_table"]
                err = max(err, (mean - block).abs().max().item())
                # Attention from the bias alone (q·k = 0): total variation between the two distributions.
                p, q = (gather_rel_pos_bias(t, index).softmax(-1) for t in (mean, block))
                tv = max(tv, 0.5 * (p - q).abs().sum(-1).max().item())
            a, b = features(avg, x), features(own, x)
        rel = ((a - b).norm() / b.norm()).item()
        diff = (a - b).abs().max().item()
        print(f"| {kind} | {scale} | {err:.3f} | {tv:.3f} | {diff:.3f} | {rel:.4f} |")


if __name__ == "__main__":
    main()
