"""The region proposal network, written on torchvision's ops with detectron2's semantics (``RPN``).

Per image: anchors are matched to the ground truth (IoU ≥ 0.7 positive, < 0.3 negative, plus each box's best
anchors), 256 of them sampled at most half positive; the losses are binary cross-entropy on objectness and
L1 on the box deltas of positives, both summed and divided by 256 × images (detectron2's normalisation;
torchvision divides objectness by the number sampled and uses smooth-L1 β = 1/9). Proposals: the top
``pre_nms_top_n`` per level, decoded in float32, clipped, NMS per level, the top ``post_nms_top_n`` per image.
Non-finite proposals are dropped at inference and raise in training (detectron2: training has diverged).

The head's convolutions run under the caller's autocast; only decoding and the losses are float32.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

from vitinit.errors import TrainingError
from vitinit.modeling.anchors import CellAnchorGenerator
from vitinit.modeling.box_regression import box_regression_loss, decode


def flatten_head_outputs(
    logits: list[torch.Tensor], deltas: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per level, (N, A, H, W) / (N, 4A, H, W) → (N, H·W·A) / (N, H·W·A, 4): the anchors' order."""
    flat_logits = [x.permute(0, 2, 3, 1).flatten(1) for x in logits]
    flat_deltas = []
    for d in deltas:
        n, c, h, w = d.shape
        flat_deltas.append(d.view(n, c // 4, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
    return flat_logits, flat_deltas


class RPN(nn.Module):
    """``rpn(images, features, targets) → (proposals, losses)``, the interface of torchvision's detectors."""

    def __init__(
        self,
        anchor_generator: CellAnchorGenerator,
        head: RPNHead,
        *,
        pre_nms_top_n: dict[str, int],
        post_nms_top_n: dict[str, int],
        nms_thresh: float = 0.7,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        smooth_l1_beta: float = 0.0,
    ) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n = dict(pre_nms_top_n)
        self.post_nms_top_n = dict(post_nms_top_n)
        self.nms_thresh = nms_thresh
        self.batch_size_per_image = batch_size_per_image
        self.smooth_l1_beta = smooth_l1_beta

    def forward(
        self, images: ImageList, features: dict[str, torch.Tensor], targets: list[dict] | None = None
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        maps = list(features.values())
        anchors = self.anchor_generator(maps)
        logits, deltas = flatten_head_outputs(*self.head(maps))
        proposals = self.find_top_proposals(anchors, logits, deltas, images.image_sizes)
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("the RPN needs targets in training")
            losses = self.losses(torch.cat(anchors), torch.cat(logits, 1), torch.cat(deltas, 1), targets)
        return proposals, losses

    @torch.no_grad()
    def find_top_proposals(
        self,
        anchors: list[torch.Tensor],
        logits: list[torch.Tensor],
        deltas: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[torch.Tensor]:
        """Per image, (≤ post_nms_top_n, 4) float32 proposals, best first (detectron2's selection)."""
        mode = "training" if self.training else "testing"
        pre, post = self.pre_nms_top_n[mode], self.post_nms_top_n[mode]
        boxes, scores, level_ids = [], [], []
        for level, (a, lg, d) in enumerate(zip(anchors, logits, deltas, strict=True)):
            k = min(pre, lg.shape[1])
            top, idx = lg.float().topk(k, dim=1)  # (N, k)
            picked = d[torch.arange(len(d), device=d.device)[:, None], idx]  # (N, k, 4)
            boxes.append(decode(self.box_coder, picked.reshape(-1, 4), a[idx.reshape(-1)]).view(len(d), k, 4))
            scores.append(top)
            level_ids.append(torch.full((k,), level, dtype=torch.int64, device=d.device))
        boxes, scores, level_ids = torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(level_ids)
        proposals = []
        for b, s, size in zip(boxes, scores, image_sizes, strict=True):
            finite = torch.isfinite(b).all(1) & torch.isfinite(s)
            if self.training and not finite.all():  # detectron2's find_top_rpn_proposals raises too
                raise TrainingError("the RPN predicted non-finite boxes or scores: training has diverged")
            b, s, lv = b[finite], s[finite], level_ids[finite]
            b = clip_boxes_to_image(b, size)
            keep = ((b[:, 2] - b[:, 0]) > 0) & ((b[:, 3] - b[:, 1]) > 0)
            b, s, lv = b[keep], s[keep], lv[keep]
            keep = batched_nms(b, s, lv, self.nms_thresh)[:post]
            proposals.append(b[keep])
        return proposals

    def losses(
        self, anchors: torch.Tensor, logits: torch.Tensor, deltas: torch.Tensor, targets: list[dict]
    ) -> dict[str, torch.Tensor]:
        """Objectness BCE and box L1 over the sampled anchors, each summed / (256 × images)."""
        labels, matched_boxes = [], []
        for t in targets:
            gt = t["boxes"].float()
            if len(gt) == 0:
                labels.append(torch.zeros(len(anchors), device=anchors.device))
                matched_boxes.append(torch.zeros_like(anchors))
                continue
            idx = self.matcher(box_iou(gt, anchors))
            lab = (idx >= 0).float()
            lab[idx == Matcher.BETWEEN_THRESHOLDS] = -1.0  # ignored
            labels.append(lab)
            matched_boxes.append(gt[idx.clamp(min=0)])
        pos, neg = self.sampler(labels)
        pos, neg = torch.stack(pos).bool(), torch.stack(neg).bool()
        sampled = pos | neg
        labels = torch.stack(labels)
        normalizer = self.batch_size_per_image * len(targets)
        objectness = F.binary_cross_entropy_with_logits(
            logits[sampled].float(), labels[sampled], reduction="sum"
        )
        all_anchors = anchors.expand(len(targets), -1, -1)
        gt_deltas = self.box_coder.encode_single(torch.stack(matched_boxes)[pos], all_anchors[pos])
        box = box_regression_loss(deltas[pos], gt_deltas, self.smooth_l1_beta)
        return {"loss_objectness": objectness / normalizer, "loss_rpn_box_reg": box / normalizer}
