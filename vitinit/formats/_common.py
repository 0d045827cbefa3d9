"""Helpers every reader shares: unwrap containers, map timm-layout keys to canonical names, infer the spec.

Most families (MAE, MoCo v3, DeiT, timm, BEiT) store a timm-style ViT state dict; they differ in the
container, the prefixes, the extra keys to drop and a few tensors to fuse. Those differences live in the
family modules; the common key algebra lives here, once.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping

import torch

from vitinit.canonical import BEIT_EXTRA_REL_POS_ROWS, Checkpoint, LazyTensor, Provenance, TensorMap, ViTSpec
from vitinit.errors import CheckpointFormatError, SpecMismatchError
from vitinit.formats._score import DECLARED, Score, plus  # noqa: F401  (re-exported to the readers)
from vitinit.io.files import read_json
from vitinit.io.load import RawCheckpoint
from vitinit.ops.layer_scale import fuse_qv_bias
from vitinit.ops.rel_pos import table_grid
from vitinit.ops.rope import RopeSpec
from vitinit.variants import check_variant

logger = logging.getLogger(__name__)

BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")

# Canonical leaves of a block, as stored by timm's VisionTransformer / Beit (and MAE, MoCo v3, DeiT).
_BLOCK_LEAVES = {
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
    "gamma_1",
    "gamma_2",
    "attn.relative_position_bias_table",
    # SwiGLU (timm's SwiGLU names) and EVA-02's MLP sub-LayerNorm: see vitinit.canonical.
    *(f"mlp.{m}.{p}" for m in ("fc1_g", "fc1_x", "norm") for p in ("weight", "bias")),
}
# timm's DeiT-III / DINOv2 spelling of layer scale.
_LEAF_ALIASES = {"ls1.gamma": "gamma_1", "ls2.gamma": "gamma_2"}
_TOP_LEVEL = {
    "patch_embed.proj.weight",
    "patch_embed.proj.bias",
    "pos_embed",
    "rel_pos_bias.relative_position_bias_table",
    "norm_pre.weight",  # a norm before the blocks (timm's name for CLIP's ln_pre)
    "norm_pre.bias",
}

# Why a key is not part of a detection backbone; shared by the timm-layout rules below and the HF reader's.
WHY_DROPPED = {
    "rel_index": "recomputed from the window size",
    "cls_token": "the detection backbone has no class token",
    "mask_token": "only used by masked-image-modeling pre-training",
    "decoder": "MAE decoder: only used in pre-training",
    "final_norm": "final norm: the detection backbone (as ViTDet) has none",
    "registers": "register tokens (DINOv2, DINOv3): prefix tokens, which the detection backbone has none of",
}

# Keys that are not part of a detection backbone, with the reason recorded in provenance.
# Order matters: the first matching pattern names the group.
DROP_RULES: list[tuple[str, str, str]] = [  # (regex, group shown to the user, reason)
    (r"(^|\.)relative_position_index$", "*.relative_position_index", WHY_DROPPED["rel_index"]),
    (r"^cls_token$", "cls_token", WHY_DROPPED["cls_token"]),
    (r"^dist_token$", "dist_token", "DeiT distillation token: no detection use"),
    (r"^mask_token$", "mask_token", WHY_DROPPED["mask_token"]),
    (r"^(reg_token|register_tokens)$", "register tokens", WHY_DROPPED["registers"]),
    (r"^decoder_", "decoder_*", WHY_DROPPED["decoder"]),
    (r"^lm_head\.", "lm_head.*", "BEiT masked-image-modeling head"),
    (r"^cls_pt_layers\.", "cls_pt_layers.*", "BEiT v2 pre-training-only blocks"),
    (r"^norm\.", "norm.*", WHY_DROPPED["final_norm"]),
    (r"^fc_norm\.", "fc_norm.*", "pooling norm of the classifier"),
    (r"^(head|head_dist|pre_logits)(\.|$)", "head.*", "classifier head"),
]

LazyMap = dict[str, LazyTensor]

IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The input normalisation a family documents for its pre-training: recorded when the file itself carries none
# (a timm pretrained_cfg or a transformers preprocessor_config.json win). Families not listed (BEiT, the
# supervised layouts, data2vec) vary by release: nothing is recorded, and the recipe decides.
DOCUMENTED_INPUT_NORM: dict[str, tuple[tuple, tuple, str]] = {
    "mae": (*IMAGENET_NORM, "MAE's ImageNet mean/std (facebookresearch/mae main_pretrain.py)"),
    "mocov3": (*IMAGENET_NORM, "MoCo v3's ImageNet mean/std (facebookresearch/moco-v3 main_moco.py)"),
    "dinov2": (*IMAGENET_NORM, "DINOv2's ImageNet mean/std (facebookresearch/dinov2 data/transforms.py)"),
    "beitv2": (*IMAGENET_NORM, "BEiT v2's --imagenet_default_mean_and_std (beit2/PRETRAINING.md)"),
}


def config_input_norm(raw: RawCheckpoint) -> tuple | None:
    """(mean, std, origin) a folder's own config gives: timm's ``pretrained_cfg`` in config.json, a
    transformers ``preprocessor_config.json`` beside it, or open_clip's ``preprocess_cfg``; None when it gives
    none (an unreadable or oversized preprocessor config included: the config is a hint, not the weights)."""
    if raw.container == "timm-folder":
        pre = (raw.config or {}).get("pretrained_cfg") or {}
        mean, std = pre.get("mean"), pre.get("std")
        return (tuple(mean), tuple(std), "timm pretrained_cfg in config.json") if mean and std else None
    if raw.container == "open_clip-folder":
        pre = (raw.config or {}).get("preprocess_cfg") or {}
        if _three_numbers(pre.get("mean")) and _three_numbers(pre.get("std")):
            return tuple(pre["mean"]), tuple(pre["std"]), "open_clip_config.json preprocess_cfg"
        return None
    if raw.container == "hf-folder" and (raw.path / "preprocessor_config.json").is_file():
        try:
            cfg = read_json(
                raw.path / "preprocessor_config.json", error=CheckpointFormatError, what="preprocessor config"
            )
            return tuple(cfg["image_mean"]), tuple(cfg["image_std"]), "preprocessor_config.json"
        except (CheckpointFormatError, KeyError, TypeError):
            return None
    return None


def _three_numbers(v: object) -> bool:
    return isinstance(v, list | tuple) and len(v) == 3 and all(isinstance(x, int | float) for x in v)


def record_input_norm(ckpt: Checkpoint, raw: RawCheckpoint) -> None:
    """Fill ``ckpt.provenance.input_norm``: the folder's config, else what the reader found, else the
    family's documented values (:data:`DOCUMENTED_INPUT_NORM`)."""
    found = config_input_norm(raw)
    if found is None and not ckpt.provenance.input_norm:
        found = DOCUMENTED_INPUT_NORM.get(ckpt.provenance.family)
    if found is not None:
        try:
            ckpt.provenance.set_input_norm(*found)
        except (ValueError, TypeError):
            raise CheckpointFormatError(f"{raw.path}: unreadable input mean/std {found[:2]}") from None




def state_dict_of(
    raw: RawCheckpoint, containers: tuple[str, ...] = ("model", "state_dict", "module")
) -> LazyMap:
    """Flat ``{key: LazyTensor}`` state dict in the first container key present (or the file itself)."""
    for key in containers:
        node = raw.tree.get(key)
        if isinstance(node, Mapping) and any(isinstance(v, LazyTensor) for v in node.values()):
            return raw.tensors(key)
    return {k: v for k, v in raw.tree.items() if isinstance(v, LazyTensor)}


def strip_prefix(sd: LazyMap, prefix: str) -> LazyMap:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def is_timm_layout(sd: Mapping[str, LazyTensor]) -> bool:
    return "patch_embed.proj.weight" in sd and "blocks.0.attn.qkv.weight" in sd


def has_beit_keys(sd: Mapping[str, LazyTensor]) -> bool:
    """BEiT's signature in a timm-layout file: separate q/v biases or BEiT relative-position tables."""
    return any(k.endswith("attn.q_bias") or k.endswith("relative_position_bias_table") for k in sd)


def drop_reason(
    key: str, rules: list[tuple[str, str, str]] = DROP_RULES
) -> tuple[str, str] | None:
    """(group, reason) when ``key`` matches one of ``rules`` (regex, group, reason): not backbone."""
    for pattern, group, reason in rules:
        if re.search(pattern, key):
            return group, reason
    return None


def record_dropped(
    dropped: dict[str, str], counts: dict[str, int], key: str, group: str, reason: str
) -> None:
    counts[group] = counts.get(group, 0) + 1
    dropped[group] = f"{reason} ({counts[group]} tensor{'s' if counts[group] > 1 else ''})"


def canonical_from_timm(sd: LazyMap, *, fmt: str) -> tuple[TensorMap, dict[str, str]]:
    """Map a timm-layout ViT/BEiT state dict to canonical tensors; returns (tensors, dropped).

    BEiT's ``attn.q_bias``/``attn.v_bias`` become one fused ``attn.qkv.bias`` with a zero key bias (the
    key bias is a constant 0 in BEiT, not a parameter). Unknown keys are an error: a reader that silently
    ignores what it does not understand would hide a wrong ``--from``.
    """
    out: TensorMap = {}
    dropped: dict[str, str] = {}
    counts: dict[str, int] = {}
    qv: dict[int, dict[str, LazyTensor]] = {}
    unknown = []
    for key, t in sd.items():
        m = BLOCK_RE.match(key)
        if m:
            i, leaf = int(m.group(1)), _LEAF_ALIASES.get(m.group(2), m.group(2))
            if leaf in ("attn.q_bias", "attn.v_bias"):
                qv.setdefault(i, {})[leaf[5]] = t
                continue
            if leaf in _BLOCK_LEAVES:
                name = f"blocks.{i}.{leaf}"
                if name in out:  # e.g. gamma_1 and ls1.gamma: which one the model used is unknowable
                    spelled = [k for k in sd if BLOCK_RE.match(k) and _alias_of(k) == name]
                    raise CheckpointFormatError(f"{fmt}: block {i} has {' and '.join(spelled)}: the same "
                                                "tensor under two names; refusing to pick one")
                out[name] = t
                continue
        elif key in _TOP_LEVEL:
            out[key] = t
            continue
        why = drop_reason(key)
        if why is None:
            unknown.append(key)
        else:
            record_dropped(dropped, counts, key, *why)
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise CheckpointFormatError(f"{fmt}: unexpected key(s) {', '.join(sorted(unknown)[:3])}{more}")
    for i, pair in sorted(qv.items()):
        if set(pair) != {"q", "v"}:
            raise CheckpointFormatError(f"{fmt}: block {i} has only one of attn.q_bias / attn.v_bias")
        if f"blocks.{i}.attn.qkv.bias" in out:
            raise CheckpointFormatError(f"{fmt}: block {i} has both attn.qkv.bias and attn.q_bias/v_bias")
        out[f"blocks.{i}.attn.qkv.bias"] = fuse_lazy_qv(pair["q"], pair["v"])
    return out, dropped


def _alias_of(key: str) -> str:
    m = BLOCK_RE.match(key)
    return f"blocks.{m.group(1)}.{_LEAF_ALIASES.get(m.group(2), m.group(2))}" if m else key


def fuse_lazy_qv(q: LazyTensor, v: LazyTensor) -> LazyTensor:
    if q.shape != v.shape or len(q.shape) != 1:
        raise CheckpointFormatError(f"q_bias {q.shape} and v_bias {v.shape} must be equal vectors")
    return LazyTensor((3 * q.shape[0],), q.dtype, lambda: fuse_qv_bias(q.load(), v.load()))


def concat_rows(parts: list[LazyTensor]) -> LazyTensor:
    """Lazily stack q, k, v projections into one fused qkv tensor (rows q, then k, then v)."""
    shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
    return LazyTensor(shape, parts[0].dtype, lambda: torch.cat([p.load() for p in parts], dim=0))


def prefix_and_grid(num_tokens: int, num_prefix_tokens: int | None = None) -> tuple[int, tuple[int, int]]:
    """(prefix rows, square grid) of a pos_embed with ``num_tokens`` rows."""
    candidates = [num_prefix_tokens] if num_prefix_tokens is not None else [1, 0, 2]
    for p in candidates:
        side = math.isqrt(max(num_tokens - p, 0))
        if side > 0 and side * side == num_tokens - p:
            return p, (side, side)
    raise CheckpointFormatError(f"pos_embed has {num_tokens} rows: not a square grid plus prefix tokens")


def infer_spec(
    tensors: TensorMap,
    *,
    fmt: str,
    model: str | None,
    num_heads: int | None,
    heads_hint: int | None = None,
    num_prefix_tokens: int | None = None,
    norm_eps: float = 1e-6,
    rope: RopeSpec | None = None,
    mlp: str | None = None,
    qkv_bias: str | None = None,
    pretrain_grid: tuple[int, int] | None = None,
) -> ViTSpec:
    """Architecture from tensor shapes; ``model`` (``--model``) must agree with them.

    Heads: ``num_heads`` (the user) > ``heads_hint`` (a config file) > the standard size table. A custom
    width with none of these is an error: guessing a head count silently builds a different model.
    What the names show is read from them (SwiGLU's ``fc1_g``, ``mlp.norm``, ``norm_pre``, missing
    biases); what they cannot show comes from the reader: ``rope``, the activation (``mlp``), a masked
    k bias (``qkv_bias="qv"``) and, without a position embedding or table, ``pretrain_grid``.
    """
    if "patch_embed.proj.weight" not in tensors or "blocks.0.attn.qkv.weight" not in tensors:
        raise CheckpointFormatError(f"{fmt}: no patch embedding or first block found")
    d, c, p, _ = tensors["patch_embed.proj.weight"].shape
    depth = 1 + max(int(BLOCK_RE.match(k).group(1)) for k in tensors if BLOCK_RE.match(k))
    fc1 = tensors.get("blocks.0.mlp.fc1.weight", tensors.get("blocks.0.mlp.fc1_g.weight"))
    swiglu = "blocks.0.mlp.fc1_g.weight" in tensors
    if swiglu and mlp not in (None, "swiglu"):
        raise CheckpointFormatError(f"{fmt}: SwiGLU tensors (mlp.fc1_g) but the reader says mlp={mlp!r}")
    variant = check_variant(model, d, depth)
    heads = num_heads or heads_hint or (variant.num_heads if variant else None)
    if heads is None:
        raise SpecMismatchError(
            f"custom ViT size (width {d}, depth {depth}): the head count cannot be read from the weights; "
            "pass --num-heads"
        )
    if d % heads:
        raise SpecMismatchError(f"width {d} is not divisible by {heads} heads")
    has_pos = "pos_embed" in tensors
    prefix, grid = 1, (224 // p, 224 // p)
    if has_pos:
        pos = tensors["pos_embed"]
        if len(pos.shape) != 3:
            raise CheckpointFormatError(f"pos_embed has shape {pos.shape}, expected (1, tokens, {d})")
        prefix, grid = prefix_and_grid(pos.shape[1], num_prefix_tokens)
    shared = tensors.get("rel_pos_bias.relative_position_bias_table")
    per_block = tensors.get("blocks.0.attn.relative_position_bias_table")
    table = shared if shared is not None else per_block
    if table is not None and not has_pos:
        try:
            grid = table_grid(table.shape[0], BEIT_EXTRA_REL_POS_ROWS)
        except ValueError as e:
            raise CheckpointFormatError(f"{fmt}: relative position table: {e}") from None
    if pretrain_grid is not None and not has_pos and table is None:
        grid = tuple(pretrain_grid)
    has_qkv_bias = "blocks.0.attn.qkv.bias" in tensors
    return ViTSpec(
        embed_dim=d,
        depth=depth,
        num_heads=heads,
        patch_size=p,
        mlp_hidden_dim=fc1.shape[0] if fc1 is not None else None,
        in_chans=c,
        has_abs_pos=has_pos,
        pretrain_grid=grid,
        num_prefix_tokens=prefix if has_pos else 0,
        layer_scale="blocks.0.gamma_1" in tensors,
        rel_pos="shared" if shared is not None else "per_block" if per_block is not None else "none",
        norm_eps=norm_eps,
        variant=variant.name if variant else None,
        rope=rope,
        mlp="swiglu" if swiglu else (mlp or "gelu"),
        mlp_norm="blocks.0.mlp.norm.weight" in tensors,
        pre_norm="norm_pre.weight" in tensors,
        qkv_bias=(qkv_bias or "qkv") if has_qkv_bias else "none",
        patch_bias="patch_embed.proj.bias" in tensors,
    )


def build_checkpoint(
    tensors: TensorMap,
    dropped: dict[str, str],
    *,
    family: str,
    fmt: str,
    source: str,
    model: str | None,
    num_heads: int | None,
    notes: list[str] | None = None,
    input_norm: tuple | None = None,
    **spec_hints,
) -> Checkpoint:
    """The canonical checkpoint; ``input_norm``: ``(mean, std, where it was read)`` of the source's inputs
    (0..1 scale), recorded in the provenance; ``spec_hints`` go to :func:`infer_spec`."""
    check_weight_dtypes(tensors, fmt)
    spec = infer_spec(tensors, fmt=fmt, model=model, num_heads=num_heads, **spec_hints)
    prov = Provenance(family=family, format=fmt, source=source, dropped=dropped, notes=list(notes or []))
    if input_norm is not None:
        prov.set_input_norm(*input_norm)
    return Checkpoint(spec, tensors, prov)


def check_weight_dtypes(tensors: TensorMap, fmt: str) -> None:
    """Refuse integer / bool weights: a quantized (e.g. int8) checkpoint cast to float would be garbage.
    Index buffers (``relative_position_index``, BatchNorm counters) are dropped before this check."""
    for name, t in tensors.items():
        if not t.dtype.is_floating_point:
            raise CheckpointFormatError(
                f"{fmt}: tensor {name!r} has dtype {str(t.dtype).removeprefix('torch.')}; only "
                "floating-point weights can be converted (quantized checkpoints are not supported)"
            )
