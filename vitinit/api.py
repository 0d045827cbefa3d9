"""vitinit as a library: the few calls a researcher's own code needs (exported from ``vitinit``).

- :func:`load_backbone`: any ViT source (a converted file, a checkpoint, ``hf://``, the official release) →
  the detection backbone with multi-scale outputs ``p2`` … ``p6`` and their ``output_shape()``.
- :func:`convert_weights`: the conversion pipeline in memory → tensors + provenance, no file written.
- :func:`load_recipe`, :func:`build_detector`, :func:`run_bench`: a recipe (a bundled name, a ``.yaml`` file
  or a :class:`Recipe`) → the typed recipe, its Mask R-CNN with the weights loaded, a whole benchmark run.

Everything here composes the layers below (``vitinit.convert``, ``vitinit.bench``, ``vitinit.modeling``);
nothing is computed here that the CLI does not compute the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from vitinit.bench import run_bench as _run_bench
from vitinit.bench.datasets import split_paths
from vitinit.bench.worker import build_initialized_model
from vitinit.convert import normalize_source
from vitinit.errors import ConfigError
from vitinit.modeling.backbone import FeatureBackbone, ShapeSpec
from vitinit.modeling.mask_rcnn import MaskRCNN
from vitinit.modeling.norms import norm_layer_for
from vitinit.modeling.pyramid import ViTFeaturePyramid, feature_indices_for
from vitinit.modeling.vit import DetectionViT, ViTBackboneConfig, load_backbone_state
from vitinit.normalize.options import NormalizeOptions
from vitinit.recipes import RecipeLike, as_recipe
from vitinit.recipes.schema import Recipe

__all__ = [
    "ConvertedWeights",
    "FeatureBackbone",
    "Recipe",
    "ShapeSpec",
    "build_detector",
    "convert_weights",
    "load_backbone",
    "load_recipe",
    "run_bench",
]

COCO_CLASSES = 80  # COCO 2017's categories, when the dataset is not on this machine


@dataclass
class ConvertedWeights:
    """What :func:`convert_weights` returns: a target's tensors and how they were made."""

    state_dict: dict[str, torch.Tensor]
    provenance: dict[str, Any]  # source, sha256, family, format, what was dropped and normalized
    target: str
    config: ViTBackboneConfig | None  # the ``vitdet`` backbone these tensors fit (None for detectron2)


def _options(size: int, options: dict[str, Any]) -> NormalizeOptions:
    known = {f.name for f in fields(NormalizeOptions)} - {"img_size"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}; options are {', '.join(sorted(known))}")
    return NormalizeOptions(img_size=size, **options)


def convert_weights(
    source: str | Path | None,
    *,
    to: str = "vitdet",
    size: int = 1024,
    family: str = "auto",
    model: str | None = None,
    num_heads: int | None = None,
    **options: Any,
) -> ConvertedWeights:
    """Convert a checkpoint in memory: what ``vitinit convert SRC --to TO --size SIZE`` would write.

    Args:
        source: a file, a transformers / timm folder, ``hf://ORG/REPO[/FILE]``, or None for the official
            release of ``family`` (``model`` picks its size, default ViT-B).
        to: ``vitdet`` (this project's backbone) or ``detectron2`` (upstream ViTDet's ``backbone.net.*``).
        size: the detection input side (position tables are resized to it).
        family: ``auto`` (detected from the keys) or one of ``vitinit.families.FAMILIES``.
        num_heads: the head count of a custom-size ViT (the weights cannot tell it; a config file can).
        options: any :class:`~vitinit.normalize.options.NormalizeOptions` field (``window_size``,
            ``rel_pos``, ``abs_pos``, ``layer_scale``, ``patch_size``, ``seed`` …); the defaults keep what the
            source computes.
    """
    options_ = _options(size, options)
    normalized = normalize_source(
        source, family=family, target=to, options=options_, model=model, num_heads=num_heads
    )
    return ConvertedWeights(normalized.state_dict(), normalized.provenance.to_dict(), to, normalized.config)


def load_backbone(
    source: str | Path | None,
    *,
    size: int = 1024,
    family: str = "auto",
    model: str | None = None,
    num_heads: int | None = None,
    pyramid: str = "multiscale",
    out_channels: int = 256,
    norm: str = "BN",
    **options: Any,
) -> FeatureBackbone:
    """The paper's detection backbone (ViT + multi-scale adapter + FPN) with ``source``'s ViT weights.

    ``source`` is a ``vitinit convert --to vitdet`` file (read as written) or anything :func:`convert_weights`
    reads (converted in memory with ``options``). The pyramid and its norms are freshly initialized, as in
    detection fine-tuning. The module maps normalized images (B, 3, H, W) to ``{"p2": …, …, "p6": …}``;
    ``output_shape()`` gives each level's channels and stride (detectron2's ``Backbone.output_shape``).

    Args:
        pyramid: ``multiscale`` (the paper), ``simple`` (ViTDet) or ``singlescale`` (``p4`` only).
        norm: the pyramid's norm: BN, SyncBN, GN, LN or none.
    """
    config, state, provenance = _vit_weights(
        source, size=size, family=family, model=model, options={**options, "num_heads": num_heads}
    )
    config = config.replace(out_indices=feature_indices_for(pyramid, config.depth))
    vit = DetectionViT(config)
    load_backbone_state(vit, state)
    neck = ViTFeaturePyramid(vit, pyramid=pyramid, out_channels=out_channels, norm_layer=norm_layer_for(norm))
    return FeatureBackbone(neck, provenance)


def _vit_weights(
    source: str | Path | None, *, size: int, family: str, model: str | None, options: dict[str, Any]
) -> tuple[ViTBackboneConfig, dict[str, torch.Tensor], dict]:
    heads = options.pop("num_heads", None)
    path = Path(source) if source is not None and "://" not in str(source) else None
    if path is not None and path.suffix == ".safetensors" and path.is_file():
        from vitinit.io.load import open_checkpoint
        from vitinit.targets.vitdet import is_vitdet, read_vitdet

        if is_vitdet(open_checkpoint(path).metadata):  # already converted: its config and tensors win
            if options or heads:
                raise ConfigError(f"{path} is already converted; options apply to unconverted sources only")
            weights = read_vitdet(path)
            return weights.config, dict(weights.state_dict), dict(weights.provenance)
    converted = convert_weights(
        source, to="vitdet", size=size, family=family, model=model, num_heads=heads, **options
    )
    return converted.config, converted.state_dict, converted.provenance


def load_recipe(recipe: RecipeLike, overrides: Sequence[str] = ()) -> Recipe:
    """The typed, checked :class:`Recipe` (a bundled name such as ``"mae-vitb"``, a ``.yaml`` file, a
    :class:`Recipe` or a run's ``recipe.yaml`` data), with dotted ``key=value`` overrides applied."""
    return as_recipe(recipe, overrides)


def build_detector(
    recipe: RecipeLike, overrides: Sequence[str] = (), *, num_classes: int | None = None
) -> MaskRCNN:
    """The recipe's Mask R-CNN with its backbone weights loaded, as ``vitinit bench`` starts training it.

    ``num_classes`` (background excluded) defaults to the recipe's dataset: its annotations' categories, or
    COCO's 80. The model is on the CPU in training mode; ``model.eval()`` for inference.
    """
    r = as_recipe(recipe, overrides)
    model, provenance = build_initialized_model(r, num_classes or _num_classes(r))
    model.provenance = provenance
    return model


def _num_classes(recipe: Recipe) -> int:
    if recipe.data.dataset == "coco":
        return COCO_CLASSES
    _, (_, annotations) = split_paths(recipe)  # the synthetic set is generated (once, cached) here
    if not annotations.is_file():
        raise ConfigError(f"{annotations} does not exist; pass num_classes=")
    with open(annotations) as f:
        return len(json.load(f).get("categories", [])) or COCO_CLASSES


def run_bench(recipe: RecipeLike, overrides: Sequence[str] = (), **kwargs: Any) -> dict:
    """Train and evaluate ``recipe`` into a run folder, as ``vitinit bench``; returns ``results.json``'s
    content (``run_dir``, ``final`` and ``best`` box / mask AP …). ``kwargs``: ``output_dir``, ``resume``,
    ``num_processes``, ``progress`` (see :func:`vitinit.bench.run_bench`)."""
    return _run_bench(recipe, overrides, **kwargs)
