"""SigLIP and SigLIP 2 vision towers (Zhai et al. 2023; Tschannen et al. 2025), fixed resolution.

A SigLIP tower is a ViT without a class token (its position rows are the grid), LayerNorm eps 1e-6, a final
norm and a MAP attention-pooling head (both dropped: not backbone). SigLIP 2's fixed-resolution towers have
the same architecture (transformers loads ``google/siglip2-*-patch16-224`` as ``SiglipModel``); one family
covers both, and the provenance keeps the source's name.

- transformers ``SiglipVisionModel`` / ``SiglipModel`` folders (vision tower only): see
  :mod:`vitinit.formats._image_text`; the activation is the config's (``gelu_pytorch_tanh`` by default:
  big_vision's ``nn.gelu`` is the tanh approximation).
- timm ``vit_*_siglip_*`` hub folders (:mod:`vitinit.formats.timm_hub` hands them here): the activation is the
  architecture's, as timm computes it (exact GELU for ``vit_base_patch16_siglip_224``, tanh-GELU for others).
- open_clip folders whose tower is a timm SigLIP trunk (``vision_cfg.timm_model_name``, keys
  ``visual.trunk.*``; ``timm/ViT-B-16-SigLIP2``): read as that timm architecture.
- a bare timm state dict with the MAP head (``attn_pool.latent``): no config, so tanh-GELU (SigLIP's own).

NaFlex SigLIP 2 (``Siglip2VisionModel``: variable resolution, a linear patch embedding on flattened patches,
positions resized per image) is refused: it is a different model, not a layout.
"""

from __future__ import annotations

import vitinit.formats._image_text as it
from vitinit.canonical import Checkpoint
from vitinit.errors import CheckpointFormatError
from vitinit.formats._common import (
    DECLARED,
    Score,
    is_timm_layout,
    record_dropped,
    state_dict_of,
)
from vitinit.io.load import RawCheckpoint

FAMILY = "siglip"
FAMILIES = (FAMILY,)
MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # big_vision's value_range (-1, 1)
MODEL_TYPES = {"siglip": "hf/siglip", "siglip_vision_model": "hf/siglip_vision_model"}
NAFLEX_TYPES = ("siglip2", "siglip2_vision_model")
HF_DEFAULTS = {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}  # SiglipVisionConfig's


def _trunk_arch(raw: RawCheckpoint) -> str:
    """The timm architecture of an open_clip folder's trunk ('' when its tower is not a timm one)."""
    model_cfg = (raw.config or {}).get("model_cfg") or {}
    vision = model_cfg.get("vision_cfg") if isinstance(model_cfg, dict) else None
    return str((vision or {}).get("timm_model_name") or "")


def score(raw: RawCheckpoint) -> Score:
    """DECLARED for a transformers SigLIP folder or an open_clip folder with a timm SigLIP trunk; 5 for a
    timm-layout state dict with SigLIP's MAP head and no class token."""
    if raw.container == "hf-folder":
        model_type = (raw.config or {}).get("model_type")
        if model_type in NAFLEX_TYPES:
            raise CheckpointFormatError(
                f"{raw.path}: NaFlex SigLIP 2 (model_type {model_type!r}: variable resolution, linear patch "
                "embedding) is not supported; use a fixed-resolution release such as "
                "google/siglip2-base-patch16-224"
            )
        if model_type in MODEL_TYPES:
            return Score(FAMILY, DECLARED, f"config.json model_type {model_type!r}")
        return Score(FAMILY, 0)
    if raw.container == "open_clip-folder":
        arch = _trunk_arch(raw)
        if not arch:
            return Score(FAMILY, 0)
        if "siglip" not in arch or "naflex" in arch:
            raise CheckpointFormatError(
                f"{raw.path}: open_clip tower timm_model_name {arch!r} is not supported"
            )
        return Score(FAMILY, DECLARED, f"open_clip_config.json timm_model_name {arch!r}")
    if raw.container == "timm-folder":
        return Score(FAMILY, 0)  # timm_hub names the family from the architecture
    sd = state_dict_of(raw)
    if is_timm_layout(sd) and "attn_pool.latent" in sd and "cls_token" not in sd:
        return Score(FAMILY, 5, "attn_pool.latent (a MAP head) and no cls_token: timm's SigLIP")
    return Score(FAMILY, 0)


def read(
    raw: RawCheckpoint, *, model: str | None = None, num_heads: int | None = None, family: str | None = None
) -> Checkpoint:
    notes: list[str] = []
    heads_hint = None
    if raw.container == "hf-folder":
        fmt = MODEL_TYPES.get((raw.config or {}).get("model_type"), "hf/siglip")
        tensors, dropped, mlp, eps, heads_hint = it.read_hf_tower(raw, fmt, HF_DEFAULTS, num_heads=num_heads)
        notes.append(f"hidden_act, layer_norm_eps {eps:g} and heads from config.json")
    elif raw.container in ("timm-folder", "open_clip-folder"):
        cfg = raw.config or {}
        sd = state_dict_of(raw)
        outside: dict[str, str] = {}
        if raw.container == "open_clip-folder":
            fmt, arch, args = "siglip/open_clip-folder", _trunk_arch(raw), {}
            counts: dict[str, int] = {}
            for key in sd:
                if key.startswith("visual.trunk."):
                    continue
                if key.startswith("visual."):
                    record_dropped(outside, counts, key, "visual.head.*", "open_clip's projection head")
                else:
                    record_dropped(outside, counts, key, "text tower (all but visual.*)", it.WHY["text"])
            sd = {k[len("visual.trunk.") :]: v for k, v in sd.items() if k.startswith("visual.trunk.")}
        else:
            fmt, arch = "siglip/timm-folder", str(cfg.get("architecture"))
            args = dict(cfg.get("model_args") or {})
        tensors, dropped = it.canonical_from_timm_tower(sd, fmt)
        dropped.update(outside)
        built = it.timm_architecture(arch, args)
        if built is None:
            raise CheckpointFormatError(f"{raw.path}: this timm cannot build {arch!r}; update timm")
        mlp, eps, heads_hint = built
        notes.append(f"activation, eps and heads of timm's {arch}")
    else:
        fmt = "siglip/timm"
        tensors, dropped = it.canonical_from_timm_tower(state_dict_of(raw), fmt)
        mlp, eps = "gelu_tanh", 1e-6
        notes.append("no config: tanh-GELU and eps 1e-6, SigLIP's own (big_vision)")
    return it.build_tower(
        raw, tensors, dropped, family=FAMILY, fmt=fmt, mlp=mlp, default_norm=MEAN_STD, notes=notes,
        model=model, num_heads=num_heads, heads_hint=heads_hint, num_prefix_tokens=0, norm_eps=eps,
    )
