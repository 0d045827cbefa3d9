"""COCO-format instance-segmentation datasets (an image folder + an instances JSON), read with pycocotools.

Samples come out the way torchvision's detection models and v2 transforms want them:
``(tv_tensors.Image uint8 (3, H, W), {"boxes": BoundingBoxes XYXY, "masks": Mask (N, H, W),
"labels": int64 (N), "image_id": int})``. Labels are contiguous 1..K (0 is torchvision's background);
:attr:`CocoDetection.label_to_category` maps them back to the JSON's category ids for evaluation.

Crowd regions (``iscrowd=1``) are left out of training targets, as detectron2 does; evaluation reads the JSON
itself, where pycocotools treats them as ignore regions. Defects real COCO-format files contain (degenerate
polygons, boxes poking out of the image, images without annotations) are repaired or skipped as detectron2
does, and counted in one log line (:mod:`vitinit.data.coco_checks`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision import tv_tensors

from vitinit.data.coco_checks import check_coco
from vitinit.data.transforms import Polygons
from vitinit.errors import DatasetError
from vitinit.io.files import read_json

log = logging.getLogger(__name__)

COCO_2017 = {
    "train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
}


def datasets_root(root: str | Path | None = None) -> Path:
    """The datasets root: the argument, else ``$VITINIT_DATASETS``, ``$DETECTRON2_DATASETS``, ``./datasets``.

    ``$DETECTRON2_DATASETS`` is honoured so an existing detectron2 setup works unchanged (same layout).
    """
    if root is not None:
        return Path(root).expanduser()
    for var in ("VITINIT_DATASETS", "DETECTRON2_DATASETS"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    return Path("datasets")


@dataclass(frozen=True)
class CocoSplit:
    images: Path
    annotations: Path


def coco2017_split(split: str, root: str | Path | None = None) -> CocoSplit:
    """``ROOT/coco/{train,val}2017`` and ``ROOT/coco/annotations/instances_{split}2017.json``."""
    if split not in COCO_2017:
        raise DatasetError(f"unknown COCO 2017 split {split!r}; choose one of {', '.join(COCO_2017)}")
    base = datasets_root(root)
    images, annotations = COCO_2017[split]
    return CocoSplit(base / images, base / annotations)


def load_coco_json(path: str | Path) -> COCO:
    """pycocotools' index of an instances JSON, with one-line errors for a missing or malformed file."""
    path = Path(path)
    data = read_json(
        path, error=DatasetError, what="annotation file (a COCO instances JSON)", max_bytes=None
    )
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise DatasetError(
            f"{path} is not a COCO instances file: it needs 'images', 'annotations' and 'categories'"
        )
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        try:
            coco.createIndex()
        except (KeyError, TypeError) as e:
            raise DatasetError(f"{path} has a malformed entry (missing field {e})") from None
    return coco


class CocoDetection(torch.utils.data.Dataset):
    """Instance segmentation samples from a COCO-format folder + JSON.

    Args:
        images: folder the JSON's ``file_name`` entries are relative to.
        annotations: the instances JSON.
        transforms: a v2 transform applied to ``(image, target)``.
        train: drop images without any usable annotation (as detectron2's training loader does).
        check_files: verify that every image file exists up front, so a missing file fails in seconds,
            not hours into training.
        with_targets: False yields only ``{"image_id"}`` per image (evaluation, which reads the JSON).
    """

    def __init__(
        self,
        images: str | Path,
        annotations: str | Path,
        *,
        transforms: Callable | None = None,
        train: bool = False,
        check_files: bool = True,
        with_targets: bool = True,
    ) -> None:
        self.image_dir = Path(images)
        self.annotation_file = Path(annotations)
        self.transforms = transforms
        # Evaluation reads the ground truth from the JSON; decoding every val mask per image is wasted work.
        self.with_targets = with_targets
        if not self.image_dir.is_dir():
            raise DatasetError(f"image folder {self.image_dir} does not exist")
        self.coco = load_coco_json(self.annotation_file)
        cat_ids = sorted(self.coco.getCatIds())
        if not cat_ids:
            raise DatasetError(f"{self.annotation_file} defines no categories")
        self.label_to_category = {i + 1: c for i, c in enumerate(cat_ids)}
        self.category_to_label = {c: i for i, c in self.label_to_category.items()}
        self.class_names = [self.coco.cats[c]["name"] for c in cat_ids]
        # Every entry the loader and the evaluator read, checked before the first iteration; what detectron2
        # trains through is repaired here (self.annotations) and counted.
        cats = set(self.category_to_label)
        cleanup = check_coco(self.coco.dataset, self.annotation_file, cats, train=train)
        self.annotations = cleanup.annotations
        ids = sorted(self.coco.imgs)
        if train:
            ids = [i for i in ids if self.annotations[i]]
            cleanup.images_skipped = len(self.coco.imgs) - len(ids)
        if with_targets and (summary := cleanup.summary(self.annotation_file)):
            log.warning(summary)
        if not ids:
            raise DatasetError(
                f"{self.annotation_file} has no {'annotated ' if train else ''}images; nothing to "
                f"{'train' if train else 'evaluate'} on"
            )
        self.ids = ids
        if check_files:
            missing = [
                self.coco.imgs[i]["file_name"]
                for i in ids
                if not (self.image_dir / self.coco.imgs[i]["file_name"]).is_file()
            ]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise DatasetError(
                    f"image {self.image_dir / missing[0]} listed in {self.annotation_file} is missing{more}"
                )

    @property
    def num_classes(self) -> int:
        return len(self.label_to_category)

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, image_id: int) -> tv_tensors.Image:
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as im:
                array = np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise DatasetError(f"image {path} is missing") from None
        except (UnidentifiedImageError, OSError) as e:
            raise DatasetError(f"image {path} cannot be read: {e}") from None
        if array.shape[:2] != (info["height"], info["width"]):
            raise DatasetError(
                f"image {path} is {array.shape[1]}x{array.shape[0]} "
                f"but the JSON says {info['width']}x{info['height']}"
            )
        return tv_tensors.Image(torch.from_numpy(array.copy()).permute(2, 0, 1))

    def load_target(self, image_id: int) -> dict[str, Any]:
        info = self.coco.imgs[image_id]
        h, w = info["height"], info["width"]
        anns = self.annotations[image_id]  # checked and repaired, crowd regions left out
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # XYWH → XYXY
        masks = (
            np.stack([_ann_to_mask(a["segmentation"], h, w) for a in anns])
            if anns
            else np.zeros((0, h, w), np.uint8)
        )
        # Polygon vertices move with the image, so training can recompute boxes from them (detectron2's LSJ).
        verts = [(i, k, p) for i, a in enumerate(anns) if isinstance(a["segmentation"], list)
                 for k, p in enumerate(a["segmentation"])]
        points = [np.asarray(p, np.float32).reshape(-1, 2) for _, _, p in verts]
        sizes = [len(p) for p in points]
        instance = np.repeat([i for i, _, _ in verts], sizes).astype(np.int64)
        part = np.repeat([k for _, k, _ in verts], sizes).astype(np.int64)
        return {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "labels": torch.tensor(
                [self.category_to_label[a["category_id"]] for a in anns], dtype=torch.int64
            ),
            "polygons": Polygons(
                torch.from_numpy(np.concatenate(points) if points else np.zeros((0, 2), np.float32)),
                canvas_size=(h, w),
            ),
            "polygon_instance": torch.from_numpy(instance),
            "polygon_part": torch.from_numpy(part),
            "image_id": image_id,
        }

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.ids[index]
        target = self.load_target(image_id) if self.with_targets else {"image_id": image_id}
        image = self.load_image(image_id)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def _ann_to_mask(segmentation: Any, h: int, w: int) -> np.ndarray:
    """Polygons, uncompressed RLE or compressed RLE → (H, W) uint8, as pycocotools' ``annToMask``."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, h, w)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Detection batches stay lists: images differ in size until the model pads them."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
