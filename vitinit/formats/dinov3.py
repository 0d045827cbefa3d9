"""DINOv3 (facebookresearch/dinov3, Siméoni et al. 2025) in its official, timm and transformers layouts.

A DINOv3 ViT has no absolute position embedding: 2-D RoPE on q/k of the patch tokens (DINOv3 variant,
``vitinit.ops.rope``: cell-centre coordinates normalised to [-1, 1], period base 100), one cls and 4
register ("storage") tokens (dropped, recorded: the detection backbone has no prefix tokens), layer scale,
LayerNorm eps 1e-5, patch 16. The q/k/v bias pattern varies by release and layout, all read here:

- official ``.pth`` (``DinoVisionTransformer``): ``storage_tokens``, ``ls1/ls2.gamma``, ``rope_embed.periods``
  stored in **bfloat16** and used as stored by the official code (so the converted RoPE rounds its periods the
  same way, ``RopeSpec.periods_dtype``), ``attn.qkv.bias`` with a stored ``bias_mask`` that zeroes the k
  third (applied here), ``mask_token``; ViT-7B: no q/k/v bias, SwiGLU ``mlp.w1/w2/w3``, ``local_cls_norm``.
- timm (``vit_*_patch16_dinov3[_qkvb]``; bare safetensors or a hub folder): ``reg_token``, ``gamma_1/2``, no
  q/k/v bias or ``q_bias``/``v_bias`` (k fixed at 0), SwiGLU ``mlp.fc1_g/fc1_x`` for 7B; periods in float32.
- transformers (``DINOv3ViTModel``, ``model_type`` ``dinov3_vit``): separate ``q/k/v_proj`` (``key_bias``
  false), ``layer_scale{1,2}.lambda1``, ``mlp.up_proj/down_proj`` or gated ``gate/up/down_proj``.

Input normalisation: ImageNet mean/std (the DINOv3 repo's ``make_classification_eval_transform``), recorded
in the provenance unless the folder's own config (timm ``pretrained_cfg``, ``preprocessor_config.json``)
says otherwise.

Licence: Meta's DINOv3 License (gated on the hub), not an open-source licence: see ``vitinit.hub.card``.
"""

from __future__ import annotations

import re

import torch

from vitinit.canonical import Checkpoint, LazyTensor, TensorMap
from vitinit.errors import CheckpointFormatError, quote
from vitinit.formats._claims import config_eps, config_heads, config_number
from vitinit.formats._common import (
    DECLARED,
    IMAGENET_NORM,
    Score,
    build_checkpoint,
    canonical_from_timm,
    concat_rows,
    record_dropped,
    state_dict_of,
)
from vitinit.io.load import RawCheckpoint
from vitinit.ops.rope import RopeSpec, rope_frequencies

FAMILY = "dinov3"
FAMILIES = (FAMILY,)
PATCH, PRETRAIN_GRID = 16, (16, 16)  # LVD-1689M pre-training crops: 256 px
ROPE_BASE = 100.0
HF_MODEL_TYPE = "dinov3_vit"

_OFFICIAL_DROPS = {  # key pattern -> (group, why)
    r"^storage_tokens$": ("storage_tokens", "register tokens: prefix tokens, which the backbone has none of"),
    r"^cls_token$": ("cls_token", "the detection backbone has no class token"),
    r"^mask_token$": ("mask_token", "only used by masked-image-modeling pre-training (iBOT)"),
    r"^rope_embed\.periods$": ("rope_embed.periods", "recomputed from RopeSpec (base 100, dtype as stored)"),
    r"\.bias_mask$": ("*.attn.qkv.bias_mask", "applied: the k third of attn.qkv.bias is zeroed"),
    r"^(norm|cls_norm|local_cls_norm)\.": ("norm.* / cls_norm.*", "final norms: not backbone"),
    r"^(head|projectors|dino_head|ibot_head)\.": ("heads", "pre-training / distillation heads"),
}


def _layout(sd: dict) -> str | None:
    if "blocks.0.attn.qkv.weight" not in sd or "pos_embed" in sd:
        return None
    if "storage_tokens" in sd or "rope_embed.periods" in sd:
        return "dinov3/official"
    if "reg_token" in sd and "blocks.0.gamma_1" in sd:
        return "dinov3/timm"
    return None


def score(raw: RawCheckpoint) -> Score:
    """DECLARED for a transformers folder of model_type dinov3_vit; 6 for the official keys (storage
    tokens, stored RoPE periods); 3 for timm's port (register tokens, layer scale, no pos_embed: timm's other
    RoPE ViTs look alike, so their config decides)."""
    if raw.container == "hf-folder":
        mt = (raw.config or {}).get("model_type")
        return Score(FAMILY, DECLARED if mt == HF_MODEL_TYPE else 0, f"config.json model_type {mt!r}")
    if raw.container == "timm-folder":
        return Score(FAMILY, 0)  # timm_hub declares it by architecture
    fmt = _layout(state_dict_of(raw))
    if fmt == "dinov3/official":
        return Score(FAMILY, 6, "storage_tokens / rope_embed.periods, no pos_embed (DinoVisionTransformer)")
    if fmt == "dinov3/timm":
        return Score(FAMILY, 3, "reg_token and gamma_1 without pos_embed (timm's vit_*_dinov3)")
    return Score(FAMILY, 0)


def _periods_dtype(periods: LazyTensor, head_dim: int) -> str:
    """The dtype the official file's periods were rounded to; refuses periods that are not base 100's."""
    stored = periods.load().float()
    for dtype in ("bfloat16", "float32"):
        if torch.equal(stored, rope_frequencies(RopeSpec(FAMILY, ROPE_BASE, periods_dtype=dtype), head_dim)):
            return dtype
    raise CheckpointFormatError(
        f"dinov3/official: rope_embed.periods {stored.tolist()} are not base {ROPE_BASE:g}'s periods "
        "(min/max-period RoPE is not supported)"
    )


def _official(sd: dict) -> tuple[dict, dict, list[str], str, int | None, bool]:
    """(timm-named tensors, dropped, notes, periods dtype, heads, k bias kept) of an official
    DinoVisionTransformer state dict."""
    out, dropped, counts, notes = {}, {}, {}, []
    for key, t in sd.items():
        for pattern, (group, why) in _OFFICIAL_DROPS.items():
            if re.search(pattern, key):
                record_dropped(dropped, counts, key, group, why)
                break
        else:
            key = re.sub(r"\.mlp\.w1\.", ".mlp.fc1_g.", key)
            key = re.sub(r"\.mlp\.w2\.", ".mlp.fc1_x.", key)
            out[re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", key)] = t
    k_bias = False
    for key in [k for k in out if k.endswith("attn.qkv.bias")]:
        mask = sd.get(key + "_mask")
        m = mask.load().float() if mask is not None else None
        if m is None or torch.equal(m, torch.ones_like(m)):
            k_bias = True
            continue
        d = m.numel() // 3
        if not torch.equal(m, torch.cat([torch.ones(d), torch.zeros(d), torch.ones(d)])):
            raise CheckpointFormatError(f"dinov3/official: {key}_mask is not the k mask [1, 0, 1]")
        out[key] = out[key].map(lambda b, m=m: b * m.to(b.dtype))
    periods = sd.get("rope_embed.periods")
    d, heads_dim = out["blocks.0.attn.qkv.weight"].shape[1], None
    dtype = "float32"
    if periods is not None:
        heads_dim = 4 * periods.shape[0]
        dtype = _periods_dtype(periods, heads_dim)
        notes.append(f"RoPE periods as stored ({dtype}), as the official code uses them")
    return out, dropped, notes, dtype, (d // heads_dim if heads_dim else None), k_bias


_HF_RENAMES = [
    (r"embeddings\.patch_embeddings\.(weight|bias)", "patch_embed.proj.{0}"),
    (r"(?:model\.)?layers?\.(\d+)\.norm([12])\.(weight|bias)", "blocks.{0}.norm{1}.{2}"),
    (r"(?:model\.)?layers?\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)", "blocks.{0}.{1}.{2}"),
    (r"(?:model\.)?layers?\.(\d+)\.attention\.o_proj\.(weight|bias)", "blocks.{0}.attn.proj.{1}"),
    (r"(?:model\.)?layers?\.(\d+)\.layer_scale([12])\.lambda1", "blocks.{0}.gamma_{1}"),
    (r"(?:model\.)?layers?\.(\d+)\.mlp\.gate_proj\.(weight|bias)", "blocks.{0}.mlp.fc1_g.{1}"),
    (r"(?:model\.)?layers?\.(\d+)\.mlp\.up_proj\.(weight|bias)", "blocks.{0}.mlp.UP.{1}"),
    (r"(?:model\.)?layers?\.(\d+)\.mlp\.down_proj\.(weight|bias)", "blocks.{0}.mlp.fc2.{1}"),
]
_HF_DROPS = {
    r"^embeddings\.cls_token$": ("embeddings.cls_token", "the detection backbone has no class token"),
    r"^embeddings\.mask_token$": ("embeddings.mask_token", "only used by masked-image-modeling pre-training"),
    r"^embeddings\.register_tokens$": ("embeddings.register_tokens", "register tokens: prefix tokens"),
    r"^norm\.": ("norm.*", "final norm: not backbone"),
}


def _hf(sd: dict, cfg: dict) -> tuple[TensorMap, dict]:
    """Canonical tensors of a ``DINOv3ViTModel`` folder: q/k/v fused (a missing k bias is zeros)."""
    out, dropped, counts, unknown = {}, {}, {}, []
    for key, t in sd.items():
        name = key.removeprefix("dinov3_vit.")  # a DINOv3ViTBackbone / classifier wraps the model
        for pattern, target in _HF_RENAMES:
            m = re.fullmatch(pattern, name)
            if m:
                out[target.format(*m.groups())] = t
                break
        else:
            why = next((w for p, w in _HF_DROPS.items() if re.search(p, name)), None)
            if why is None:
                unknown.append(key)
            else:
                record_dropped(dropped, counts, key, *why)
    if unknown:
        raise CheckpointFormatError(f"hf/dinov3_vit: unexpected key(s) {', '.join(sorted(unknown)[:3])}")
    gated = bool(cfg.get("use_gated_mlp"))
    for i in sorted({int(k.split(".")[1]) for k in out if k.startswith("blocks.")}):
        p = f"blocks.{i}."
        out[p + "attn.qkv.weight"] = concat_rows([out.pop(p + x + ".weight") for x in "qkv"])
        q, k, v = (out.pop(p + x + ".bias", None) for x in "qkv")
        if q is not None and v is not None:
            k = k if k is not None else LazyTensor(q.shape, q.dtype, lambda q=q: q.load().new_zeros(q.shape))
            out[p + "attn.qkv.bias"] = concat_rows([q, k, v])
        for leaf in ("weight", "bias"):
            up = out.pop(f"{p}mlp.UP.{leaf}", None)
            if up is not None:
                out[f"{p}mlp.{'fc1_x' if gated else 'fc1'}.{leaf}"] = up
    return out, dropped


def _grid(img_size, patch_size) -> tuple[int, int] | None:
    """The token grid a config's image and patch size give (the source's own resolution), or None."""
    ints = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (img_size, patch_size))
    if ints and img_size % patch_size == 0:
        return img_size // patch_size, img_size // patch_size
    return None


def read(
    raw: RawCheckpoint, *, model: str | None = None, num_heads: int | None = None, family: str | None = None
) -> Checkpoint:
    cfg = raw.config or {}
    notes = ["layer scale kept as gamma_1/gamma_2", "RoPE on every block (DINOv3 rule), no abs pos embed"]
    heads_hint, eps, periods, k_bias = None, 1e-5, "float32", False
    input_norm = (*IMAGENET_NORM, "DINOv3's ImageNet mean/std (facebookresearch/dinov3 eval transforms)")
    grid = PRETRAIN_GRID
    if raw.container == "hf-folder":
        fmt = "hf/dinov3_vit"
        tensors, dropped = _hf(dict(raw.tensors()), cfg)
        where = f"{raw.path}: config.json"
        heads_hint, _ = config_heads(cfg, tensors, num_heads=num_heads, where=where)
        eps = config_eps(cfg, "layer_norm_eps", 1e-5, where=where)
        k_bias = bool(cfg.get("key_bias"))
        grid = _grid(cfg.get("image_size"), cfg.get("patch_size")) or grid
        base = config_number(cfg, "rope_theta", ROPE_BASE, lo=0, hi=1e9, where=where)
        if cfg.get("hidden_act", "gelu") not in ("gelu", "silu"):
            raise CheckpointFormatError(f"{fmt}: hidden_act {quote(cfg.get('hidden_act'))} is not supported")
    else:
        sd = state_dict_of(raw, ("model", "teacher", "state_dict"))
        fmt = _layout(sd) or "dinov3/timm"
        base = ROPE_BASE
        if fmt == "dinov3/official":
            sd, pre_dropped, more, periods, heads_hint, k_bias = _official(sd)
            notes += more
        else:
            pre_dropped = {}
        if raw.container == "timm-folder":
            args = cfg.get("model_args") or {}
            grid = _grid(args.get("img_size"), args.get("patch_size", PATCH)) or grid
        tensors, dropped = canonical_from_timm(sd, fmt=fmt)
        dropped.update(pre_dropped)
    has_bias = "blocks.0.attn.qkv.bias" in tensors
    return build_checkpoint(
        tensors,
        dropped,
        family=FAMILY,
        fmt=fmt,
        source=str(raw.path),
        model=model,
        num_heads=num_heads,
        heads_hint=heads_hint,
        num_prefix_tokens=0,
        norm_eps=eps,
        rope=RopeSpec(FAMILY, base, periods_dtype=periods),
        qkv_bias="qkv" if k_bias else "qv" if has_bias else None,
        pretrain_grid=grid,
        notes=notes,
        input_norm=input_norm,
    )
