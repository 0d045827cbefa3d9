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
from vitinit.families import FAMILIES as INITS
from vitinit.modeling.vit import ViTBackboneConfig, quarter_block_indexes
from vitinit.variants import VIT_VARIANTS


def global_blocks(spec: Any, depth: int) -> tuple[int, ...]:
    """``quarter`` (the paper), ``none`` (all windowed), ``all`` (all global), or explicit indexes."""
    if spec == "quarter":
        return quarter_block_indexes(depth)
    if spec == "none":
        return ()
    if spec == "all":
        return tuple(range(depth))
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        return tuple(int(i) for i in spec)
    raise ConfigError(f"model.global_blocks must be quarter, none, all or a list of indexes, got {spec!r}")


def _rel_pos_style(m: dict) -> str:
    return "none" if m["pos_rel"] == "none" else m["rel_pos"]


def _backbone_options(m: dict, depth: int) -> dict[str, Any]:
    return dict(
        img_size=m["img_size"],
        window_size=m["window_size"],
        global_block_indexes=global_blocks(m["global_blocks"], depth),
        drop_path_rate=m["drop_path"],
        use_act_checkpoint=m["act_checkpoint"],
        use_abs_pos=m["pos_abs"] != "none",
    )


def random_backbone_config(recipe: dict) -> ViTBackboneConfig:
    """The backbone of a randomly initialized run: a named size, or ``model.backbone`` for a custom one."""
    m = recipe["model"]
    size = dict(m.get("backbone") or {})
    if m["variant"] != "custom":
        v = VIT_VARIANTS.get(m["variant"])
        if v is None:
            raise ConfigError(
                f"unknown model.variant {m['variant']!r}; use one of {', '.join(VIT_VARIANTS)} or custom"
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
    opts = _backbone_options(m, size["depth"])
    return ViTBackboneConfig(**{**size, **opts, "rel_pos": _rel_pos_style(m)})


def describe_weights(recipe: dict) -> str:
    """Where the backbone weights of ``recipe`` come from, in words (``--dry-run``); downloads nothing."""
    w, variant = recipe["weights"], recipe["model"]["variant"]
    if w["init"] == "random" and not w["source"]:
        return f"random initialization of {variant} (DetectionViT's own init, seed {recipe['train']['seed']})"
    if w["source"]:
        kind = "Hugging Face Hub" if str(w["source"]).startswith("hf://") else "local file"
        return f"{w['init']} weights from {kind} {w['source']}"
    try:
        from vitinit.io.registry import official_checkpoint

        entry = official_checkpoint(w["init"], variant)
    except ImportError:
        entry = None
    if entry is None:
        return f"no official {w['init']} checkpoint for {variant} is registered: set weights.source"
    from vitinit.io.remote import cache_root

    return f"official {w['init']} {variant} checkpoint {entry.url} (downloaded once into {cache_root(None)})"


def load_weights(recipe: dict) -> tuple[ViTBackboneConfig, dict[str, torch.Tensor] | None, dict]:
    """(backbone config, backbone state dict or None for a fresh init, provenance dict)."""
    w, m = recipe["weights"], recipe["model"]
    if w["init"] not in INITS:
        raise ConfigError(f"weights.init must be one of {', '.join(INITS)}, got {w['init']!r}")
    if w["init"] == "random" and not w["source"]:
        config = random_backbone_config(recipe)
        return (
            config,
            None,
            {
                "family": "random",
                "format": "init",
                "source": None,
                "sha256": None,
                "notes": [
                    "DetectionViT.reset_parameters (trunc-normal 0.02, zero rel-pos), "
                    f"seed {recipe['train']['seed']}"
                ],
            },
        )
    from vitinit.io.remote import resolve_source

    variant = None if m["variant"] == "custom" else m["variant"]
    path = resolve_source(
        w["source"], family=w["init"], model=variant or "vit-b", progress=du.is_main_process()
    )
    if path is not None and str(path).endswith(".safetensors") and _is_vitdet(path):
        return _load_converted(path, recipe)
    from vitinit.formats import read_checkpoint
    from vitinit.normalize.detection import to_vitdet

    ckpt = read_checkpoint(path, family=w["init"], model=variant, seed=w["seed"])
    config = pretrained_backbone_config(recipe, ckpt.spec)
    # Convert with every positional tensor, then drop what the ablation removes (pos_abs / pos_rel = none).
    full = config.replace(rel_pos="shared" if config.rel_pos == "none" else config.rel_pos, use_abs_pos=True)
    tensors, provenance = to_vitdet(ckpt, full, layer_scale=m["layer_scale"], seed=w["seed"])
    state = {k: t.load() for k, t in tensors.items()}
    if not config.use_abs_pos:
        state.pop("pos_embed")
    if config.rel_pos == "none":
        state = {k: v for k, v in state.items() if "relative_position_bias_table" not in k}
    return config, state, provenance.to_dict()


def pretrained_backbone_config(recipe: dict, spec: Any) -> ViTBackboneConfig:
    """The detection backbone for a source architecture (a ``ViTSpec``) under the recipe's options."""
    from vitinit.normalize.detection import detection_config

    m = recipe["model"]
    opts = _backbone_options(m, spec.depth)
    use_abs_pos = opts.pop("use_abs_pos")
    rel = _rel_pos_style(m)
    config = detection_config(
        spec,
        img_size=opts.pop("img_size"),
        window_size=opts.pop("window_size"),
        global_block_indexes=opts.pop("global_block_indexes"),
        rel_pos="shared" if rel == "none" else rel,
        layer_scale=m["layer_scale"],
        patch_size=(m.get("backbone") or {}).get("patch_size"),  # e.g. DINOv2 14 -> 16 (resampled)
        **opts,
    )
    return config.replace(rel_pos=rel, use_abs_pos=use_abs_pos)


def _is_vitdet(path: Path) -> bool:
    from vitinit.io.load import open_checkpoint
    from vitinit.targets.vitdet import is_vitdet

    return is_vitdet(open_checkpoint(path).metadata)


def _load_converted(path: Path, recipe: dict) -> tuple[ViTBackboneConfig, dict[str, torch.Tensor], dict]:
    """A ``vitinit convert --to vitdet`` file: its config wins, the recipe's training knobs apply."""
    from vitinit.targets.vitdet import read_vitdet

    weights = read_vitdet(path)
    m = recipe["model"]
    config = weights.config.replace(drop_path_rate=m["drop_path"], use_act_checkpoint=m["act_checkpoint"])
    return config, weights.state_dict, weights.provenance


def apply_position_policy(vit: torch.nn.Module, recipe: dict) -> list[str]:
    """Re-initialize positional parameters as ``model.pos_abs`` / ``model.pos_rel`` ask; say what changed."""
    m, done = recipe["model"], []
    gen = torch.Generator().manual_seed(recipe["weights"]["seed"])
    with torch.no_grad():
        if vit.pos_embed is not None and m["pos_abs"] == "random":
            vit.pos_embed.copy_(
                torch.nn.init.trunc_normal_(torch.empty_like(vit.pos_embed), std=0.02, generator=gen)
            )
            done.append("pos_embed: random (trunc-normal 0.02)")
        elif vit.pos_embed is not None and m["pos_abs"] == "zero":
            vit.pos_embed.zero_()
            done.append("pos_embed: zero")
        if m["pos_rel"] == "zero":
            for name, p in vit.named_parameters():
                if "relative_position_bias_table" in name:
                    p.zero_()
            done.append("relative position tables: zero")
    return done
