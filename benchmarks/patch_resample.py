"""How close a 14 → 16 resampled ViT's features stay to the original's, at the same pixel input.

The resampling (``vitinit.normalize.patch_size``: pseudo-inverse kernel resize, position embedding resized to
the same image) cannot be exact: a 16-px patch covers other pixels than a 14-px one. This script measures it
on the backbone the user gets (``to_vitdet`` → ``DetectionViT``, every block global at this size):

- **kernel resampled** (the option): the patch-16 model on image x (S px, grid S/16) against the original
  patch-14 model on the same x (grid S/14), whose feature map is area-averaged to the S/16 grid;
- **image resized** (the baseline, measured in the same run): the original model on x resized to S·14/16 px
  (grid S/16 as well) against the same reference — what one gets without resampling, by feeding the
  patch-14 model a smaller image;
- **same grid**: the patch-16 model on x upsized by 16/14 (grid S/14, as the original's) against the
  original on x, no pooling: what is left of the difference once the token grids agree;
- **patch identity**: ``<B x, w'> = <x, w>`` for patches resized with the kernel's own resize B (should be
  ~1e-7: the pseudo-inverse is exact for upsampling).

Metrics on the last block's patch tokens: relative L2 error ``‖f' − f‖ / ‖f‖``, mean per-token cosine
similarity, cosine of the mean-pooled features. Weights: timm's own initialization of each architecture
(no pretrained file can be downloaded here), with layer scale 1.0 as the official DINOv2 hub models load it;
trained kernels are smoother than random ones, so these numbers are a pessimistic reference, not a claim
about released checkpoints. Input: matplotlib's sample photograph (grace_hopper.jpg), ImageNet-normalized.

    python benchmarks/patch_resample.py                      # ViT-S/14 DINOv2 and ViT-B/14 DINOv2, 448 px
    python benchmarks/patch_resample.py --arch vit_huge_patch14_224 --depth 8   # MAE ViT-H/14 width
"""

from __future__ import annotations

import argparse

import timm
import torch
import torch.nn.functional as F

from vitinit.canonical import LazyTensor
from vitinit.formats._common import build_checkpoint, canonical_from_timm
from vitinit.modeling.vit import DetectionViT, load_backbone_state
from vitinit.normalize.detection import detection_config, to_vitdet
from vitinit.normalize.patch_size import resample_patch_size
from vitinit.ops.patch_embed import resample_patch_embed, resize_patches

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def photo(size: int) -> torch.Tensor:
    import matplotlib.cbook as cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        img = Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(size, size, 3).float() / 255
    return ((x - MEAN) / STD).permute(2, 0, 1)[None]


def canonical(arch: str, depth: int | None):
    kw = {"depth": depth} if depth else {}
    if "dinov2" in arch:
        kw["init_values"] = 1.0
    net = timm.create_model(arch, pretrained=False, num_classes=0, **kw)
    sd = {k: LazyTensor.of(v.detach()) for k, v in net.state_dict().items()}
    tensors, dropped = canonical_from_timm(sd, fmt=arch)
    heads = net.blocks[0].attn.num_heads
    return build_checkpoint(
        tensors, dropped, family="test", fmt=arch, source=arch, model=None, num_heads=heads
    )


@torch.no_grad()
def features(ckpt, x: torch.Tensor, patch: int) -> torch.Tensor:
    """(h, w, D) last-block features of the detection backbone at x's size, all blocks global."""
    grid = x.shape[-1] // patch
    cfg = detection_config(
        ckpt.spec,
        img_size=x.shape[-1],
        window_size=grid,
        patch_size=patch,
        out_indices=(ckpt.spec.depth - 1,),
    )
    state, _ = to_vitdet(ckpt, cfg)
    net = DetectionViT(cfg).eval()
    load_backbone_state(net, {k: t.load() for k, t in state.items()})
    return net(x)[-1][0].permute(1, 2, 0)


def compare(f: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float]:
    a, b = f.reshape(-1, f.shape[-1]), ref.reshape(-1, ref.shape[-1])
    rel = ((a - b).norm() / b.norm()).item()
    tok = F.cosine_similarity(a, b, dim=1).mean().item()
    pooled = F.cosine_similarity(a.mean(0), b.mean(0), dim=0).item()
    return rel, tok, pooled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", nargs="+", default=["vit_small_patch14_dinov2", "vit_base_patch14_dinov2"])
    ap.add_argument("--depth", type=int, default=None, help="fewer blocks (memory), default: the arch's")
    ap.add_argument("--size", type=int, default=448, help="pixels; a multiple of 14·16/gcd = 112")
    args = ap.parse_args()
    torch.manual_seed(0)
    assert args.size % 112 == 0, "size must be a multiple of 112 (divisible by 14 and 16)"
    x = photo(args.size)
    small = F.interpolate(x, size=(args.size * 14 // 16,) * 2, mode="bicubic", antialias=True)
    print(f"input {args.size} px: patch 14 -> grid {args.size // 14}, patch 16 -> grid {args.size // 16}")
    print("| arch | depth | comparison | rel. L2 error | token cosine | pooled cosine |")
    print("|---|---|---|---|---|---|")
    for arch in args.arch:
        torch.manual_seed(0)  # timm's init of this arch, the same whatever ran before
        ckpt = canonical(arch, args.depth)
        g16 = args.size // 16
        ref = features(ckpt, x, 14)  # original, grid S/14
        ref = F.adaptive_avg_pool2d(ref.permute(2, 0, 1)[None], g16)[0].permute(1, 2, 0)
        resampled = resample_patch_size(ckpt, 16)
        rows = {
            "kernel resampled 14->16 (the option)": features(resampled, x, 16),
            "image resized by 14/16 (baseline)": features(ckpt, small, 14),
        }
        # The same token grid as the original (x upsized by 16/14): isolates the kernel resampling.
        big = F.interpolate(x, size=(args.size * 16 // 14,) * 2, mode="bicubic", antialias=True)
        same_grid = compare(features(resampled, big, 16), features(ckpt, x, 14))
        errors = []
        for name, f in rows.items():
            rel, tok, pooled = compare(f, ref)
            errors.append(rel)
            print(f"| {arch} | {ckpt.spec.depth} | {name} | {rel:.4f} | {tok:.4f} | {pooled:.4f} |")
        print(
            f"| {arch} | {ckpt.spec.depth} | kernel resampled, x upsized 16/14 (same grid 32, no pooling) | "
            f"{same_grid[0]:.4f} | {same_grid[1]:.4f} | {same_grid[2]:.4f} |"
        )
        w = ckpt.tensors["patch_embed.proj.weight"].load()
        patches = x.unfold(2, 14, 14).unfold(3, 14, 14).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 14, 14)
        old = F.conv2d(patches, w).flatten(1)
        new = F.conv2d(resize_patches(patches, (16, 16)), resample_patch_embed(w, (16, 16))).flatten(1)
        ident = ((new - old).norm() / old.norm()).item()
        print(f"| {arch} | - | patch identity <Bx, w'> vs <x, w> | {ident:.2e} | - | - |")
        print(f"| {arch} | - | ratio resampled / baseline rel. error | {errors[0] / errors[1]:.3f} | - | - |")


if __name__ == "__main__":
    main()
