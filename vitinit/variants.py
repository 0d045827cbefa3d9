"""ViT sizes by name, and inference of the size from tensor shapes.

The head count cannot be recovered from a state dict (every attention tensor is (3D, D) or (D, D) whatever
the number of heads), so it comes from this table, from a config file, or from the user.
"""

from __future__ import annotations

from dataclasses import dataclass

from vitinit.errors import SpecMismatchError


@dataclass(frozen=True)
class ViTVariant:
    name: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 16

    @property
    def mlp_hidden_dim(self) -> int:
        return 4 * self.embed_dim


VIT_VARIANTS: dict[str, ViTVariant] = {
    v.name: v
    for v in (
        ViTVariant("vit-t", 192, 12, 3),
        ViTVariant("vit-s", 384, 12, 6),  # DeiT-S; MoCo v3's ViT-S uses 12 heads (its README)
        ViTVariant("vit-b", 768, 12, 12),
        ViTVariant("vit-l", 1024, 24, 16),
        ViTVariant("vit-h", 1280, 32, 16, patch_size=14),
    )
}


def get_variant(name: str) -> ViTVariant:
    key = name.lower().replace("_", "-")
    if key not in VIT_VARIANTS:
        raise SpecMismatchError(f"unknown model size {name!r}; choose one of {', '.join(VIT_VARIANTS)}")
    return VIT_VARIANTS[key]


def infer_variant(embed_dim: int, depth: int) -> ViTVariant | None:
    """The standard variant with this width and depth, or None for a custom size."""
    for v in VIT_VARIANTS.values():
        if v.embed_dim == embed_dim and v.depth == depth:
            return v
    return None


def default_num_heads(embed_dim: int) -> int:
    """Heads for a custom width: head dim 64 as every standard ViT, or one head for tiny test models."""
    return max(1, embed_dim // 64) if embed_dim % 64 == 0 else 1


def check_variant(requested: str | None, embed_dim: int, depth: int) -> ViTVariant | None:
    """Resolve the variant from the shapes and fail when ``requested`` contradicts them."""
    found = infer_variant(embed_dim, depth)
    if requested is None:
        return found
    want = get_variant(requested)
    if (want.embed_dim, want.depth) != (embed_dim, depth):
        raise SpecMismatchError(
            f"--model {want.name} expects width {want.embed_dim} and depth {want.depth}, "
            f"but the checkpoint has width {embed_dim} and depth {depth}"
            + (f" ({found.name})" if found else "")
        )
    return want


# Plausible ranges of a ViT's sizes, as a recipe's model.backbone or a checkpoint folder's config may state
# them (the largest released ViTs: width 6144, depth 80, 64 heads; patches 8 to 32).
VIT_SIZE_BOUNDS = {"embed_dim": (1, 16384), "depth": (1, 256), "num_heads": (1, 1024), "patch_size": (2, 64),
                   "mlp_hidden_dim": (1, 65536)}
