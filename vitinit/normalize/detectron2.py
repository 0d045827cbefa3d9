"""Canonical checkpoint → upstream ViTDet's layout (``--to detectron2``), for ``train.init_checkpoint``.

detectron2's ``ViT`` (``detectron2.modeling.backbone.vit``) is ``backbone.net`` in ``GeneralizedRCNN``.
It keeps ``pos_embed`` at the PRE-TRAINING grid with one cls slot (``pretrain_use_cls_token=True``) and
resizes it at every forward; it has no layer scale, a fused ``qkv`` with bias, and decomposed relative
positions ``rel_pos_h``/``rel_pos_w`` (per block, zero-initialized) that no BEiT-style table maps onto.
So: layer scale is folded, BEiT's q/v biases are already fused, the cls slot is kept (DeiT's dist slot
removed, a zero slot added where the source has none), and ``rel_pos_h/w`` are written as zeros for the
target's window/global grids (``rel_pos="none"``: none, ``use_rel_pos=False``). BEiT's relative-position
tables cannot be carried: refused unless ``drop_rel_pos``. A source without an absolute embedding (BEiT)
gets zeros by default, as for ``--to vitdet``.
"""

from __future__ import annotations

import torch

from vitinit.canonical import Checkpoint, LazyTensor, Provenance
from vitinit.errors import SpecMismatchError
from vitinit.normalize.lazy import abs_pos_mode, block_tensors, fresh_abs_pos, patch_tensors, zeros
from vitinit.normalize.options import Normalized, NormalizeOptions

PREFIX = "backbone.net."


def inexpressible(spec) -> list[str]:
    """What of ``spec`` (a ``ViTSpec`` or a ``ViTBackboneConfig``: same field names) detectron2's ViT cannot
    compute (it has learned absolute positions, an exact-GELU MLP and no norm before its blocks), as noun
    phrases that read after "has no"; empty if none."""
    why = []
    if spec.rope is not None:
        why.append({"dinov3": "DINOv3", "eva": "EVA"}[spec.rope.variant] + " RoPE")
    if spec.mlp == "swiglu":
        why.append("SwiGLU MLP")
    elif spec.mlp != "gelu":
        why.append(f"{spec.mlp} activation (its MLP is exact GELU)")
    if spec.mlp_norm:
        why.append("MLP sub-LayerNorm")
    if spec.pre_norm:
        why.append("norm before the blocks (ln_pre)")
    return why


def listed(items: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``: what :func:`inexpressible` found, after "has no"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def normalize(ckpt: Checkpoint, options: NormalizeOptions) -> Normalized:
    """``backbone.net.*`` tensors for detectron2's ViT, and the provenance with ``normalization`` filled."""
    spec, t = ckpt.spec, ckpt.tensors
    family = ckpt.provenance.family
    missing = inexpressible(spec)
    if missing:
        raise SpecMismatchError(
            f"--to detectron2: upstream ViTDet's ViT has no {listed(missing)}, which these {family} weights "
            "need (there they would compute something else); use --to vitdet, whose backbone has them"
        )
    if spec.rel_pos != "none" and not options.drop_rel_pos:
        raise SpecMismatchError(
            f"--to detectron2: upstream ViTDet's ViT has no place for these {family} weights' relative "
            "position bias tables (it uses decomposed rel_pos_h/rel_pos_w); use --to vitdet, which keeps "
            "them, or pass --drop-rel-pos to drop them (rel_pos_h/w zero-initialized)"
        )
    record: dict = {
        "target": "detectron2",
        "img_size": options.img_size,
        "window_size": options.window_size,
        "pretrain_img_size": spec.pretrain_grid[0] * spec.patch_size,
        "dtype": "float32",
        "pretrain_use_cls_token": True,
    }
    out = patch_tensors(ckpt, PREFIX)
    gh, gw = spec.pretrain_grid
    shape = (1, 1 + gh * gw, spec.embed_dim)
    mode = abs_pos_mode(ckpt, options.abs_pos)
    if mode == "source":
        pos, prefix = t["pos_embed"], spec.num_prefix_tokens

        def with_one_cls_slot() -> torch.Tensor:
            x = pos.load().float()
            cls = x[:, :1] if prefix >= 1 else torch.zeros_like(x[:, :1])
            return torch.cat([cls, x[:, prefix:]], dim=1)

        out[PREFIX + "pos_embed"] = LazyTensor(shape, torch.float32, with_one_cls_slot)
        record["abs_pos"] = f"pre-trained at {gh}x{gw} with one cls slot ({prefix} prefix row(s) in source)"
    elif mode == "none":
        record["abs_pos"] = "none (use_abs_pos=False)"
    else:
        why = "source has none" if not spec.has_abs_pos else "the source's embedding replaced"
        out[PREFIX + "pos_embed"], text = fresh_abs_pos(mode, shape, options.seed, (gh, gw), why)
        record["abs_pos"] = f"{text}, + cls slot"
    grid = options.img_size // spec.patch_size
    globals_ = set(options.global_blocks_for(spec.depth))
    head_dim = spec.embed_dim // spec.num_heads
    out.update(block_tensors(ckpt, keep_gamma=False, prefix=PREFIX))
    # detectron2's ViT always has these biases; zeros compute what a bias-free source does.
    if not spec.patch_bias:
        out[PREFIX + "patch_embed.proj.bias"] = zeros((spec.embed_dim,))
    for i in range(spec.depth) if spec.qkv_bias == "none" else ():
        out[f"{PREFIX}blocks.{i}.attn.qkv.bias"] = zeros((3 * spec.embed_dim,))
    use_rel_pos = options.rel_pos != "none"
    for i in range(spec.depth) if use_rel_pos else ():
        size = grid if i in globals_ else options.window_size
        for axis in ("h", "w"):
            out[f"{PREFIX}blocks.{i}.attn.rel_pos_{axis}"] = zeros((2 * size - 1, head_dim))
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
    return Normalized("detectron2", spec, out, prov, options=options)
