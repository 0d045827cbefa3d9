"""The datasets of a recipe: where its train and val splits are (COCO, a custom COCO-format pair, or the
embedded synthetic set, generated once by the first process) and their training / evaluation transforms."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitinit.data.coco import CocoDetection, coco2017_split, datasets_root
from vitinit.data.transforms import lsj_transform, test_transform
from vitinit.engine import distributed as du
from vitinit.errors import ConfigError, DatasetError
from vitinit.recipes import RecipeLike, as_recipe
from vitinit.recipes.schema import Recipe, Split


@dataclass
class Datasets:
    train: CocoDetection
    val: CocoDetection


def split_paths(recipe: Recipe) -> tuple[tuple[Path, Path], tuple[Path, Path]]:
    """(images, annotations) of the train and the val split of ``recipe.data``."""
    d = recipe.data
    if d.dataset == "synthetic":
        from vitinit.data.synthetic import synthetic_coco

        spec = recipe.synthetic_spec()
        # Generated once, by the first process; the others wait and read the same cache.
        splits = synthetic_coco(spec) if du.is_main_process() else None
        du.barrier()
        splits = splits or synthetic_coco(spec)
        train = (splits.train_images, splits.train_annotations)
        val = (splits.val_images, splits.val_annotations)
    elif d.dataset == "coco":
        base = datasets_root(d.root)
        train, val = _under(base, d.train), _under(base, d.val)
        if not train[1].is_file() and d.train.images == "coco/train2017":
            hint = coco2017_split("train", d.root)
            raise DatasetError(
                f"COCO 2017 not found: {hint.annotations} is missing; put COCO under "
                f"{base}/coco or set $VITINIT_DATASETS (or data.root=...)"
            )
    elif d.dataset == "custom":
        train, val = _under(Path(), d.train), _under(Path(), d.val)
    else:
        raise ConfigError(f"data.dataset must be coco, custom or synthetic, got {d.dataset!r}")
    return train, val


def _under(base: Path, split: Split) -> tuple[Path, Path]:
    return base / split.images, base / split.annotations


def build_val_dataset(recipe: Recipe) -> CocoDetection:
    """The val split alone, as evaluation reads it (``vitinit eval``)."""
    return CocoDetection(*split_paths(recipe)[1], transforms=test_transform(), with_targets=False)


def build_datasets(recipe: RecipeLike) -> Datasets:
    recipe = as_recipe(recipe)
    d = recipe.data
    train_tf = lsj_transform(d.image_size, scale_range=d.scale_range, flip=d.flip)
    train, val = split_paths(recipe)
    ds = Datasets(
        train=CocoDetection(*train, transforms=train_tf, train=True),
        val=CocoDetection(*val, transforms=test_transform(), with_targets=False),
    )
    if ds.train.label_to_category != ds.val.label_to_category:
        raise DatasetError("train and val annotation files define different categories")
    return ds
