"""CLIP vision towers (Radford et al. 2021: OpenAI CLIP, and open_clip's re-trainings), in every layout.

- OpenAI / open_clip state dict (``open_clip_pytorch_model.bin``, open_clip training checkpoints under
  ``state_dict`` with DDP's ``module.``): ``visual.conv1`` (no bias), ``visual.positional_embedding`` (rows
  = class + grid, 2-D), ``visual.class_embedding`` (1-D), ``visual.ln_pre``, ``visual.transformer.resblocks.
  {i}.{ln_1, attn.in_proj_weight/bias (q, k, v rows, nn.MultiheadAttention's fused projection), attn.out_proj,
  ln_2, mlp.c_fc, mlp.c_proj}`` (and ``ls_1/ls_2.gamma`` with layer scale), then ``visual.ln_post`` and
  ``visual.proj``, the pooling head. The text tower sits beside ``visual.*``. Without a config, the head
  count is the size table's (OpenAI and open_clip use 64-wide heads) and the activation QuickGELU, OpenAI's
  (open_clip's own trainings without ``-quickgelu`` in their name use GELU: convert their hub folder, whose
  config says which).
- open_clip's hub folder: ``open_clip_config.json`` (``model_cfg.quick_gelu``, ``vision_cfg.width /
  head_width`` for the heads, ``preprocess_cfg`` mean/std) + ``open_clip_model.safetensors``.
- transformers ``CLIPVisionModel`` / ``CLIPModel`` (vision tower only): :mod:`vitinit.formats._image_text`.
- timm ``vit_*_clip_*`` hub folders (:mod:`vitinit.formats.timm_hub` hands them here): timm's names plus
  ``norm_pre``; timm's ``vit_*_clip_224`` computes exact GELU, its ``*_clip_quickgelu_*`` QuickGELU.

What the backbone keeps: patch embedding, positions without the class row, ln_pre (``norm_pre``), the blocks.
"""

from __future__ import annotations

import vitinit.formats._image_text as it
from vitinit.canonical import Checkpoint, TensorMap
from vitinit.errors import CheckpointFormatError, SpecMismatchError, quote
from vitinit.formats._claims import config_eps, config_int, config_sizes, heads_from_config, tensor_sizes
from vitinit.formats._common import DECLARED, LazyMap, Score, record_dropped, state_dict_of
from vitinit.formats.hf import canonical_from_hf
from vitinit.io.load import RawCheckpoint

FAMILY = "clip"
FAMILIES = (FAMILY,)
# OpenAI's clip/clip.py preprocessing (open_clip's OPENAI_DATASET_MEAN / STD).
MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
MODEL_TYPES = {"clip": "hf/clip", "clip_vision_model": "hf/clip_vision_model"}
# transformers CLIPVisionConfig's defaults, for hub configs that leave them out.
HF_DEFAULTS = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}

_OPEN_CLIP_RENAMES: list[tuple[str, str]] = [
    (r"conv1\.weight", "patch_embed.proj.weight"),
    (r"positional_embedding", "pos_embed"),
    (r"ln_pre\.(weight|bias)", "norm_pre.{0}"),
    (r"transformer\.resblocks\.(\d+)\.ln_([12])\.(weight|bias)", "blocks.{0}.norm{1}.{2}"),
    (r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", "blocks.{0}.attn.qkv.{1}"),
    (r"transformer\.resblocks\.(\d+)\.attn\.out_proj\.(weight|bias)", "blocks.{0}.attn.proj.{1}"),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_fc\.(weight|bias)", "blocks.{0}.mlp.fc1.{1}"),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_proj\.(weight|bias)", "blocks.{0}.mlp.fc2.{1}"),
    (r"transformer\.resblocks\.(\d+)\.ls_([12])\.gamma", "blocks.{0}.gamma_{1}"),
]
_OPEN_CLIP_DROPS: list[tuple[str, str, str]] = [
    (r"^class_embedding$", "visual.class_embedding", it.WHY["cls"]),
    (r"^ln_post\.", "visual.ln_post.*", it.WHY["ln_post"]),
    (r"^proj$", "visual.proj", it.WHY["proj"]),
    (r"^attn_pool", "visual.attn_pool*", "attentional pooler (CoCa): not backbone"),
]
_OPEN_CLIP_SIGNATURE = ("visual.conv1.weight", "visual.transformer.resblocks.0.attn.in_proj_weight")


def _state_dict(raw: RawCheckpoint) -> LazyMap:
    sd = state_dict_of(raw)
    if sd and all(k.startswith("module.") for k in sd):  # open_clip's DDP training checkpoints
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _open_clip_vision_cfg(raw: RawCheckpoint) -> dict:
    model_cfg = (raw.config or {}).get("model_cfg") or {}
    vision = model_cfg.get("vision_cfg") if isinstance(model_cfg, dict) else None
    return vision if isinstance(vision, dict) else {}


def score(raw: RawCheckpoint) -> Score:
    """DECLARED for a transformers CLIP folder or an open_clip folder with a ViT tower; 6 for a state dict
    with open_clip's ``visual.conv1`` and ``visual.transformer.resblocks`` (the OpenAI layout)."""
    if raw.container == "hf-folder":
        model_type = (raw.config or {}).get("model_type")
        if model_type in MODEL_TYPES:
            return Score(FAMILY, DECLARED, f"config.json model_type {model_type!r}")
        return Score(FAMILY, 0)
    if raw.container == "open_clip-folder":
        vision = _open_clip_vision_cfg(raw)
        if vision.get("timm_model_name"):
            return Score(FAMILY, 0)  # a timm trunk: SigLIP's reader or none
        if not isinstance(vision.get("layers"), int):
            raise CheckpointFormatError(
                f"{raw.path}: open_clip vision_cfg {sorted(vision)} is not a ViT tower (ResNet CLIP?)"
            )
        return Score(FAMILY, DECLARED, "open_clip_config.json with a ViT vision tower")
    if raw.container == "timm-folder":
        return Score(FAMILY, 0)  # timm_hub names the family from the architecture
    sd = _state_dict(raw)
    if all(k in sd for k in _OPEN_CLIP_SIGNATURE):
        return Score(FAMILY, 6, "visual.conv1 and visual.transformer.resblocks (OpenAI / open_clip CLIP)")
    return Score(FAMILY, 0)


def _open_clip_tensors(sd: LazyMap, fmt: str) -> tuple[TensorMap, dict[str, str]]:
    visual = {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
    if "trunk.patch_embed.proj.weight" in visual:
        raise CheckpointFormatError(f"{fmt}: a timm trunk (visual.trunk.*): convert its open_clip folder")
    tensors, dropped = canonical_from_hf(
        visual, fmt, renames=_OPEN_CLIP_RENAMES, drops=_OPEN_CLIP_DROPS, roots=()
    )
    counts: dict[str, int] = {}
    for key in sd:
        if not key.startswith("visual."):
            record_dropped(dropped, counts, key, "text tower (all but visual.*)", it.WHY["text"])
    if "pos_embed" in tensors:
        tensors["pos_embed"] = it.rows_to_batch(tensors["pos_embed"])
    return tensors, dropped


# open_clip vision_cfg keys that state a size the tensors also have: (key, _claims name, what it is).
_OPEN_CLIP_SIZE_KEYS = (
    ("width", "width", "the tower's width"),
    ("layers", "depth", "the tower's depth"),
    ("patch_size", "patch", "the patch side"),
)


def _open_clip_eps_heads(
    raw: RawCheckpoint, vision: dict, tensors: TensorMap, num_heads: int | None
) -> tuple[float, int | None]:
    """(LayerNorm eps, heads) of an open_clip folder's vision_cfg, its sizes checked against the tensors:
    the heads are width / head_width (open_clip's VisionTransformer), 64-wide by default."""
    where = f"{raw.path}: open_clip_config.json vision_cfg"
    norm_kwargs = vision.get("norm_kwargs") or {}
    if not isinstance(norm_kwargs, dict):
        raise CheckpointFormatError(f"{where}: norm_kwargs must be a mapping, got {quote(norm_kwargs)}")
    eps = config_eps(norm_kwargs, "eps", 1e-5, where=f"{where} norm_kwargs")  # open_clip's LayerNorm default
    head_width = config_int(vision, "head_width", what="the width of one head", bound="width", where=where)
    config_sizes(vision, _OPEN_CLIP_SIZE_KEYS, tensors, where=where)
    width = tensor_sizes(tensors).get("width")
    if width is None or (head_width is None and width % 64):
        return eps, None  # open_clip's default 64-wide heads do not fit: the size table or --num-heads
    head_width = head_width or 64
    if width % head_width:
        raise SpecMismatchError(f"{where}: head_width {head_width} does not divide the weights' width "
                                f"{width}")
    heads, _ = heads_from_config(width // head_width, width, num_heads=num_heads, where=where)
    return eps, heads


def read(
    raw: RawCheckpoint, *, model: str | None = None, num_heads: int | None = None, family: str | None = None
) -> Checkpoint:
    notes: list[str] = []
    heads_hint: int | None = None
    prefix: int | None = 1  # CLIP's position rows: the class row, then the grid
    if raw.container == "hf-folder":
        fmt = MODEL_TYPES.get((raw.config or {}).get("model_type"), "hf/clip")
        tensors, dropped, mlp, eps, heads_hint = it.read_hf_tower(raw, fmt, HF_DEFAULTS, num_heads=num_heads)
        notes.append(f"hidden_act, layer_norm_eps {eps:g} and heads from config.json")
    elif raw.container == "open_clip-folder":
        fmt = "clip/open_clip-folder"
        vision = _open_clip_vision_cfg(raw)
        tensors, dropped = _open_clip_tensors(_state_dict(raw), fmt)
        quick = ((raw.config or {}).get("model_cfg") or {}).get("quick_gelu", False)  # a dict: scored
        if not isinstance(quick, bool):
            raise CheckpointFormatError(
                f"{raw.path}: open_clip_config.json quick_gelu must be true or false, got {quote(quick)}"
            )
        mlp = "quick_gelu" if quick else "gelu"
        eps, heads_hint = _open_clip_eps_heads(raw, vision, tensors, num_heads)
        notes.append("quick_gelu and heads (width / head_width) from open_clip_config.json")
    elif raw.container == "timm-folder":
        fmt = "clip/timm-folder"
        cfg = raw.config or {}
        tensors, dropped = it.canonical_from_timm_tower(state_dict_of(raw), fmt)
        arch = str(cfg.get("architecture"))
        built = it.timm_architecture(arch, dict(cfg.get("model_args") or {}))
        if built is None:  # this timm cannot build it: timm's naming rule
            mlp, eps = ("quick_gelu" if "quickgelu" in arch else "gelu"), 1e-5
            notes.append(f"activation from the architecture's name {arch!r} (this timm cannot build it)")
        else:
            mlp, eps, heads_hint = built
            notes.append(f"activation, eps and heads of timm's {arch}")
        tag = str((cfg.get("pretrained_cfg") or {}).get("tag") or "")
        if tag.startswith("openai") and mlp != "quick_gelu":
            notes.append(
                f"timm's {arch} computes {mlp}, as converted here; OpenAI trained these weights with "
                "QuickGELU (timm's *_clip_quickgelu_* architecture, or hf://openai/clip-vit-base-patch16)"
            )
        prefix = None  # from the row count: timm's CLIP keeps a class row
    else:
        fmt = "clip/open_clip"
        tensors, dropped = _open_clip_tensors(_state_dict(raw), fmt)
        mlp, eps = "quick_gelu", 1e-5
        notes.append("no config: QuickGELU and eps 1e-5, OpenAI CLIP's (open_clip's GELU models: convert "
                     "their folder, whose config says so)")
    return it.build_tower(
        raw, tensors, dropped, family=FAMILY, fmt=fmt, mlp=mlp, default_norm=MEAN_STD, notes=notes,
        model=model, num_heads=num_heads, heads_hint=heads_hint, num_prefix_tokens=prefix, norm_eps=eps,
    )
