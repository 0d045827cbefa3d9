"""Pictures of what the data pipeline feeds the model: training images before and after large-scale jitter.

The first thing to check when a new dataset gives bad AP (detectron2's ``tools/visualize_data.py`` and mmdet's
``browse_dataset`` serve the same purpose): are the boxes on the objects, do the masks follow them after the
crop, are the class names right, how small do objects get at scale 0.1? Each picture shows the image with its
annotations as stored (left) and one LSJ sample of it (right), placed on the size × size canvas the model pads
every batch to (grey = padding, which the model fills with zeros after normalization).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vitinit.analysis.gallery import PALETTE, Instances, draw, save_png, side_by_side
from vitinit.data.coco import CocoDetection

PAD_GREY = 128


def target_instances(target: dict, class_names: Sequence[str]) -> Instances:
    """A dataset target (contiguous labels 1..K, as :class:`CocoDetection` yields) as something to draw."""
    labels = [int(v) for v in target["labels"]]
    masks = target.get("masks")
    return Instances(
        boxes=torch.as_tensor(target["boxes"]).float().reshape(-1, 4),
        masks=None if masks is None else torch.as_tensor(masks).bool(),
        labels=[class_names[v - 1] for v in labels],
        colors=[PALETTE[(v - 1) % len(PALETTE)] for v in labels],  # the gallery's colour for the category
    )


def on_canvas(image: torch.Tensor, inst: Instances, size: int) -> tuple[torch.Tensor, Instances]:
    """``image`` (3, h, w) and its masks at the top-left of a grey ``size`` × ``size`` canvas, as the model
    pads every batch (bottom-right)."""
    h, w = image.shape[-2:]
    canvas = torch.full((3, max(size, h), max(size, w)), PAD_GREY, dtype=torch.uint8)
    canvas[:, :h, :w] = image
    if inst.masks is not None:
        masks = torch.zeros((len(inst.masks), *canvas.shape[-2:]), dtype=torch.bool)
        masks[:, :h, :w] = inst.masks
        inst = Instances(inst.boxes, masks, inst.labels, inst.colors)
    return canvas, inst


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    if image.dtype == torch.uint8:
        return image
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def sample_pictures(
    dataset: CocoDetection, indices: Sequence[int], *, size: int, seed: int = 0
) -> list[tuple[int, torch.Tensor]]:
    """``(image_id, picture)`` for each dataset index: stored annotations | one transformed sample.

    ``dataset`` is the training set with its transforms (LSJ); the random draws are seeded by ``seed`` and
    the index, so a picture can be reproduced.
    """
    out = []
    for index in indices:
        image_id = dataset.ids[index]
        raw, raw_target = dataset.load_image(image_id), dataset.load_target(image_id)
        torch.manual_seed(seed + index)
        image, target = dataset[index]
        crop = to_uint8(torch.as_tensor(image))
        h, w = crop.shape[-2:]
        left = draw(torch.as_tensor(raw), target_instances(raw_target, dataset.class_names))
        right = draw(*on_canvas(crop, target_instances(target, dataset.class_names), size))
        titles = [
            f"image {image_id}: {raw.shape[-1]}×{raw.shape[-2]}, {len(raw_target['labels'])} objects",
            f"LSJ sample: {w}×{h} on {size}², {len(target['labels'])} objects",
        ]
        out.append((image_id, side_by_side([left, right], titles)))
    return out


def write_samples(
    dataset: CocoDetection, out_dir: str | Path, *, n: int, size: int, seed: int = 0
) -> list[Path]:
    """The first ``n`` training samples as ``out_dir/train_<image id>.png``; returns the paths.

    Example:
        >>> write_samples(build_datasets(recipe).train, "data-view", n=8, size=1024)  # doctest: +SKIP
    """
    pictures = sample_pictures(dataset, range(min(n, len(dataset))), size=size, seed=seed)
    return [save_png(pic, Path(out_dir) / f"train_{image_id:06d}.png") for image_id, pic in pictures]
