"""The detector's input/output transform: torchvision's, with ViTDet's square padding and detectron2's paste.

Input: normalize, resize the longer side to ``max_size`` at test time (the data pipeline's LSJ chose the
scale in training), pad bottom-right with zeros to ``square_size``². Output: boxes scaled back to the
original image and masks pasted on their float boxes (:func:`vitinit.modeling.mask_ops.paste_masks_in_image`).
"""

from __future__ import annotations

import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import clip_boxes_to_image

from vitinit.modeling.mask_ops import paste_masks_in_image


class SquarePadTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform, padding each batch (bottom-right) to at least a fixed square.

    In training it does not resize: the data pipeline's large-scale jitter already chose each image's scale,
    and resizing to ``min_size`` would undo it (detectron2 likewise only pads in the model). With
    ``square_size=None`` batches are padded to their largest image (rounded up to ``size_divisible``).
    """

    def __init__(self, *args, square_size: int | None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.square_size = square_size or 0

    def resize(self, image: torch.Tensor, target: dict | None = None) -> tuple[torch.Tensor, dict | None]:
        if self.training:
            return image, target
        return super().resize(image, target)

    def batch_images(self, images: list[torch.Tensor], size_divisible: int = 32) -> torch.Tensor:
        h = max(self.square_size, *(img.shape[-2] for img in images))
        w = max(self.square_size, *(img.shape[-1] for img in images))
        h, w = (-(-h // size_divisible) * size_divisible, -(-w // size_divisible) * size_divisible)
        batch = images[0].new_zeros((len(images), images[0].shape[0], h, w))
        for img, slot in zip(images, batch, strict=True):
            slot[:, : img.shape[-2], : img.shape[-1]].copy_(img)
        return batch

    def postprocess(
        self,
        result: list[dict[str, torch.Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        """Boxes back in the original image's frame, masks pasted there (detectron2's detector_postprocess):
        boxes are scaled, clipped to the original image, and those left empty are dropped with their scores,
        labels and masks (a box under a pixel wide at 1024 px can round to nothing at the original size)."""
        if self.training:
            return result
        sizes = zip(image_shapes, original_image_sizes, strict=True)
        for i, (pred, (size, original)) in enumerate(zip(result, sizes, strict=True)):
            boxes = clip_boxes_to_image(resize_boxes(pred["boxes"], size, original), original)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            pred = result[i] = {k: v[keep] if isinstance(v, torch.Tensor) else v for k, v in pred.items()}
            pred["boxes"] = boxes[keep]
            if "masks" in pred:
                pred["masks"] = paste_masks_in_image(pred["masks"], pred["boxes"], original)
        return result
