"""The recipe's schema: every key, its type, its allowed values, checked before anything runs.

A recipe is merged YAML (see :mod:`vitinit.recipes`); this module says what a merged recipe may hold and turns
it into typed sections, as detectron2's LazyConfig trees are checked by the constructors they feed, but up
front: ``vitinit bench --dry-run`` fails in a second on a typo, a wrong type or a bad value, with one line
naming the key and what it accepts. The free-form sub-trees are checked against the dataclasses they feed:
``model.detector`` against :class:`~vitinit.modeling.mask_rcnn.MaskRCNNConfig`, ``model.backbone`` against
the size fields of :class:`~vitinit.modeling.vit.ViTBackboneConfig` and ``data.synthetic`` against
:class:`~vitinit.data.synthetic.SyntheticSpec` (their fields, read at run time, so new fields are accepted).

The checks themselves are in :mod:`vitinit.recipes.check`.

Example:
    >>> recipe = parse_recipe(resolve("demo"))  # doctest: +SKIP
    >>> recipe.optim.lr, recipe.schedule.iters  # doctest: +SKIP
    (0.001, 200)
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from vitinit.data.synthetic import SyntheticSpec
from vitinit.errors import ConfigError
from vitinit.families import FAMILIES
from vitinit.modeling.mask_rcnn import IMAGENET_MEAN, IMAGENET_STD, NORMS, MaskRCNNConfig
from vitinit.modeling.pyramid import PYRAMIDS
from vitinit.modeling.vit import REL_POS_STYLES, ViTBackboneConfig
from vitinit.normalize.bounds import MAX_IMG_SIZE, MAX_WINDOW, MIN_IMG_SIZE
from vitinit.normalize.options import LAYER_SCALE_MODES
from vitinit.variants import VIT_VARIANTS

INITS = FAMILIES
MISSING = "???"  # OmegaConf's mark of a value a child recipe must set
# Seeds fit every generator a run seeds (numpy's take < 2**32) with room for the rank each process adds.
MAX_SEED = 2**31 - 1
MAX_BATCH = 1 << 16  # images per iteration; the paper's 64, the largest published ViTDet runs 256


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
    # The architecture the weights bring (ViTSpec's): never a recipe knob.
    "rope",
    "mlp",
    "mlp_norm",
    "pre_norm",
    "qkv_bias",
    "patch_bias",
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
        "a random-init ViT's size; with weights only patch_size (resampled) and a custom size's num_heads"
        " (ViTBackboneConfig fields)",
        free=backbone_fields,
    )
    img_size: int = knob(
        "input side; the abs pos embedding is resized to it", min=MIN_IMG_SIZE, max=MAX_IMG_SIZE
    )
    window_size: int = knob("side of the attention windows, in tokens", min=1, max=MAX_WINDOW)
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
    fpn_channels: int = knob("FPN width", min=1, max=4096)
    norm: str = knob("norm in the FPN and heads", choices=NORMS)
    pixel_mean: tuple[float, float, float] | None = knob(
        "RGB mean, 0..1 scale; null = the mean the weights record (their source's), else ImageNet's"
    )
    pixel_std: tuple[float, float, float] | None = knob(
        "RGB std, 0..1 scale; null = the std the weights record (their source's), else ImageNet's", above=0.0
    )
    detector: dict = knob("other Mask R-CNN knobs (MaskRCNNConfig fields)", free=detector_fields)


@dataclass(frozen=True)
class Weights:
    init: str = knob("pre-training of the backbone weights", choices=INITS)
    source: str | None = knob("null = the official checkpoint; a path; hf://ORG/REPO[/FILE]")
    seed: int = knob("seed of freshly initialized tensors", min=0, max=MAX_SEED)


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
    image_size: int = knob("LSJ target and test-time longest side", min=MIN_IMG_SIZE, max=MAX_IMG_SIZE)
    scale_range: tuple[float, float] = knob("LSJ resize range, as fractions of image_size", above=0.0)
    flip: bool = knob("random horizontal flip in training")
    num_workers: int = knob("training data-loader processes", min=0)
    epoch_images: int = knob("images per epoch (converts epochs to iterations)", min=1)


@dataclass(frozen=True)
class Optim:
    optimizer: str = knob("adamw (the paper) or sgd (detectron2's R-101 baseline)", choices=("adamw", "sgd"))
    lr: float = knob("base learning rate", above=0.0)
    weight_decay: float = knob("weight decay (0 for norms, position tables, layer scale)", min=0.0)
    betas: tuple[float, float] = knob("AdamW betas", min=0.0, below=1.0)
    momentum: float = knob("SGD momentum", min=0.0, below=1.0)
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
    batch_size: int = knob("images per iteration, over all processes", min=1, max=MAX_BATCH)
    images_per_gpu: int | None = knob(
        "images per forward on each process (gradient accumulation); null = as many as fit", min=1
    )
    amp: str = knob(
        "autocast: auto (bf16 on CUDA, off on CPU), bf16, fp16, none",
        choices=("auto", "bf16", "fp16", "none"),
    )
    grad_compression: str = knob("DDP gradient all-reduce compression", choices=("none", "bf16", "fp16"))
    seed: int = knob("training seed (each rank adds its rank)", min=0, max=MAX_SEED)
    checkpoint_period: int = knob("iterations between checkpoints (one at the end too); 0 = end only", min=0)
    log_period: int = knob("iterations between metrics.jsonl lines", min=1)
    device: str = knob("where to train", choices=("auto", "cpu", "cuda"))
    loggers: list[str] = knob(
        "trackers beside metrics.jsonl: tensorboard (when installed), wandb (pip install 'vitinit[wandb]')",
        choices=("tensorboard", "wandb"),
    )


@dataclass(frozen=True)
class Eval:
    period: int | None = knob("iterations between COCO evaluations; null = only at the end", min=1)
    at_start: bool = knob("also evaluate before the first step")
    max_images: int | None = knob("evaluate on the first N val images only; null = all", min=1)
    batch_size: int = knob("images per process per forward", min=1)
    num_workers: int = knob("evaluation data-loader processes", min=0)
    amp: str = knob(
        "autocast in evaluation: none (float32, as detectron2's do_test) or bf16 (faster, scores move)",
        choices=("none", "bf16"),
    )


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

    def input_norm(self, recorded: dict | None = None) -> tuple[tuple, tuple, str]:
        """(mean, std, which) the detector normalizes images with: the recipe's ``model.pixel_mean/std``
        where set, else what the weights record of their source (``Provenance.input_norm``), else
        ImageNet's."""
        m, recorded = self.model, recorded or {}
        if m.pixel_mean is not None and m.pixel_std is not None:
            return tuple(m.pixel_mean), tuple(m.pixel_std), "the recipe's model.pixel_mean/std"
        if m.pixel_mean is not None or m.pixel_std is not None:
            raise ConfigError("set both model.pixel_mean and model.pixel_std, or neither")
        if recorded.get("mean") and recorded.get("std"):
            return tuple(recorded["mean"]), tuple(recorded["std"]), f"the weights' ({recorded.get('from')})"
        return IMAGENET_MEAN, IMAGENET_STD, "ImageNet's (the weights record none)"

    def detector_config(
        self, backbone: ViTBackboneConfig, num_classes: int, input_norm: dict | None = None
    ) -> MaskRCNNConfig:
        """The Mask R-CNN of this recipe around ``backbone``; ``input_norm``: the weights' recorded
        normalisation (see :meth:`input_norm`)."""
        m = self.model
        mean, std, _ = self.input_norm(input_norm)
        return MaskRCNNConfig(
            backbone=backbone,
            num_classes=num_classes,
            pyramid=m.pyramid,
            fpn_channels=m.fpn_channels,
            norm=m.norm,
            min_size=self.data.image_size,
            max_size=self.data.image_size,
            image_mean=mean,
            image_std=std,
            **m.detector,
        )

    def synthetic_spec(self) -> SyntheticSpec:
        return SyntheticSpec(**self.data.synthetic)

    def to_dict(self) -> dict[str, Any]:
        """The plain data again (what ``recipe.yaml`` holds), for YAML, JSON and overrides."""
        return dataclasses.asdict(self)
