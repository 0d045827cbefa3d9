"""Pure tensor functions for patch-embedding kernels: resampling a (D, C, p, p) kernel to another patch size.

FlexiViT (Beyer et al. 2023) resamples a patch kernel with the pseudo-inverse of the resize matrix B of the
patch (``w' = pinv(Bᵀ) w``), so that a patch resized with B meets the new kernel as the old patch met the old
one: ``<B x, w'> = <x, w>``. Upsampling a kernel (14 → 16) makes B tall with full column rank, so the identity
is exact for patches resized that way. timm's ``resample_patch_embed`` implements it; we call it rather than
re-implementing it, with timm's defaults (bicubic, antialias) spelled out so that a change of default in timm
cannot silently change our output (tests/test_ops.py pins the agreement).
"""

from __future__ import annotations

import torch

RESAMPLE_INTERPOLATION = "bicubic"
RESAMPLE_ANTIALIAS = True


def resample_patch_embed(weight: torch.Tensor, new_size: tuple[int, int]) -> torch.Tensor:
    """(D, C, h, w) kernel → (D, C, *new_size) by the pseudo-inverse resize (timm's ``resample_patch_embed``).

    Computes in float32 (timm's helper runs ``torch.linalg.pinv`` on the resize matrix) and returns the input
    dtype. Returns the input unchanged when the size is already ``new_size``.
    """
    if weight.ndim != 4:
        raise ValueError(f"patch kernel must be (D, C, h, w), got shape {tuple(weight.shape)}")
    if tuple(weight.shape[-2:]) == tuple(new_size):
        return weight
    from timm.layers import resample_patch_embed as timm_resample_patch_embed

    out = timm_resample_patch_embed(
        weight.float(), list(new_size), interpolation=RESAMPLE_INTERPOLATION, antialias=RESAMPLE_ANTIALIAS
    )
    return out.to(weight.dtype).contiguous()


def resize_patches(patches: torch.Tensor, new_size: tuple[int, int]) -> torch.Tensor:
    """Resize (N, C, h, w) patches with the resize B that :func:`resample_patch_embed` inverts."""
    import torch.nn.functional as F

    return F.interpolate(
        patches.float(), size=tuple(new_size), mode=RESAMPLE_INTERPOLATION, antialias=RESAMPLE_ANTIALIAS
    ).to(patches.dtype)
