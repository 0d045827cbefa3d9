"""Box deltas: encoding, float32 decoding and the regression loss shared by the RPN and the RoI box head.

The parametrization (dx, dy, dw, dh) with weights and the dw/dh clamp at log(1000 / 16) is the same in
torchvision's ``BoxCoder`` and detectron2's ``Box2BoxTransform``; we use torchvision's. Decoding always runs
in float32: torchvision decodes in the deltas' dtype, and bf16 deltas would put every box on a 2–4 px grid at
1024 px (detectron2 casts to float32 for the same reason).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder


def decode(coder: BoxCoder, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4k) deltas applied to (N, 4) reference boxes → (N, k, 4) boxes, in float32."""
    # The class count from the deltas' width, so that no boxes (no proposals) decode to (0, k, 4).
    return coder.decode_single(deltas.float(), boxes.float()).reshape(len(boxes), deltas.shape[-1] // 4, 4)


def box_regression_loss(pred: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Summed L1 (``beta == 0``, detectron2's default) or smooth-L1 (torchvision's β = 1/9) loss, in float32.

    The caller normalises: detectron2 divides the RPN's by 256 × images and the RoI head's by the number of
    sampled RoIs (not by the number of foreground boxes).
    """
    pred, target = pred.float(), target.float()
    if beta == 0:
        return F.l1_loss(pred, target, reduction="sum")
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")
