"""What the vision towers of the image-text models (CLIP, SigLIP / SigLIP 2) share; their readers are
:mod:`vitinit.formats.clip` and :mod:`vitinit.formats.siglip`.

- transformers: SigLIP's modeling copies CLIP's (``# Copied from transformers.models.clip``): separate
  ``q/k/v_proj``, ``layer_norm1/2``, ``mlp.fc1/fc2``, a 2-D ``position_embedding.weight`` (rows, D). CLIP adds
  the class embedding and ``pre_layrnorm``; SigLIP the attention-pooling ``head``. In ``CLIPModel`` /
  ``SiglipModel`` folders (and ``*VisionModel`` files written before transformers 5) the tower sits under
  ``vision_model.``, beside the text tower. The activation and epsilon come from the (vision) config, with
  the config classes' defaults when a key is left out, as hub configs often do.
- timm: ``VisionTransformer``'s layout plus ``norm_pre`` (CLIP's ln_pre) and ``attn_pool.*`` (SigLIP's MAP
  head). The activation and epsilon are the architecture's own: timm builds ``vit_*_clip_224`` with exact
  GELU and ``*_clip_quickgelu_*`` with QuickGELU, ``vit_base_patch16_siglip_224`` with exact GELU and
  ``vit_base_patch32_siglip_256`` with tanh-GELU; they are read off timm's model built on the meta device.
- The input normalisation the source was trained with travels with the weights: timm's ``pretrained_cfg``,
  transformers' ``preprocessor_config.json`` or open_clip's ``preprocess_cfg`` when the source has one,
  else the family's documented values.
"""

from __future__ import annotations

import logging

from vitinit.canonical import Checkpoint, LazyTensor, TensorMap
from vitinit.errors import CheckpointFormatError, quote
from vitinit.families import DISPLAY_NAMES
from vitinit.formats._claims import config_eps, config_heads
from vitinit.formats._common import (
    LazyMap,
    build_checkpoint,
    canonical_from_timm,
    config_input_norm,
    record_dropped,
)
from vitinit.formats.hf import canonical_from_hf
from vitinit.io.load import RawCheckpoint

logger = logging.getLogger(__name__)

# transformers' CLIP / SigLIP vision tower, without its ``vision_model.`` root.
HF_ROOTS = ("vision_model.",)
HF_RENAMES: list[tuple[str, str]] = [
    (r"embeddings\.patch_embedding\.(weight|bias)", "patch_embed.proj.{0}"),
    (r"embeddings\.position_embedding\.weight", "pos_embed"),
    (r"pre_layrnorm\.(weight|bias)", "norm_pre.{0}"),
    (r"encoder\.layers\.(\d+)\.layer_norm([12])\.(weight|bias)", "blocks.{0}.norm{1}.{2}"),
    (r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", "blocks.{0}.{1}.{2}"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", "blocks.{0}.attn.proj.{1}"),
    (r"encoder\.layers\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", "blocks.{0}.mlp.{1}.{2}"),
]
WHY = {
    "cls": "class embedding: the detection backbone has no class token",
    "ln_post": "ln_post: the pooled-embedding norm, not backbone",
    "proj": "projection into the joint image-text space",
    "text": "text tower",
    "logit": "contrastive-loss temperature / bias",
    "map": "attention-pooling (MAP) head: pools the tokens into one embedding, not backbone",
}
HF_DROPS: list[tuple[str, str, str]] = [
    (r"^embeddings\.class_embedding$", "embeddings.class_embedding", WHY["cls"]),
    (r"^embeddings\.position_ids$", "embeddings.position_ids", "position indices: recomputed"),
    (r"^post_layernorm\.", "post_layernorm.*", WHY["ln_post"]),
    (r"^head\.", "head.*", WHY["map"]),
    (r"^text_model\.", "text_model.*", WHY["text"]),
    (r"^(visual|text)_projection\.", "visual_projection / text_projection", WHY["proj"]),
    (r"^logit_(scale|bias)$", "logit_scale / logit_bias", WHY["logit"]),
]
# transformers' activation names (ACT2FN) → the backbone's MLP kinds.
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "quick_gelu": "quick_gelu",
}


def rows_to_batch(t: LazyTensor) -> LazyTensor:
    """A 2-D (rows, D) position table (transformers' nn.Embedding, open_clip's parameter) as (1, rows, D)."""
    if len(t.shape) != 2:
        raise CheckpointFormatError(f"position embedding has shape {tuple(t.shape)}, expected (rows, width)")
    return LazyTensor((1, *t.shape), t.dtype, lambda: t.load().unsqueeze(0))


def hf_vision_config(raw: RawCheckpoint) -> dict:
    """The vision tower's config: ``vision_config`` of a ``CLIPModel`` / ``SiglipModel``, else the config."""
    cfg = raw.config or {}
    vision = cfg.get("vision_config")
    return vision if isinstance(vision, dict) else cfg


def read_hf_tower(
    raw: RawCheckpoint, fmt: str, defaults: dict, *, num_heads: int | None = None
) -> tuple[TensorMap, dict[str, str], str, float, int | None]:
    """(tensors, dropped, MLP kind, eps, heads or None) of a transformers CLIP / SigLIP folder; ``defaults``:
    the config class's ``hidden_act`` and ``layer_norm_eps``, for configs that leave them out. The config's
    sizes must agree with the tensors (:func:`~vitinit.formats._claims.config_heads`)."""
    cfg = hf_vision_config(raw)
    where = f"{raw.path}: config.json" + (" vision_config" if cfg is not raw.config else "")
    tensors, dropped = canonical_from_hf(
        dict(raw.tensors()), fmt, renames=HF_RENAMES, drops=HF_DROPS, roots=HF_ROOTS
    )
    if "pos_embed" in tensors:
        tensors["pos_embed"] = rows_to_batch(tensors["pos_embed"])
    act = cfg.get("hidden_act", defaults["hidden_act"])
    if not isinstance(act, str) or act not in HF_ACTIVATIONS:
        raise CheckpointFormatError(
            f"{fmt}: hidden_act {quote(act)} is not supported (supported: {', '.join(HF_ACTIVATIONS)})"
        )
    eps = config_eps(cfg, "layer_norm_eps", defaults["layer_norm_eps"], where=where)
    heads, _ = config_heads(cfg, tensors, num_heads=num_heads, where=where)
    return tensors, dropped, HF_ACTIVATIONS[act], eps, heads


def canonical_from_timm_tower(sd: LazyMap, fmt: str) -> tuple[TensorMap, dict[str, str]]:
    """timm's CLIP / SigLIP tower in canonical names (``norm_pre`` is canonical), the MAP head dropped."""
    dropped: dict[str, str] = {}
    counts: dict[str, int] = {}
    rest: LazyMap = {}
    for key, t in sd.items():
        if key.startswith("attn_pool."):
            record_dropped(dropped, counts, key, "attn_pool.*", WHY["map"])
        else:
            rest[key] = t
    tensors, more = canonical_from_timm(rest, fmt=fmt)
    return tensors, {**dropped, **more}


def timm_architecture(arch: str, model_args: dict) -> tuple[str, float, int] | None:
    """(MLP activation kind, LayerNorm eps, heads) of timm's ``arch`` built with ``model_args``, read off
    its model built on the meta device (nothing allocated or downloaded); None when this timm cannot."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            net = timm.create_model(arch, pretrained=False, **model_args)
        block = net.blocks[0]
        act, eps, heads = block.mlp.act, float(block.norm1.eps), int(block.attn.num_heads)
    except Exception as e:  # unknown to this timm version, or args it rejects
        logger.info("timm cannot build %s (%s)", arch, e)
        return None
    kind = type(act).__name__
    if kind == "QuickGELU":
        return "quick_gelu", eps, heads
    if kind == "GELUTanh" or getattr(act, "approximate", "none") == "tanh":
        return "gelu_tanh", eps, heads
    if kind == "GELU":
        return "gelu", eps, heads
    raise CheckpointFormatError(f"timm {arch}: MLP activation {kind} is not supported")


def input_norm(raw: RawCheckpoint, default: tuple[tuple, tuple], family: str) -> tuple[list, list, str]:
    """(mean, std, where from) of the source's input normalisation: its own config when it has one (timm's
    ``pretrained_cfg``, transformers' ``preprocessor_config.json``, open_clip's ``preprocess_cfg``), else the
    family's documented values."""
    found = config_input_norm(raw)
    if found is not None:
        return list(found[0]), list(found[1]), found[2]
    name = DISPLAY_NAMES.get(family, family)
    return list(default[0]), list(default[1]), f"{name}'s documented values (the source has no config)"


def build_tower(
    raw: RawCheckpoint,
    tensors: TensorMap,
    dropped: dict[str, str],
    *,
    family: str,
    fmt: str,
    mlp: str,
    default_norm: tuple[tuple, tuple],
    notes: list[str],
    **spec_hints,
) -> Checkpoint:
    """The canonical checkpoint of a tower, with its activation and input normalisation recorded."""
    norm = input_norm(raw, default_norm, family)
    mean, std, origin = norm
    notes.append(f"MLP activation {mlp}; input mean {_fmt(mean)} std {_fmt(std)} from {origin}")
    return build_checkpoint(
        tensors, dropped, family=family, fmt=fmt, source=str(raw.path), mlp=mlp, input_norm=norm, notes=notes,
        **spec_hints,
    )


def _fmt(v: list) -> str:
    return "/".join(f"{x:.4g}" for x in v)
