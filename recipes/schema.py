"""The recipe's schema: every key, its type, its allowed values, checked before anything runs.

A recipe is merged YAML (see :mod:`vitinit.recipes`); this module says what a merged recipe may hold and turns
it into typed sections, as detectron2's LazyConfig trees are checked by the constructors they feed, but up
front: ``vitinit bench --dry-run`` fails in a second on a typo, a wrong type or a bad value, with one line
naming the key and what it accepts. The free-form sub-trees are checked against the dataclasses they feed:
``model.detector`` against :class:`~vitinit.modeling.mask_rcnn.MaskRCNNConfig`, ``model.backbone`` against
the size fields of :class:`~vitinit.modeling.vit.ViTBackboneConfig` and ``data.synthetic`` against
:class:`~vitinit.data.synthetic.SyntheticSpec` (their fields, read at run time, so new fields are accepted).

Example:
    >>> recipe = parse_recipe(resolve("demo"))  # doctest: +SKIP
    >>> recipe.optim.lr, recipe.schedule.iters  # doctest: +SKIP
    (0.001, 200)
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

from vitinit.data.synthetic import SyntheticSpec
from vitinit.errors import ConfigError
from vitinit.formats import FAMILIES
from vitinit.modeling.mask_rcnn import NORMS, MaskRCNNConfig
from vitinit.modeling.pyramid import PYRAMIDS
from vitinit.modeling.vit import REL_POS_STYLES, ViTBackboneConfig
from vitinit.normalize.detection import LAYER_SCALE_MODES
from vitinit.variants import VIT_VARIANTS

INITS = tuple(f for f in FAMILIES if f != "auto")
MISSING = "???"  # OmegaConf's mark of a value a child recipe must set


def knob(
    help: str,
    *,
    choices: tuple = (),
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    below: float | None = None,
    free: Any = None,
) -> Any:
    """A recipe key: ``help`` for ``--list-keys``; allowed strings; an inclusive ``min``/``max`` or exclusive
    ``above``/``below`` bound; ``free``: a function giving ``{name: (type, default)}``, an open sub-tree."""
    meta = dict(help=help, choices=choices, min=min, max=max, above=above, below=below, free=free)
    return field(metadata=meta)


# --- the open sub-trees: their keys are the fields of the dataclass they are passed to ------------------

# MaskRCNNConfig fields set from the recipe's own keys (model.pyramid, data.image_size ...), not detector's.
_DETECTOR_SET_ELSEWHERE = {
    "backbone",
    "num_classes",
    "pyramid",
    "fpn_channels",
    "norm",
    "min_size",
    "max_size",
    "image_mean",
    "image_std",
}
# ViTBackboneConfig fields the recipe sets from model.* options; what remains is the architecture's size.
_BACKBONE_SET_ELSEWHERE = {
    "img_size",
    "window_size",
    "global_block_indexes",
    "rel_pos",
    "use_abs_pos",
    "layer_scale",
    "drop_path_rate",
    "use_act_checkpoint",
    "extra",
}


def _fields_of(cls: type, skip: set[str] = frozenset()) -> dict[str, tuple[Any, Any]]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        out[f.name] = (hints[f.name], default)
    return out


def detector_fields() -> dict[str, tuple[Any, Any]]:
    return _fields_of(MaskRCNNConfig, _DETECTOR_SET_ELSEWHERE)


def backbone_fields() -> dict[str, tuple[Any, Any]]:
    return _fields_of(ViTBackboneConfig, _BACKBONE_SET_ELSEWHERE)


def synthetic_fields() -> dict[str, tuple[Any, Any]]:
    return _fields_of(SyntheticSpec)


# --- the sections --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    """The detection backbone's options and the Mask R-CNN around it."""

    variant: str = knob("ViT size; custom = model.backbone gives it", choices=(*VIT_VARIANTS, "custom"))
    backbone: dict = knob(
        "size of a custom / random-init ViT (ViTBackboneConfig fields)", free=backbone_fields
    )
    img_size: int = knob("input side; the abs pos embedding is resized to it", min=16)
    window_size: int = knob("side of the attention windows, in tokens", min=1)
    global_blocks: str | list[int] = knob(
        "global-attention blocks: quarter (last of each quarter), none, all, or indexes",
        choices=("quarter", "none", "all"),
    )
    rel_pos: str = knob(
        "relative-position tables: one shared per kind of block, one per block, none", choices=REL_POS_STYLES
    )
    layer_scale: str = knob(
        "BEiT's layer scale: keep it, or fold it into the weights", choices=LAYER_SCALE_MODES
    )
    drop_path: float = knob("stochastic depth rate", min=0.0, below=1.0)
    act_checkpoint: bool = knob("activation checkpointing per block (memory for time)")
    attention: str = knob(
        "attention kernel: auto, PyTorch SDPA, or flex attention", choices=("auto", "sdpa", "flex")
    )
    pos_abs: str = knob("absolute position embedding", choices=("pretrained", "random", "zero", "none"))
    pos_rel: str = knob(
        "relative-position tables' values (auto: BEiT pretrained, others zero)",
        choices=("auto", "pretrained", "zero", "none"),
    )
    pyramid: str = knob("feature pyramid from the ViT", choices=PYRAMIDS)
    fpn_channels: int = knob("FPN width", min=1)
    norm: str = knob("norm in the FPN and heads", choices=NORMS)
    pixel_mean: tuple[float, float, float] = knob("RGB mean, 0..1 scale")
    pixel_std: tuple[float, float, float] = knob("RGB std, 0..1 scale", above=0.0)
    detector: dict = knob("other Mask R-CNN knobs (MaskRCNNConfig fields)", free=detector_fields)


@dataclass(frozen=True)
class Weights:
    init: str = knob("pre-training of the backbone weights", choices=INITS)
    source: str | None = knob("null = the official checkpoint; a path; hf://ORG/REPO[/FILE]")
    seed: int = knob("seed of freshly initialized tensors")


@dataclass(frozen=True)
class Split:
    images: str = knob("image folder")
    annotations: str = knob("COCO instances JSON")


@dataclass(frozen=True)
class Data:
    dataset: str = knob(
        "coco (2017 layout under root), custom (paths below) or synthetic",
        choices=("coco", "custom", "synthetic"),
    )
    root: str | None = knob("datasets root; null = $VITINIT_DATASETS, $DETECTRON2_DATASETS, ./datasets")
    train: Split = knob("training split")
    val: Split = knob("validation split")
    synthetic: dict = knob("generated shapes dataset (SyntheticSpec fields)", free=synthetic_fields)
    image_size: int = knob("LSJ target and test-time longest side", min=16)
    scale_range: tuple[float, float] = knob("LSJ resize range, as fractions of image_size", above=0.0)
    flip: bool = knob("random horizontal flip in training")
    num_workers: int = knob("training data-loader processes", min=0)
    epoch_images: int = knob("images per epoch (converts epochs to iterations)", min=1)


@dataclass(frozen=True)
class Optim:
    lr: float = knob("AdamW base learning rate", above=0.0)
    weight_decay: float = knob("AdamW weight decay (0 for norms, position tables, layer scale)", min=0.0)
    betas: tuple[float, float] = knob("AdamW betas", min=0.0, below=1.0)
    layer_decay: float | None = knob("ViTDet's layer-wise lr decay rate; null = none", above=0.0, max=1.0)
    clip_grad_norm: float | None = knob("gradient-norm clip; null = none", above=0.0)


@dataclass(frozen=True)
class Schedule:
    epochs: float | None = knob("length in epochs (derives iters when iters is null)", above=0.0)
    iters: int | None = knob("length in iterations (derived from epochs when null)", min=1)
    policy: str = knob("lr decay after warmup", choices=("step", "cosine", "constant"))
    milestones: list[float] = knob("step policy: fractions of iters where lr × gamma", min=0.0, max=1.0)
    gamma: float = knob("step policy: the decay factor", above=0.0)
    warmup_iters: int = knob("linear warmup length", min=0)
    warmup_factor: float = knob("lr factor at iteration 0 of the warmup", min=0.0, max=1.0)


@dataclass(frozen=True)
class Train:
    batch_size: int = knob("images per iteration, over all processes", min=1)
    images_per_gpu: int | None = knob(
        "images per forward on each process (gradient accumulation); null = as many as fit", min=1
    )
    amp: str = knob(
        "autocast: auto (bf16 on CUDA, off on CPU), bf16, fp16, none",
        choices=("auto", "bf16", "fp16", "none"),
    )
    grad_compression: str = knob("DDP gradient all-reduce compression", choices=("none", "bf16", "fp16"))
    seed: int = knob("training seed (each rank adds its rank)")
    checkpoint_period: int = knob("iterations between checkpoints (one at the end too); 0 = end only", min=0)
    log_period: int = knob("iterations between metrics.jsonl lines", min=1)
    device: str = knob("where to train", choices=("auto", "cpu", "cuda"))


@dataclass(frozen=True)
class Eval:
    period: int | None = knob("iterations between COCO evaluations; null = only at the end", min=1)
    at_start: bool = knob("also evaluate before the first step")
    max_images: int | None = knob("evaluate on the first N val images only; null = all", min=1)
    batch_size: int = knob("images per process per forward", min=1)
    num_workers: int = knob("evaluation data-loader processes", min=0)


@dataclass(frozen=True)
class Recipe:
    """A checked recipe, one typed section per part of a run."""

    name: str = knob("the recipe's name (its file name)")
    model: Model = knob("backbone and detector")
    weights: Weights = knob("backbone weights")
    data: Data = knob("datasets and augmentation")
    optim: Optim = knob("optimizer")
    schedule: Schedule = knob("iterations and lr schedule")
    train: Train = knob("training loop")
    eval: Eval = knob("evaluation")

    def detector_config(self, backbone: ViTBackboneConfig, num_classes: int) -> MaskRCNNConfig:
        """The Mask R-CNN of this recipe around ``backbone``."""
        m = self.model
        return MaskRCNNConfig(
            backbone=backbone,
            num_classes=num_classes,
            pyramid=m.pyramid,
            fpn_channels=m.fpn_channels,
            norm=m.norm,
            min_size=self.data.image_size,
            max_size=self.data.image_size,
            image_mean=tuple(m.pixel_mean),
            image_std=tuple(m.pixel_std),
            **m.detector,
        )

    def synthetic_spec(self) -> SyntheticSpec:
        return SyntheticSpec(**self.data.synthetic)


# --- checking ------------------------------------------------------------------------------------------


class _Mismatch(Exception):
    pass


def _describe(tp: Any, choices: tuple = ()) -> str:
    """A type in words, as the error messages and ``--list-keys`` show it."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        parts = [_describe(a, choices) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if tp is str and choices:
        return "one of " + ", ".join(map(str, choices))
    if tp in (tuple, list) or origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} {_plural(args[0])}"
        return f"a list of {_plural(args[0]) if args else 'values'}"
    if dataclasses.is_dataclass(tp) or tp is dict or origin is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, _describe(tp))


def _check_value(value: Any, tp: Any) -> None:
    """Raise :class:`_Mismatch` unless ``value`` (plain YAML data) has type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_value(value, a)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    elif tp in (tuple, list) or origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise _Mismatch
        items = args if origin is tuple and args and args[-1] is not Ellipsis else None
        if items is not None and len(value) != len(items):
            raise _Mismatch
        for i, v in enumerate(value):
            _check_value(v, items[i] if items else (args[0] if args else Any))
        return
    elif tp is dict or origin is dict or dataclasses.is_dataclass(tp):
        ok = isinstance(value, dict)
    else:
        ok = isinstance(value, tp) if isinstance(tp, type) else True
    if not ok:
        raise _Mismatch


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
    return []


def _bound(meta: dict) -> str:
    signs = (("min", "≥"), ("above", ">"), ("max", "≤"), ("below", "<"))
    return " and ".join(f"{sign} {meta[k]}" for k, sign in signs if meta[k] is not None)


def _check_field(key: str, value: Any, tp: Any, meta: dict) -> None:
    if value == MISSING:
        raise ConfigError(f"{key} is not set (the recipe must give it; {_describe(tp, meta['choices'])})")
    try:
        _check_value(value, tp)
    except _Mismatch:
        bound = _bound(meta)
        what = _describe(tp, meta["choices"]) + (f" ({bound})" if bound else "")
        raise ConfigError(f"{key} must be {what}, got {value!r}") from None
    if isinstance(value, str) and meta["choices"] and value not in meta["choices"]:
        hint = difflib.get_close_matches(value, [str(c) for c in meta["choices"]], n=1)
        also = " or a list of integers" if tp is not str else ""
        raise ConfigError(
            f"{key} must be one of {', '.join(map(str, meta['choices']))}{also}, got {value!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    bad = [v for v in _numbers(value) if not _in_range(v, meta)]
    if bad:
        raise ConfigError(f"{key} must be {_bound(meta)}, got {value!r}")


def _in_range(v: float, meta: dict) -> bool:
    return not (
        (meta["min"] is not None and v < meta["min"])
        or (meta["max"] is not None and v > meta["max"])
        or (meta["above"] is not None and v <= meta["above"])
        or (meta["below"] is not None and v >= meta["below"])
    )


def _unknown(key: str, name: str, known: list[str]) -> ConfigError:
    hint = difflib.get_close_matches(name, known, n=1)
    where = f"{key} takes" if key else "a recipe has"
    return ConfigError(
        f"unknown key {key + '.' if key else ''}{name}"
        + (f" (did you mean {hint[0]}?)" if hint else "")
        + f"; {where} {', '.join(known)}"
    )


_NO_BOUNDS = dict(help="", choices=(), min=None, max=None, above=None, below=None, free=None)


def _check_mapping(key: str, tree: Any, cls: type) -> None:
    if not isinstance(tree, dict):
        raise ConfigError(f"{key or 'a recipe'} must be a mapping, got {tree!r}")
    hints = typing.get_type_hints(cls)
    specs = {f.name: f for f in dataclasses.fields(cls)}
    for name in tree:
        if name not in specs:
            raise _unknown(key, str(name), list(specs))
    for name, f in specs.items():
        sub = f"{key}.{name}" if key else name
        if name not in tree:
            raise ConfigError(
                f"the recipe lacks {sub} ({f.metadata['help']}); start it from a bundled recipe "
                "with _base_: mae-vitb.yaml"
            )
        value, tp = tree[name], hints[name]
        if dataclasses.is_dataclass(tp):
            _check_mapping(sub, value, tp)
        elif f.metadata["free"] is not None:
            _check_free(sub, value, f.metadata["free"]())
        else:
            _check_field(sub, value, tp, f.metadata)


def _check_free(key: str, tree: Any, known: dict[str, tuple[Any, Any]]) -> None:
    if tree is None:
        return
    if not isinstance(tree, dict):
        raise ConfigError(f"{key} must be a mapping, got {tree!r}")
    for name, value in tree.items():
        if name not in known:
            raise _unknown(key, str(name), list(known))
        _check_field(f"{key}.{name}", value, known[name][0], _NO_BOUNDS)


def _build(cls: type, tree: dict) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        value = tree[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            value = _build(hints[f.name], value)
        elif f.metadata["free"] is not None:
            value = dict(value or {})
        kwargs[f.name] = value
    return cls(**kwargs)


def check_recipe(tree: dict) -> None:
    """Raise :class:`ConfigError` (one line, naming the key and what it accepts) unless ``tree`` — a merged,
    resolved recipe as plain data — fits the schema. ``schedule.iters`` may still be null here."""
    _check_mapping("", tree, Recipe)
    recipe = _build(Recipe, tree)
    if recipe.model.backbone and recipe.weights.init != "random":
        raise ConfigError(
            f"model.backbone sizes a random-init ViT; {recipe.weights.init} weights bring their own size "
            "(drop model.backbone or use weights.init=random)"
        )
    if recipe.model.variant == "custom" and recipe.weights.init == "random":
        missing = [k for k in ("embed_dim", "depth", "num_heads") if k not in recipe.model.backbone]
        if missing:
            raise ConfigError(f"model.variant=custom needs model.backbone.{missing[0]}")
    # The dataclasses' own checks (five anchor sizes, a known norm ...), on a stand-in backbone.
    try:
        recipe.detector_config(ViTBackboneConfig(), num_classes=1)
    except ConfigError as e:
        raise ConfigError(f"model.detector: {e}") from None
    recipe.synthetic_spec()


def parse_recipe(tree: dict) -> Recipe:
    """The typed view of a resolved recipe (``vitinit.bench.resolve``'s output or a run's ``recipe.yaml``)."""
    check_recipe(tree)
    recipe = _build(Recipe, tree)
    if recipe.schedule.iters is None:
        raise ConfigError("schedule.iters is not derived yet; load recipes with vitinit.recipes.load_recipe")
    return recipe


@dataclass(frozen=True)
class Knob:
    """One line of ``vitinit bench --list-keys``."""

    key: str
    type: str
    value: Any
    help: str


def list_knobs(tree: dict) -> list[Knob]:
    """Every key of the schema, with its type and its value in ``tree`` (a resolved recipe); the open
    sub-trees list every field of their dataclass, with the dataclass default where the recipe sets none."""
    out: list[Knob] = []

    def walk(prefix: str, cls: type, sub: dict) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key, tp, value = f"{prefix}{f.name}", hints[f.name], (sub or {}).get(f.name)
            if dataclasses.is_dataclass(tp):
                walk(key + ".", tp, value)
            elif f.metadata["free"] is not None:
                owner = f.metadata["help"].split("(")[-1].split()[0]  # "... (MaskRCNNConfig fields)"
                for name, (ftp, default) in f.metadata["free"]().items():
                    note = f"{owner} field" + ("" if name in (value or {}) else ", its default")
                    out.append(Knob(f"{key}.{name}", _describe(ftp), (value or {}).get(name, default), note))
            else:
                meta = f.metadata
                bound = _bound(meta)
                out.append(
                    Knob(
                        key,
                        _describe(tp, meta["choices"]) + (f", {bound}" if bound else ""),
                        value,
                        meta["help"],
                    )
                )

    walk("", Recipe, tree)
    return out
