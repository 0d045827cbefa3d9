"""``--to detectron2``: upstream ViTDet's layout, loadable as ``train.init_checkpoint``.

detectron2's ``ViT`` (``modeling/backbone/vit.py``) sits at ``backbone.net`` inside ``GeneralizedRCNN``.
It keeps ``pos_embed`` at the PRE-TRAINING grid with one cls slot (``pretrain_use_cls_token=True``) and
resizes it at every forward; it has no layer scale, a fused ``qkv`` with bias, and decomposed relative
positions ``rel_pos_h``/``rel_pos_w`` (per block, zero-initialized) that no BEiT-style table maps onto.
So: layer scale is folded, BEiT's q/v biases are already fused, the cls slot is kept (DeiT's dist slot
removed, a zero slot added where the source has none), and ``rel_pos_h/w`` are written as zeros for the
target's window/global grids. BEiT's relative-position tables cannot be carried: refused unless
``drop_rel_pos=True``. The file is ``{'model': state_dict, 'vitinit': {metadata}}`` (tensors and strings).
"""

from __future__ import annotations

from pathlib import Path

import torch

import vitinit
from vitinit.canonical import Checkpoint, LazyTensor, Provenance, block_keys
from vitinit.errors import SpecMismatchError
from vitinit.io.save import check_output_path, save_torch
from vitinit.modeling.vit import quarter_block_indexes
from vitinit.normalize.detection import as_float32, fold_lazy, fresh_pos_embed

PREFIX = "backbone.net."
FORMAT = "vitinit.detectron2"


def to_detectron2(
    ckpt: Checkpoint,
    *,
    img_size: int = 1024,
    window_size: int = 14,
    global_block_indexes: tuple[int, ...] | None = None,
    use_rel_pos: bool = True,
    drop_rel_pos: bool = False,
    seed: int = 0,
) -> tuple[dict[str, LazyTensor], Provenance]:
    """``backbone.net.*`` tensors for detectron2's ViT, and the provenance with ``normalization`` filled."""
    spec, t = ckpt.spec, ckpt.tensors
    if spec.rel_pos != "none" and not drop_rel_pos:
        raise SpecMismatchError(
            f"--to detectron2 cannot hold {ckpt.provenance.family}'s relative position bias tables "
            "(ViTDet uses decomposed rel_pos_h/rel_pos_w); pass --drop-rel-pos to drop them (they would be "
            "zero-initialized), or convert --to vitdet, which keeps them"
        )
    record: dict = {
        "target": "detectron2",
        "img_size": img_size,
        "window_size": window_size,
        "pretrain_img_size": spec.pretrain_grid[0] * spec.patch_size,
        "dtype": "float32",
        "pretrain_use_cls_token": True,
    }
    out: dict[str, LazyTensor] = {
        PREFIX + "patch_embed.proj.weight": as_float32(t["patch_embed.proj.weight"]),
        PREFIX + "patch_embed.proj.bias": as_float32(t["patch_embed.proj.bias"]),
    }
    gh, gw = spec.pretrain_grid
    shape = (1, 1 + gh * gw, spec.embed_dim)
    if spec.has_abs_pos:
        pos, prefix = t["pos_embed"], spec.num_prefix_tokens

        def with_one_cls_slot() -> torch.Tensor:
            x = pos.load().float()
            cls = x[:, :1] if prefix >= 1 else torch.zeros_like(x[:, :1])
            return torch.cat([cls, x[:, prefix:]], dim=1)

        out[PREFIX + "pos_embed"] = LazyTensor(shape, torch.float32, with_one_cls_slot)
        record["abs_pos"] = f"pre-trained at {gh}x{gw} with one cls slot ({prefix} prefix row(s) in source)"
    else:
        out[PREFIX + "pos_embed"] = fresh_pos_embed(shape, seed)
        record["abs_pos"] = f"fresh truncated normal std 0.02 at {gh}x{gw} + cls slot (seed {seed})"
    grid = img_size // spec.patch_size
    globals_ = set(
        global_block_indexes if global_block_indexes is not None else quarter_block_indexes(spec.depth)
    )
    head_dim = spec.embed_dim // spec.num_heads
    for i in range(spec.depth):
        for name in block_keys(i, layer_scale=False):
            out[PREFIX + name] = as_float32(t[name])
        if spec.layer_scale:
            for gamma, layer in (("gamma_1", "attn.proj"), ("gamma_2", "mlp.fc2")):
                w, b = fold_lazy(
                    t[f"blocks.{i}.{layer}.weight"], t[f"blocks.{i}.{layer}.bias"], t[f"blocks.{i}.{gamma}"]
                )
                out[f"{PREFIX}blocks.{i}.{layer}.weight"], out[f"{PREFIX}blocks.{i}.{layer}.bias"] = w, b
        if use_rel_pos:
            size = grid if i in globals_ else window_size
            for axis in ("h", "w"):
                shape_rp = (2 * size - 1, head_dim)
                out[f"{PREFIX}blocks.{i}.attn.rel_pos_{axis}"] = LazyTensor(
                    shape_rp, torch.float32, lambda s=shape_rp: torch.zeros(s)
                )
    record["layer_scale"] = "folded into attn.proj and mlp.fc2" if spec.layer_scale else "none in source"
    record["rel_pos"] = ("decomposed rel_pos_h/w zeros (ViTDet's init)" if use_rel_pos else "none") + (
        "; source's BEiT tables DROPPED (--drop-rel-pos)" if spec.rel_pos != "none" else ""
    )
    record["global_block_indexes"] = sorted(globals_)
    prov = Provenance.from_dict(ckpt.provenance.to_dict())
    if spec.rel_pos != "none":
        prov.dropped["relative_position_bias_table"] = (
            "not representable in detectron2's ViT (--drop-rel-pos)"
        )
    prov.normalization = record
    return out, prov


def write_detectron2(
    path: str | Path, tensors: dict[str, LazyTensor], provenance: Provenance, *, overwrite: bool = False
) -> str:
    """Write ``{'model': ..., 'vitinit': ...}`` with ``torch.save`` atomically; return the file's sha256.

    Unlike ``--to vitdet`` this holds the backbone in memory once (``torch.save`` needs every tensor).
    """
    path = check_output_path(path, overwrite=overwrite)
    state = {k: v.load().contiguous() for k, v in tensors.items()}
    meta = {
        "format": FORMAT,
        "vitinit_version": vitinit.__version__,
        "provenance": provenance.to_json(),
        "source_sha256": provenance.sha256 or "",
    }
    return save_torch(path, {"model": state, "vitinit": meta}, overwrite=overwrite)
