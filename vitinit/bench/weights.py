"""Recipe → backbone: its config, and its weights (a fresh init, a source checkpoint, or a converted file).

``load_weights`` is what a run calls; ``describe_weights`` says in words where they would come from
(``vitinit bench --dry-run``), downloading nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vitinit.engine import distributed as du
from vitinit.errors import ConfigError
from vitinit.families import FAMILIES
from vitinit.modeling.vit import ViTBackboneConfig, init_pos_embed_
from vitinit.normalize.lazy import random_pos_embed, zeros
from vitinit.normalize.options import GLOBAL_BLOCKS, NormalizeOptions
from vitinit.recipes import RecipeLike, as_recipe
from vitinit.recipes.schema import Recipe
from vitinit.variants import VIT_VARIANTS

INITS = tuple(f for f in FAMILIES if f != "auto")
POS_ABS = {"pretrained": "auto", "random": "random", "zero": "zero", "none": "none"}  # recipe → abs_pos
POS_REL = ("auto", "pretrained", "zero", "none")


def _global_blocks_value(spec: Any) -> str | tuple[int, ...]:
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        return tuple(int(i) for i in spec)
    if spec not in GLOBAL_BLOCKS:
        raise ConfigError(
            f"model.global_blocks must be quarter, none, all or a list of indexes, got {spec!r}"
        )
    return spec


def global_blocks(spec: Any, depth: int) -> tuple[int, ...]:
    """``quarter`` (the paper), ``none`` (all windowed), ``all`` (all global), or explicit indexes."""
    return NormalizeOptions(global_block_indexes=_global_blocks_value(spec)).global_blocks_for(depth)


def random_backbone_config(recipe: RecipeLike) -> ViTBackboneConfig:
    """The backbone of a randomly initialized run: a named size, or ``model.backbone`` for a custom one."""
    recipe = as_recipe(recipe)
    m = recipe.model
    size = dict(m.backbone)
    if m.variant != "custom":
        v = VIT_VARIANTS.get(m.variant)
        if v is None:
            raise ConfigError(
                f"unknown model.variant {m.variant!r}; use one of {', '.join(VIT_VARIANTS)} or custom"
            )
        size = {
            "embed_dim": v.embed_dim,
            "depth": v.depth,
            "num_heads": v.num_heads,
            "patch_size": v.patch_size,
            "mlp_hidden_dim": v.mlp_hidden_dim,
            **size,
        }
    missing = {"embed_dim", "depth", "num_heads"} - set(size)
    if missing:
        raise ConfigError(f"model.variant=custom needs model.backbone.{sorted(missing)[0]}")
    size.setdefault("mlp_hidden_dim", 4 * size["embed_dim"])
    o = normalize_options(recipe)
    opts = dict(
        img_size=o.img_size,
        window_size=o.window_size,
        global_block_indexes=o.global_blocks_for(size["depth"]),
        rel_pos="shared" if o.rel_pos == "auto" else o.rel_pos,
        use_abs_pos=o.abs_pos != "none",
        drop_path_rate=m.drop_path,
        use_act_checkpoint=m.act_checkpoint,
    )
    return ViTBackboneConfig(**{**size, **opts})


def describe_weights(recipe: RecipeLike) -> str:
    """Where the backbone weights of ``recipe`` come from, in words (``--dry-run``); downloads nothing."""
    recipe = as_recipe(recipe)
    w, variant = recipe.weights, recipe.model.variant
    normalize_options(recipe)  # a bad position policy fails here, before any download
    if is_resnet(recipe):
        seed = recipe.train.seed
        return f"random initialization of ResNet-101 + FPN (detectron2's c2_msra_fill, seed {seed})"
    if w.init == "random" and not w.source:
        return f"random initialization of {variant} (DetectionViT's own init, seed {recipe.train.seed})"
    if w.source:
        kind = "Hugging Face Hub" if str(w.source).startswith("hf://") else "local file"
        return f"{w.init} weights from {kind} {w.source}"
    try:
        from vitinit.io.registry import official_checkpoint

        entry = official_checkpoint(w.init, variant)
    except ImportError:
        entry = None
    if entry is None:
        return f"no official {w.init} checkpoint for {variant} is registered: set weights.source"
    from vitinit.io.remote import cache_root

    return f"official {w.init} {variant} checkpoint {entry.url} (downloaded once into {cache_root(None)})"


def normalize_options(recipe: Recipe) -> NormalizeOptions:
    """The recipe's backbone and position policy as conversion options (the same as ``vitinit convert``'s).

    ``model.pos_abs`` ``pretrained`` keeps the source's embedding (zeros where it has none, as BEiT);
    ``random`` / ``zero`` / ``none`` are drawn, zeroed or left out by the normalization. ``model.pos_rel``
    ``auto`` / ``pretrained`` carries the source's tables (zeros where it has none), ``zero`` zeroes them,
    ``none`` builds a backbone without relative bias. ``model.rel_pos: shared`` asks for the paper's two
    tables: a fine-tuned BEiT's per-block tables are then averaged (logged; in ``weights.json``).
    """
    m = recipe.model
    for key, allowed in (("pos_abs", POS_ABS), ("pos_rel", POS_REL)):
        if getattr(m, key) not in allowed:
            raise ConfigError(f"model.{key} must be one of {', '.join(allowed)}, got {getattr(m, key)!r}")
    return NormalizeOptions(
        img_size=m.img_size,
        window_size=m.window_size,
        global_block_indexes=_global_blocks_value(m.global_blocks),
        abs_pos=POS_ABS[m.pos_abs],
        rel_pos="none" if m.pos_rel == "none" else m.rel_pos,
        rel_pos_init="zero" if m.pos_rel == "zero" else "source",
        layer_scale=m.layer_scale,
        # A source patch size other than this one is resampled (e.g. DINOv2 14 -> 16; normalize.patch_size).
        patch_size=m.backbone.get("patch_size"),
        seed=recipe.weights.seed,
    )


def is_fresh_init(recipe: Recipe) -> bool:
    """True when the backbone is ``DetectionViT``'s own random init (no file is read)."""
    return recipe.weights.init == "random" and not recipe.weights.source


def is_resnet(recipe: Recipe) -> bool:
    """The paper's CNN baseline (``recipes/random-r101.yaml``) instead of a ViT."""
    return recipe.model.detector.get("backbone_type") == "resnet101"


def load_weights(recipe: RecipeLike) -> tuple[ViTBackboneConfig, dict[str, torch.Tensor] | None, dict]:
    """(backbone config, backbone state dict or None for a fresh init, provenance dict).

    A source goes through the conversion pipeline (``vitinit.convert.normalize_source``) with
    :func:`normalize_options`, its tensors kept in memory instead of written to a file.
    """
    recipe = as_recipe(recipe)
    w, m = recipe.weights, recipe.model
    if w.init not in INITS:
        raise ConfigError(f"weights.init must be one of {', '.join(INITS)}, got {w.init!r}")
    if is_fresh_init(recipe):
        config = random_backbone_config(recipe)
        return (
            config,
            None,
            {
                "family": "random",
                "format": "init",
                "source": None,
                "sha256": None,
                "notes": [f"DetectionViT.reset_parameters, seed {recipe.train.seed}"],
            },
        )
    from vitinit.convert import normalize_source
    from vitinit.io.remote import resolve_source

    variant = None if m.variant == "custom" else m.variant
    path = resolve_source(
        w.source, family=w.init, model=variant or "vit-b", progress=du.is_main_process()
    )
    options = normalize_options(recipe)
    if path is not None and str(path).endswith(".safetensors") and _is_vitdet(path):
        return _load_converted(path, recipe, options)
    heads = None if variant else m.backbone.get("num_heads")  # custom sizes only
    normalized = normalize_source(
        path, family=w.init, target="vitdet", options=options, model=variant, num_heads=heads
    )
    config = normalized.config.replace(drop_path_rate=m.drop_path, use_act_checkpoint=m.act_checkpoint)
    return config, normalized.state_dict(), normalized.provenance.to_dict()


def pretrained_backbone_config(recipe: RecipeLike, spec: Any) -> ViTBackboneConfig:
    """The detection backbone for a source architecture (a ``ViTSpec``) under the recipe's options."""
    from vitinit.normalize.detection import detection_config

    recipe = as_recipe(recipe)
    m, o = recipe.model, normalize_options(recipe)
    config = detection_config(
        spec,
        img_size=o.img_size,
        window_size=o.window_size,
        global_block_indexes=o.global_blocks_for(spec.depth),
        rel_pos=o.rel_pos,
        layer_scale=o.layer_scale,
        abs_pos=o.abs_pos,
    )
    return config.replace(drop_path_rate=m.drop_path, use_act_checkpoint=m.act_checkpoint)


def _is_vitdet(path: Path) -> bool:
    from vitinit.io.load import open_checkpoint
    from vitinit.targets.vitdet import is_vitdet

    return is_vitdet(open_checkpoint(path).metadata)


def _load_converted(
    path: Path, recipe: Recipe, options: NormalizeOptions
) -> tuple[ViTBackboneConfig, dict[str, torch.Tensor], dict]:
    """A ``vitinit convert --to vitdet`` file: its config and tensors win; the recipe's training knobs and
    position policy apply (the file is already in the target layout, so the policy edits its tensors)."""
    from vitinit.targets.vitdet import read_vitdet

    weights = read_vitdet(path)
    m, state, done = recipe.model, dict(weights.state_dict), []
    config = weights.config.replace(drop_path_rate=m.drop_path, use_act_checkpoint=m.act_checkpoint)
    if options.abs_pos == "none" and config.use_abs_pos:
        config, _ = config.replace(use_abs_pos=False), state.pop("pos_embed")
        done.append("pos_embed: none")
    elif options.abs_pos in ("zero", "random") and config.use_abs_pos:
        shape = tuple(state["pos_embed"].shape)
        fresh = zeros(shape) if options.abs_pos == "zero" else random_pos_embed(shape, options.seed)
        state["pos_embed"] = fresh.load()
        done.append(f"pos_embed: {options.abs_pos}")
    tables = [k for k in state if k.endswith("relative_position_bias_table")]
    if options.rel_pos == "none" and tables:
        config = config.replace(rel_pos="none")
        state = {k: v for k, v in state.items() if k not in tables}
        done.append("relative position tables: none")
    elif options.rel_pos_init == "zero" and tables:
        state.update({k: torch.zeros_like(state[k]) for k in tables})
        done.append("relative position tables: zero")
    provenance = dict(weights.provenance)
    if done:
        provenance["position_policy"] = done
    return config, state, provenance


def apply_position_policy(vit: torch.nn.Module, recipe: RecipeLike) -> list[str]:
    """A fresh init's position policy (``model.pos_abs`` / ``model.pos_rel``); say what changed.

    Weights read from a file got theirs from :func:`load_weights` (the normalization options), so this is
    a no-op for them.
    """
    recipe = as_recipe(recipe)
    if not is_fresh_init(recipe):
        return []
    m, done = recipe.model, []
    gen = torch.Generator().manual_seed(recipe.weights.seed)
    with torch.no_grad():
        if vit.pos_embed is not None and m.pos_abs == "random":
            vit.pos_embed.copy_(init_pos_embed_(torch.empty_like(vit.pos_embed), gen))
            done.append("pos_embed: random (trunc-normal 0.02)")
        elif vit.pos_embed is not None and m.pos_abs == "zero":
            vit.pos_embed.zero_()
            done.append("pos_embed: zero")
        if m.pos_rel == "zero":  # DetectionViT's own init is zeros already: recorded, not changed
            done.append("relative position tables: zero")
    return done
