"""Box and mask heads on RoIs, on torchvision's ops with detectron2's semantics (its ``StandardROIHeads``).

Training, per image: the ground-truth boxes join the proposals; each is matched (IoU ≥ 0.5 foreground, its
box's class; else background), and 512 are sampled at most 25 % foreground. Losses: cross-entropy over the
sampled RoIs (mean); class-specific L1 on the foreground deltas (weights 10, 10, 5, 5) summed and divided by
the number of sampled RoIs (detectron2; torchvision uses smooth-L1 β = 1/9); per-pixel BCE of the mask of the
box's class against the instance bitmap cropped with aligned RoIAlign (mean). Inference: softmax scores,
class-specific boxes decoded in float32 and clipped, score > 0.05, NMS 0.5 per class, the top 100; masks
for the kept boxes.

Class index 0 is the background and 1..K the classes (torchvision's layout; detectron2 puts the background
last). The heads' convolutions and fcs run under the caller's autocast; decoding and losses in float32.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

from vitinit.modeling.box_regression import box_regression_loss, decode
from vitinit.modeling.mask_ops import crop_mask_targets
from vitinit.modeling.poolers import ROIPooler


class RoIHeads(nn.Module):
    """``roi_heads(features, proposals, image_sizes, targets) → (detections, losses)`` as torchvision's.

    Detections are dicts of ``boxes`` (float32, in the input image's frame), ``labels``, ``scores`` and
    ``masks``: (N, 1, M, M) probabilities, pasted into the image by the model's transform.
    """

    def __init__(
        self,
        feature_names: list[str],
        box_pooler: ROIPooler,
        box_head: nn.Module,
        box_predictor: nn.Module,
        mask_pooler: ROIPooler,
        mask_head: nn.Module,
        mask_predictor: nn.Module,
        *,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        iou_thresh: float = 0.5,
        bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        smooth_l1_beta: float = 0.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        self.feature_names = list(feature_names)
        self.box_roi_pool = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_roi_pool = mask_pooler
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        self.matcher = Matcher(iou_thresh, iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.smooth_l1_beta = smooth_l1_beta
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        maps = [features[n] for n in self.feature_names]
        if not self.training:
            return self.inference(maps, proposals, image_sizes), {}
        if targets is None:
            raise ValueError("the RoI heads need targets in training")
        proposals, labels, matched = self.sample(proposals, targets)
        class_logits, deltas = self.box_predictor(self.box_head(self.box_roi_pool(maps, proposals)))
        losses = self.box_losses(class_logits, deltas, proposals, labels, matched, targets)
        losses["loss_mask"] = self.mask_loss(maps, proposals, labels, matched, targets)
        return [], losses

    # --- training -----------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self, proposals: list[torch.Tensor], targets: list[dict]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per image: sampled RoIs, their class labels (0 = background) and matched ground-truth indexes."""
        rois, labels, matched = [], [], []
        for props, t in zip(proposals, targets, strict=True):
            gt = t["boxes"].float()
            props = torch.cat([props, gt])  # detectron2's proposal_append_gt
            if len(gt) == 0:
                idx = torch.zeros(len(props), dtype=torch.int64, device=props.device)
                lab = torch.zeros(len(props), dtype=torch.int64, device=props.device)
            else:
                idx = self.matcher(box_iou(gt, props))
                lab = t["labels"][idx.clamp(min=0)].to(torch.int64)
                lab[idx < 0] = 0
                idx = idx.clamp(min=0)
            pos, neg = self.sampler([lab])
            keep = torch.nonzero(pos[0].bool() | neg[0].bool()).squeeze(1)
            rois.append(props[keep])
            labels.append(lab[keep])
            matched.append(idx[keep])
        return rois, labels, matched

    def box_losses(
        self,
        class_logits: torch.Tensor,
        deltas: torch.Tensor,
        rois: list[torch.Tensor],
        labels: list[torch.Tensor],
        matched: list[torch.Tensor],
        targets: list[dict],
    ) -> dict[str, torch.Tensor]:
        label = torch.cat(labels)
        classifier = F.cross_entropy(class_logits.float(), label)
        gt_boxes = torch.cat([t["boxes"].float()[m] if len(t["boxes"]) else r for t, m, r in
                              zip(targets, matched, rois, strict=True)])
        fg = torch.nonzero(label > 0).squeeze(1)
        gt_deltas = self.box_coder.encode_single(gt_boxes[fg], torch.cat(rois)[fg])
        pred = deltas.view(len(deltas), -1, 4)[fg, label[fg]]
        box = box_regression_loss(pred, gt_deltas, self.smooth_l1_beta) / max(label.numel(), 1)
        return {"loss_classifier": classifier, "loss_box_reg": box}

    def mask_loss(
        self,
        maps: list[torch.Tensor],
        rois: list[torch.Tensor],
        labels: list[torch.Tensor],
        matched: list[torch.Tensor],
        targets: list[dict],
    ) -> torch.Tensor:
        fg = [lab > 0 for lab in labels]
        fg_rois = [r[f] for r, f in zip(rois, fg, strict=True)]
        logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(maps, fg_rois)))
        return mask_rcnn_loss(
            logits,
            fg_rois,
            [lab[f] for lab, f in zip(labels, fg, strict=True)],
            [m[f] for m, f in zip(matched, fg, strict=True)],
            [t["masks"] for t in targets],
        )

    # --- inference ----------------------------------------------------------------------------------

    def inference(
        self, maps: list[torch.Tensor], proposals: list[torch.Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, torch.Tensor]]:
        class_logits, deltas = self.box_predictor(self.box_head(self.box_roi_pool(maps, proposals)))
        scores = F.softmax(class_logits.float(), -1)
        boxes = decode(self.box_coder, deltas, torch.cat(proposals))  # (R, K + 1, 4)
        counts = [len(p) for p in proposals]
        results = [
            self.select(b, s, size)
            for b, s, size in zip(boxes.split(counts), scores.split(counts), image_sizes, strict=True)
        ]
        masks = self.predict_masks(maps, [r["boxes"] for r in results], [r["labels"] for r in results])
        for r, m in zip(results, masks, strict=True):
            r["masks"] = m
        return results

    def select(
        self, boxes: torch.Tensor, scores: torch.Tensor, size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """One image's detections: detectron2's ``fast_rcnn_inference_single_image``."""
        finite = torch.isfinite(boxes).all(dim=(1, 2)) & torch.isfinite(scores).all(1)
        boxes, scores = boxes[finite][:, 1:], scores[finite][:, 1:]  # drop the background
        boxes = clip_boxes_to_image(boxes, size)
        roi, cls = torch.nonzero(scores > self.score_thresh, as_tuple=True)
        boxes, scores, labels = boxes[roi, cls], scores[roi, cls], cls + 1
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}

    def predict_masks(
        self, maps: list[torch.Tensor], boxes: list[torch.Tensor], labels: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Per image, (N, 1, M, M) float32 probabilities of the detected class's mask."""
        label = torch.cat(labels)
        logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(maps, boxes)))
        probs = logits.float()[torch.arange(len(label), device=label.device), label].sigmoid()[:, None]
        return list(probs.split([len(b) for b in boxes]))


def mask_rcnn_loss(
    logits: torch.Tensor,
    rois: list[torch.Tensor],
    labels: list[torch.Tensor],
    matched: list[torch.Tensor],
    masks: list[torch.Tensor],
) -> torch.Tensor:
    """Mean per-pixel BCE of each foreground RoI's mask logits (R, K + 1, M, M) for its class, against its
    instance bitmap cropped to the RoI (detectron2's ``mask_rcnn_loss``); zero, with a graph, without RoIs."""
    label = torch.cat(labels)
    if len(label) == 0:
        return logits.sum() * 0.0
    size = logits.shape[-1]
    gt = torch.cat([crop_mask_targets(m, r, i, size) for m, r, i in zip(masks, rois, matched, strict=True)])
    picked = logits[torch.arange(len(label), device=logits.device), label]
    return F.binary_cross_entropy_with_logits(picked.float(), gt)
