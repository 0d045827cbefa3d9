"""MoCo v3 (facebookresearch/moco-v3) ViT checkpoints.

Training checkpoints (``vit-b-300ep.pth.tar``) are ``{'epoch', 'arch', 'state_dict', 'optimizer',
'scaler'}`` whose ``state_dict`` holds the DDP-wrapped MoCo model: ``module.base_encoder.*`` (the ViT we
keep, minus its projection ``head``), ``module.momentum_encoder.*`` (EMA copy) and ``module.predictor.*``.
The repo's ``convert_to_deit.py`` output (``{'model': encoder}``) is read too, recognized by MoCo v3's
sin-cos embedding. MoCo v3's ViT-S has 12 heads, unlike DeiT-S (README), hence ``ARCH_HEADS``.
"""

from __future__ import annotations

from vitinit.canonical import Checkpoint
from vitinit.formats._common import (
    Score,
    build_checkpoint,
    canonical_from_timm,
    record_dropped,
    state_dict_of,
    strip_prefix,
)
from vitinit.formats.sincos import score_timm_layout
from vitinit.io.load import RawCheckpoint

FAMILY = "mocov3"
FAMILIES = (FAMILY,)
ARCH_HEADS = {"vit_small": 12, "vit_base": 12, "vit_large": 16}
WIDTH_HEADS = {384: 12, 768: 12, 1024: 16}  # vits.py: vit_small / vit_base / vit_large
_DROPPED_PREFIXES = {
    "momentum_encoder.": "momentum (EMA) encoder: a copy for the contrastive target",
    "predictor.": "MoCo v3 prediction MLP",
    "base_encoder.head.": "MoCo v3 projection MLP of the base encoder",
}


def _encoder_prefix(sd: dict) -> str | None:
    for prefix in ("module.base_encoder.", "base_encoder."):
        if any(k.startswith(prefix) for k in sd):
            return prefix
    return None


def score(raw: RawCheckpoint) -> Score:
    """5 for a raw training checkpoint (base/momentum encoders); else the sin-cos score of a converted one."""
    sd = state_dict_of(raw, ("state_dict", "model"))
    prefix = _encoder_prefix(sd)
    if prefix:
        if not score_timm_layout(strip_prefix(sd, prefix), FAMILY).points:
            return Score(FAMILY, 0)
        arch = raw.tree.get("arch")
        named = f", arch {arch!r}" if isinstance(arch, str) else ""
        return Score(FAMILY, 5, f"MoCo v3 {prefix}* and momentum_encoder keys{named}")
    return score_timm_layout(sd, FAMILY)


def read(
    raw: RawCheckpoint, *, model: str | None = None, num_heads: int | None = None, family: str | None = None
) -> Checkpoint:
    sd = state_dict_of(raw, ("state_dict", "model"))
    prefix = _encoder_prefix(sd)
    dropped: dict[str, str] = {}
    counts: dict[str, int] = {}
    fmt = "mocov3/converted"
    if prefix:
        fmt = "mocov3/train"
        outer = prefix[: -len("base_encoder.")]
        for key in sd:
            rest = key[len(outer) :] if key.startswith(outer) else key
            for p, why in _DROPPED_PREFIXES.items():
                if rest.startswith(p):
                    record_dropped(dropped, counts, key, outer + p + "*", why)
        sd = {k: v for k, v in strip_prefix(sd, prefix).items() if not k.startswith("head.")}
    tensors, more = canonical_from_timm(sd, fmt=fmt)
    dropped.update(more)
    arch = raw.tree.get("arch")
    hint = ARCH_HEADS.get(arch) if isinstance(arch, str) else None
    notes = [f"arch {arch!r} from the checkpoint"] if isinstance(arch, str) else []
    width = tensors["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in tensors else None
    if hint is None and width in WIDTH_HEADS:
        # convert_to_deit output has no 'arch': the size table would give DeiT-S's 6 heads for width 384.
        hint = WIDTH_HEADS[width]
        notes.append(f"{hint} heads: MoCo v3's ViT of width {width} (no 'arch' in the file)")
    if tensors.get("pos_embed") is not None:
        notes.append(
            "pos_embed is MoCo v3's frozen sin-cos; patch_embed may be frozen random (--stop-grad-conv1)"
        )
    return build_checkpoint(
        tensors,
        dropped,
        family=FAMILY,
        fmt=fmt,
        source=str(raw.path),
        model=model,
        num_heads=num_heads,
        heads_hint=hint,
        notes=notes,
    )
