"""Mask targets and mask paste on float boxes, with detectron2's semantics (written on torch/torchvision ops).

- Training targets (:func:`crop_mask_targets`): each instance bitmap is cropped to its proposal box and
  resized to M×M with aligned RoIAlign, then binarized at 0.5 — detectron2's ``BitMasks.crop_and_resize``.
- Test-time paste (:func:`paste_masks_in_image`): each M×M mask is sampled bilinearly at the centres of the
  image pixels its *float* box covers (``grid_sample``, ``align_corners=False``), as detectron2's
  ``paste_masks_in_image``. torchvision's legacy paste rounds the box to integers, adds one pixel and
  resizes the mask per box, which shifts and blurs masks by up to a pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


def crop_mask_targets(
    masks: torch.Tensor, boxes: torch.Tensor, matched: torch.Tensor, size: int
) -> torch.Tensor:
    """(R, size, size) float 0/1 targets: ``masks[matched[r]]`` (G, H, W) cropped to ``boxes[r]``."""
    if len(boxes) == 0:
        return boxes.new_zeros((0, size, size))
    rois = torch.cat([matched[:, None].to(torch.float32), boxes.float()], dim=1)
    crops = roi_align(masks[:, None].float(), rois, (size, size), spatial_scale=1.0, sampling_ratio=0,
                      aligned=True)
    return (crops[:, 0] >= 0.5).float()


def paste_masks_in_image(
    masks: torch.Tensor, boxes: torch.Tensor, image_shape: tuple[int, int]
) -> torch.Tensor:
    """(N, 1, H, W) float32 masks: each (M, M) mask of ``masks`` (N, 1, M, M) pasted into its box.

    Soft values (probabilities stay probabilities): the caller thresholds, e.g. at 0.5 as detectron2.
    Each mask is sampled only over the pixels around its box (detectron2's CPU path does the same), so the
    cost is the boxes' area, not N × H × W.
    """
    h, w = image_shape
    out = torch.zeros((len(masks), 1, h, w), dtype=torch.float32, device=masks.device)
    boxes = boxes.float()
    for i, (mask, box) in enumerate(zip(masks.float(), boxes, strict=True)):
        x0, y0, x1, y1 = box.tolist()
        if not (x1 > x0 and y1 > y0):
            continue
        # One pixel of margin, as detectron2: beyond the box the bilinear value is at most half the edge
        # cell's, under 0.5, so the thresholded mask is the same as pasting over the whole image.
        xa, ya = max(int(x0) - 1, 0), max(int(y0) - 1, 0)
        xb, yb = min(int(x1) + 2, w), min(int(y1) + 2, h)
        if xb <= xa or yb <= ya:
            continue
        gx = (torch.arange(xa, xb, dtype=torch.float32, device=masks.device) + 0.5 - x0) / (x1 - x0) * 2 - 1
        gy = (torch.arange(ya, yb, dtype=torch.float32, device=masks.device) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (yb - ya, xb - xa, 2) as (x, y)
        out[i, 0, ya:yb, xa:xb] = F.grid_sample(mask[None], grid[None], align_corners=False)[0, 0]
    return out
