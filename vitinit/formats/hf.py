"""Hugging Face transformers folders (``config.json`` + weights): ViT, ViTMAE, BEiT, data2vec-vision, DINOv2.

Files on the hub use the legacy module names (``encoder.layer.{i}.attention.attention.query``...);
transformers 5.x renames modules in memory (``layers.{i}.attention.q_proj``...) and maps the names on load
and save. Both spellings are accepted here. Separate q/k/v projections are fused (rows q, k, v, as the
timm→HF converters split them); BEiT's key projection has no bias (zeros). The head count and the norm
epsilon come from config.json (HF's default eps is 1e-12, not the 1e-6 of the original releases).
``Data2VecVision*`` copies BEiT's module names (transformers' modular data2vec-vision); ``Dinov2*`` names
its norms ``norm1``/``norm2``, its MLP ``mlp.fc1``/``fc2`` and its layer scale ``layer_scale{1,2}.lambda1``;
``Dinov2WithRegisters`` adds ``embeddings.register_tokens`` (dropped, recorded).
"""

from __future__ import annotations

import re

from vitinit.canonical import Checkpoint, LazyTensor, TensorMap
from vitinit.errors import CheckpointFormatError
from vitinit.formats._claims import config_eps, config_heads
from vitinit.formats._common import (
    DECLARED,
    WHY_DROPPED,
    Score,
    build_checkpoint,
    concat_rows,
    drop_reason,
    record_dropped,
)
from vitinit.io.load import RawCheckpoint

# config.json "model_type" → (family, format)
MODEL_TYPES = {
    "vit": ("supervised", "hf/vit"),
    "vit_mae": ("mae", "hf/vit_mae"),
    "beit": ("beit", "hf/beit"),
    "data2vec-vision": ("data2vec", "hf/data2vec-vision"),
    "dinov2": ("dinov2", "hf/dinov2"),
    "dinov2_with_registers": ("dinov2", "hf/dinov2_with_registers"),
}
FAMILIES = tuple(dict.fromkeys(family for family, _ in MODEL_TYPES.values()))
_ROOTS = ("vit.", "beit.", "data2vec_vision.", "dinov2.", "model.")

# (regex on the name without the root prefix, canonical name); {i} is the block index.
_RENAMES: list[tuple[str, str]] = [
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", "patch_embed.proj.{0}"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (
        r"(?:encoder\.relative_position_bias|shared_position_bias)\.relative_position_bias_table",
        "rel_pos_bias.relative_position_bias_table",
    ),
    (
        r"(?:encoder\.layer|layers)\.(\d+)\.(?:attention\.attention\.)?relative_position_bias\."
        r"relative_position_bias_table",
        "blocks.{0}.attn.relative_position_bias_table",
    ),
    (
        r"(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:attention\.query|q_proj)\.(weight|bias)",
        "blocks.{0}.q.{1}",
    ),
    (
        r"(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:attention\.key|k_proj)\.(weight|bias)",
        "blocks.{0}.k.{1}",
    ),
    (
        r"(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:attention\.value|v_proj)\.(weight|bias)",
        "blocks.{0}.v.{1}",
    ),
    (
        r"(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:output\.dense|o_proj)\.(weight|bias)",
        "blocks.{0}.attn.proj.{1}",
    ),
    (r"(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.(weight|bias)", "blocks.{0}.norm1.{1}"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.(weight|bias)", "blocks.{0}.norm2.{1}"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.norm([12])\.(weight|bias)", "blocks.{0}.norm{1}.{2}"),  # DINOv2
    (
        r"(?:encoder\.layer|layers)\.(\d+)\.(?:intermediate\.dense|mlp\.fc1)\.(weight|bias)",
        "blocks.{0}.mlp.fc1.{1}",
    ),
    (
        r"(?:encoder\.layer|layers)\.(\d+)\.(?:output\.dense|mlp\.fc2)\.(weight|bias)",
        "blocks.{0}.mlp.fc2.{1}",
    ),
    (r"(?:encoder\.layer|layers)\.(\d+)\.lambda_([12])", "blocks.{0}.gamma_{1}"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.layer_scale([12])\.lambda1", "blocks.{0}.gamma_{1}"),  # DINOv2
]
_DROPS: list[tuple[str, str, str]] = [
    (r"(^|\.)relative_position_index$", "*.relative_position_index", WHY_DROPPED["rel_index"]),
    (r"^embeddings\.cls_token$", "embeddings.cls_token", WHY_DROPPED["cls_token"]),
    (r"^embeddings\.mask_token$", "embeddings.mask_token", WHY_DROPPED["mask_token"]),
    (r"^embeddings\.register_tokens$", "embeddings.register_tokens", WHY_DROPPED["registers"]),
    (r"^decoder\.", "decoder.*", WHY_DROPPED["decoder"]),
    (r"^layernorm\.", "layernorm.*", WHY_DROPPED["final_norm"]),
    (r"^pooler\.", "pooler.*", "classifier pooling"),
    (r"^(classifier|lm_head)\.", "classifier.* / lm_head.*", "classifier / MIM head"),
]



def _model_type(raw: RawCheckpoint) -> str | None:
    return (raw.config or {}).get("model_type") if raw.container == "hf-folder" else None


def score(raw: RawCheckpoint) -> Score:
    """DECLARED for a transformers folder whose config.json names a supported model type."""
    model_type = _model_type(raw)
    family, _ = MODEL_TYPES.get(model_type, (None, None))
    if family is None:
        return Score("supervised", 0)
    return Score(family, DECLARED, f"config.json model_type {model_type!r}")


def _strip_root(key: str, roots: tuple[str, ...]) -> str:
    for root in roots:
        if key.startswith(root):
            return key[len(root) :]
    return key


def canonical_from_hf(
    sd: dict[str, LazyTensor],
    fmt: str,
    *,
    renames: list[tuple[str, str]] = _RENAMES,
    drops: list[tuple[str, str, str]] = _DROPS,
    roots: tuple[str, ...] = _ROOTS,
) -> tuple[TensorMap, dict[str, str]]:
    """(canonical tensors, dropped) of a transformers-style state dict under ``renames`` / ``drops``.

    Keys are matched without their ``roots`` prefix. Blocks with separate ``q``/``k``/``v`` projections (the
    renames' ``blocks.{i}.{q,k,v}.*``) are fused, rows q, k, v; a missing key bias (BEiT's) is zeros.
    Unknown keys are an error. CLIP / SigLIP (:mod:`vitinit.formats.clip`) reuse it with their own tables.
    """
    out: TensorMap = {}
    dropped: dict[str, str] = {}
    counts: dict[str, int] = {}
    unknown = []
    for key, t in sd.items():
        name = _strip_root(key, roots)
        for pattern, target in renames:
            m = re.fullmatch(pattern, name)
            if m:
                out[target.format(*m.groups())] = t
                break
        else:
            why = drop_reason(name, drops)
            if why is None:
                unknown.append(key)
            else:
                record_dropped(dropped, counts, key, *why)
    if unknown:
        raise CheckpointFormatError(f"{fmt}: unexpected key(s) {', '.join(sorted(unknown)[:3])}")
    blocks = sorted({int(k.split(".")[1]) for k in out if k.startswith("blocks.")})
    for i in blocks:
        p = f"blocks.{i}."
        if p + "attn.qkv.weight" in out:  # stored fused (open_clip's in_proj)
            continue
        if p + "q.weight" not in out:
            raise CheckpointFormatError(f"{fmt}: layer {i} has no query projection")
        out[p + "attn.qkv.weight"] = concat_rows([out.pop(p + x + ".weight") for x in "qkv"])
        q, v = out.pop(p + "q.bias", None), out.pop(p + "v.bias", None)
        k = out.pop(p + "k.bias", None)
        if q is not None and v is not None:
            if k is None:  # BEiT: no key bias
                k = LazyTensor(q.shape, q.dtype, lambda q=q: q.load().new_zeros(q.shape))
            out[p + "attn.qkv.bias"] = concat_rows([q, k, v])
    return out, dropped


# Module names only some model types use: a folder whose keys carry another type's names is mislabelled.
_DINO, _VIT, _BEIT = (
    "DINOv2 modules (norm1, mlp.fc1, layer_scale1)",
    "ViT/BEiT modules (layernorm_before, intermediate.dense)",
    "BEiT modules (lambda_1, relative_position_bias)",
)
_STYLE = {
    _DINO: re.compile(r"\.(norm[12]|mlp\.fc[12]|layer_scale[12])\."),
    _VIT: re.compile(r"\.(layernorm_(before|after)|intermediate\.dense)\."),
    _BEIT: re.compile(r"\.(lambda_[12]$|relative_position_bias)"),
}
_EXPECTED_STYLES = {
    "vit": {_VIT}, "vit_mae": {_VIT}, "beit": {_VIT, _BEIT}, "data2vec-vision": {_VIT, _BEIT},
    "dinov2": {_DINO}, "dinov2_with_registers": {_DINO},
}
# The root a transformers base model's keys carry (its base_model_prefix), when they carry one.
_EXPECTED_ROOT = {"vit": "vit.", "vit_mae": "vit.", "beit": "beit.", "data2vec-vision": "data2vec_vision.",
                  "dinov2": "dinov2.", "dinov2_with_registers": "dinov2."}


def check_label(model_type: str, keys: list[str], where: str) -> None:
    """Refuse a ``model_type`` that the keys contradict (data2vec tensors labelled dinov2, ...): converted
    as the label says, they would get another family's reading, provenance and defaults."""
    roots = {r for r in _ROOTS if r != "model." and any(k.startswith(r) for k in keys)}
    expected_root = _EXPECTED_ROOT[model_type]
    if roots - {expected_root}:
        raise CheckpointFormatError(
            f"{where} says model_type {model_type!r} but the keys start with "
            f"{', '.join(sorted(roots - {expected_root}))} (another model type's); refusing to guess which "
            "is right"
        )
    seen = {style for style, pattern in _STYLE.items() if any(pattern.search(k) for k in keys)}
    foreign = sorted(seen - _EXPECTED_STYLES[model_type])
    if foreign:
        raise CheckpointFormatError(
            f"{where} says model_type {model_type!r} but the keys use {foreign[0]}, which "
            f"{model_type} models do not have; refusing to guess which is right"
        )


def read(
    raw: RawCheckpoint, *, model: str | None = None, num_heads: int | None = None, family: str | None = None
) -> Checkpoint:
    model_type = _model_type(raw)
    if model_type not in MODEL_TYPES:
        raise CheckpointFormatError(
            f"{raw.path}: transformers model_type {model_type!r} is not supported "
            f"(supported: {', '.join(MODEL_TYPES)})"
        )
    family, fmt = MODEL_TYPES[model_type]
    cfg = raw.config or {}
    where = f"{raw.path}: config.json"
    sd = dict(raw.tensors())
    check_label(model_type, list(sd), where)
    tensors, dropped = canonical_from_hf(sd, fmt)
    eps = config_eps(cfg, "layer_norm_eps", 1e-12, where=where)
    heads, heads_from = config_heads(cfg, tensors, num_heads=num_heads, where=where)
    notes = [f"layer_norm_eps {eps:g} from config.json"]
    if heads_from != "--num-heads" and heads is not None:
        notes.append(f"{heads} heads from config.json num_attention_heads")
    return build_checkpoint(
        tensors,
        dropped,
        family=family,
        fmt=fmt,
        source=str(raw.path),
        model=model,
        num_heads=heads,
        norm_eps=eps,
        notes=notes,
    )
