"""Change a canonical checkpoint's patch size (e.g. DINOv2's or MAE ViT-H's 14 → 16), as an explicit option.

detectron2's ViTDet ships ``mae_pretrain_vit_huge_p14to16.pth`` for this: a 14-px kernel at 1024 px gives a
73.1-token grid, which windows of 14 do not tile. What changes (all lazily, recorded in the provenance):

- ``patch_embed.proj.weight``: resampled to the new size by the pseudo-inverse resize
  (:func:`vitinit.ops.patch_embed.resample_patch_embed`, timm's / FlexiViT's method); the bias is unchanged.
- ``pos_embed``: the grid part resized so that it covers the same pre-training image
  (``round(grid · old / new)``: 16×16 → 14×14 for ViT-H at 224 px, 37×37 → 32×32 for DINOv2 at 518 px),
  bicubic without antialias as everywhere else (:func:`vitinit.ops.pos_embed.resize_abs_pos_embed`); the
  prefix rows are kept for the later steps to drop.
- BEiT-style relative tables: resized to the new window (:func:`vitinit.ops.rel_pos.resize_rel_pos_table`).

This is not function-preserving (a 16-px patch sees other pixels than a 14-px one); how close the features
stay is measured by ``benchmarks/patch_resample.py``.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from vitinit.canonical import BEIT_EXTRA_REL_POS_ROWS, Checkpoint, LazyTensor, Provenance
from vitinit.errors import ConfigError
from vitinit.ops.patch_embed import resample_patch_embed
from vitinit.ops.pos_embed import resize_abs_pos_embed
from vitinit.ops.rel_pos import resize_rel_pos_table


def resampled_grid(grid: tuple[int, int], old_patch: int, new_patch: int) -> tuple[int, int]:
    """The token grid of the same image at ``new_patch`` (rounded to whole tokens)."""
    return tuple(max(1, round(g * old_patch / new_patch)) for g in grid)


def resample_patch_size(ckpt: Checkpoint, patch_size: int) -> Checkpoint:
    """``ckpt`` with its patch kernel, position embedding and tables resampled to ``patch_size``.

    Returns ``ckpt`` itself when the patch size already matches; never mutates it.
    """
    spec, t = ckpt.spec, ckpt.tensors
    if patch_size < 1:
        raise ConfigError(f"--patch-size must be positive, got {patch_size}")
    if patch_size == spec.patch_size:
        return ckpt
    old, new = spec.pretrain_grid, resampled_grid(spec.pretrain_grid, spec.patch_size, patch_size)
    out = dict(t)
    w = t["patch_embed.proj.weight"]
    out["patch_embed.proj.weight"] = w.map(
        lambda x: resample_patch_embed(x, (patch_size, patch_size)),
        shape=(*w.shape[:2], patch_size, patch_size),
    )
    notes = [
        f"patch embedding resampled {spec.patch_size} -> {patch_size} px (pseudo-inverse resize, timm's "
        "resample_patch_embed, bicubic + antialias): not function-preserving"
    ]
    if spec.has_abs_pos:
        pos, prefix = t["pos_embed"], spec.num_prefix_tokens

        def pos_at_new_grid(x: torch.Tensor) -> torch.Tensor:
            grid = resize_abs_pos_embed(x.float(), old, new, num_prefix_tokens=prefix).flatten(1, 2)
            return torch.cat([x[:, :prefix].float(), grid], dim=1).to(x.dtype)

        out["pos_embed"] = pos.map(pos_at_new_grid, shape=(1, prefix + new[0] * new[1], pos.shape[2]))
        notes.append(f"pos_embed resized {old[0]}x{old[1]} -> {new[0]}x{new[1]} (same pre-training image)")
    for name, table in t.items():
        if name.endswith("relative_position_bias_table"):
            rows = (2 * new[0] - 1) * (2 * new[1] - 1) + BEIT_EXTRA_REL_POS_ROWS
            out[name] = LazyTensor(
                (rows, table.shape[1]),
                table.dtype,
                lambda tb=table: resize_rel_pos_table(
                    tb.load(), new, num_extra_rows=BEIT_EXTRA_REL_POS_ROWS, keep_extra_rows=True
                ),
            )
    prov = Provenance.from_dict(ckpt.provenance.to_dict())
    prov.notes.extend(notes)
    return Checkpoint(replace(spec, patch_size=patch_size, pretrain_grid=new), out, prov)
