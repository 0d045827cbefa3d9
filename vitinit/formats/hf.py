"""Hugging Face transformers folders: ViT, ViTMAE and BEiT (``config.json`` + weights).

Files on the hub use the legacy module names (``encoder.layer.{i}.attention.attention.query``...);
transformers 5.x renames modules in memory (``layers.{i}.attention.q_proj``...) and maps the names on load
and save. Both spellings are accepted here. Separate q/k/v projections are fused (rows q, k, v, as the
timm→HF converters split them); BEiT's key projection has no bias (zeros). The head count and the norm
epsilon come from config.json (HF's default eps is 1e-12, not the 1e-6 of the original releases).
"""

from __future__ import annotations

import re

from vitinit.canonical import Checkpoint, LazyTensor, TensorMap
from vitinit.errors import CheckpointFormatError
from vitinit.formats._common import WHY_DROPPED, build_checkpoint, concat_rows, drop_reason, record_dropped
from vitinit.io.load import RawCheckpoint

# config.json "model_type" → (family, format)
MODEL_TYPES = {"vit": ("supervised", "hf/vit"), "vit_mae": ("mae", "hf/vit_mae"), "beit": ("beit", "hf/beit")}
_ROOTS = ("vit.", "beit.", "model.")

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
    (
        r"(?:encoder\.layer|layers)\.(\d+)\.(?:intermediate\.dense|mlp\.fc1)\.(weight|bias)",
        "blocks.{0}.mlp.fc1.{1}",
    ),
    (
        r"(?:encoder\.layer|layers)\.(\d+)\.(?:output\.dense|mlp\.fc2)\.(weight|bias)",
        "blocks.{0}.mlp.fc2.{1}",
    ),
    (r"(?:encoder\.layer|layers)\.(\d+)\.lambda_([12])", "blocks.{0}.gamma_{1}"),
]
_DROPS: list[tuple[str, str, str]] = [
    (r"(^|\.)relative_position_index$", "*.relative_position_index", WHY_DROPPED["rel_index"]),
    (r"^embeddings\.cls_token$", "embeddings.cls_token", WHY_DROPPED["cls_token"]),
    (r"^embeddings\.mask_token$", "embeddings.mask_token", WHY_DROPPED["mask_token"]),
    (r"^decoder\.", "decoder.*", WHY_DROPPED["decoder"]),
    (r"^layernorm\.", "layernorm.*", WHY_DROPPED["final_norm"]),
    (r"^pooler\.", "pooler.*", "classifier pooling"),
    (r"^(classifier|lm_head)\.", "classifier.* / lm_head.*", "classifier / MIM head"),
]


def _model_type(raw: RawCheckpoint) -> str | None:
    return (raw.config or {}).get("model_type") if raw.container == "hf-folder" else None


def score(raw: RawCheckpoint) -> tuple[str, int]:
    """6 for a transformers folder whose config.json names a supported model type."""
    family, _ = MODEL_TYPES.get(_model_type(raw), (None, None))
    return (family or "supervised"), 6 if family else 0


def _strip_root(key: str) -> str:
    for root in _ROOTS:
        if key.startswith(root):
            return key[len(root) :]
    return key


def _canonical(sd: dict[str, LazyTensor], fmt: str) -> tuple[TensorMap, dict[str, str]]:
    out: TensorMap = {}
    dropped: dict[str, str] = {}
    counts: dict[str, int] = {}
    unknown = []
    for key, t in sd.items():
        name = _strip_root(key)
        for pattern, target in _RENAMES:
            m = re.fullmatch(pattern, name)
            if m:
                out[target.format(*m.groups())] = t
                break
        else:
            why = drop_reason(name, _DROPS)
            if why is None:
                unknown.append(key)
            else:
                record_dropped(dropped, counts, key, *why)
    if unknown:
        raise CheckpointFormatError(f"{fmt}: unexpected key(s) {', '.join(sorted(unknown)[:3])}")
    blocks = sorted({int(k.split(".")[1]) for k in out if k.startswith("blocks.")})
    for i in blocks:
        p = f"blocks.{i}."
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


def read(raw: RawCheckpoint, *, model: str | None = None, num_heads: int | None = None) -> Checkpoint:
    model_type = _model_type(raw)
    if model_type not in MODEL_TYPES:
        raise CheckpointFormatError(
            f"{raw.path}: transformers model_type {model_type!r} is not supported "
            f"(supported: {', '.join(MODEL_TYPES)})"
        )
    family, fmt = MODEL_TYPES[model_type]
    cfg = raw.config or {}
    tensors, dropped = _canonical(dict(raw.tensors()), fmt)
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    notes = [f"layer_norm_eps {eps:g} from config.json"]
    return build_checkpoint(
        tensors,
        dropped,
        family=family,
        fmt=fmt,
        source=str(raw.path),
        model=model,
        num_heads=num_heads,
        heads_hint=cfg.get("num_attention_heads"),
        norm_eps=eps,
        notes=notes,
    )
