"""The last semantic details shared with detectron2: fresh-head init, mask threshold, empty boxes after
rescaling, non-finite RPN proposals in training, matching thresholds as config keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _detectron2 import import_detectron2
from pycocotools import mask as mask_utils
from test_detection_heads import tiny_config

from vitinit.errors import ConfigError, TrainingError
from vitinit.evaluation.coco import instances_to_coco
from vitinit.modeling.mask_rcnn import build_mask_rcnn


def test_fresh_heads_start_as_detectron2s():
    """Box head fc: c2_xavier_fill (std 1/sqrt(fan_in), bias 0); mask deconv bias 0."""
    torch.manual_seed(0)
    model = build_mask_rcnn(tiny_config(fpn_channels=64, box_head_fc=256))
    fc = next(m for m in model.roi_heads.box_head.modules() if isinstance(m, torch.nn.Linear))
    assert fc.in_features == 64 * 7 * 7
    assert fc.weight.std().item() == pytest.approx(fc.in_features**-0.5, rel=0.02)  # 0.0179, not 0.0103
    assert torch.all(fc.bias == 0)
    assert torch.all(model.roi_heads.mask_predictor.conv5_mask.bias == 0)


def test_fresh_heads_match_detectron2s_init():
    import_detectron2("detectron2.modeling")
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead
    from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead

    torch.manual_seed(0)
    ref = FastRCNNConvFCHead(ShapeSpec(channels=64, height=7, width=7), conv_dims=[64] * 4, fc_dims=[256],
                             conv_norm="BN")
    ours = build_mask_rcnn(tiny_config(fpn_channels=64, box_head_fc=256)).roi_heads
    fc = next(m for m in ours.box_head.modules() if isinstance(m, torch.nn.Linear))
    assert fc.weight.std().item() == pytest.approx(ref.fc1.weight.std().item(), rel=0.03)
    assert torch.all(ref.fc1.bias == 0) and torch.all(fc.bias == 0)
    mask_ref = MaskRCNNConvUpsampleHead(ShapeSpec(channels=64, height=14, width=14), num_classes=3,
                                        conv_dims=[64] * 5, conv_norm="BN")
    assert torch.all(mask_ref.deconv.bias == 0)
    assert ours.mask_predictor.conv5_mask.weight.std().item() == pytest.approx(
        mask_ref.deconv.weight.std().item(), rel=0.05)


def test_masks_are_binarised_at_greater_or_equal_one_half():
    """detectron2's paste_masks_in_image keeps pixels with probability >= 0.5 (a pixel at exactly 0.5 too)."""
    masks = torch.tensor([[0.5, 0.4999], [1.0, 0.0]])[None, None]
    out = {"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]), "scores": torch.tensor([0.9]),
           "labels": torch.tensor([1]), "masks": masks}
    _, segm = instances_to_coco(7, out, {1: 1})
    decoded = mask_utils.decode({**segm[0]["segmentation"], "counts": segm[0]["segmentation"]["counts"]})
    np.testing.assert_array_equal(decoded, [[1, 0], [1, 0]])


def test_boxes_empty_after_rescaling_are_dropped():
    """detector_postprocess: boxes scaled back to the original image, clipped, and empty ones dropped with
    their scores, labels and masks."""
    model = build_mask_rcnn(tiny_config()).eval()
    result = [{
        "boxes": torch.tensor([[10.0, 10, 50, 60], [300.0, 20, 320, 40], [30.0, 30, 30, 31]]),
        "scores": torch.tensor([0.9, 0.8, 0.7]),
        "labels": torch.tensor([1, 2, 3]),
        "masks": torch.ones(3, 1, 28, 28),
    }]
    out = model.transform.postprocess(result, [(256, 256)], [(128, 128)])[0]
    torch.testing.assert_close(out["boxes"], torch.tensor([[5.0, 5.0, 25.0, 30.0]]))
    assert out["scores"].tolist() == [pytest.approx(0.9)] and out["labels"].tolist() == [1]
    assert out["masks"].shape == (1, 1, 128, 128)


def test_no_proposals_give_no_detections():
    """An image without proposals (an RPN that found nothing) yields empty detections, not a crash."""
    model = build_mask_rcnn(tiny_config()).eval()
    maps = [torch.zeros(1, 32, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    out = model.roi_heads.inference(maps, [torch.zeros(0, 4)], [(64, 64)])[0]
    assert out["boxes"].shape == (0, 4) and out["masks"].shape[0] == 0


def test_non_finite_rpn_proposals_raise_in_training_only():
    model = build_mask_rcnn(tiny_config())
    rpn = model.rpn
    anchors = [torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 40.0, 40.0]])]
    logits = [torch.tensor([[2.0, float("nan")]])]
    deltas = [torch.zeros(1, 2, 4)]
    rpn.eval()
    assert len(rpn.find_top_proposals(anchors, logits, deltas, [(64, 64)])[0]) == 1  # dropped at inference
    rpn.train()
    with pytest.raises(TrainingError, match="non-finite"):
        rpn.find_top_proposals(anchors, logits, deltas, [(64, 64)])


def test_matching_thresholds_and_fractions_are_config_keys():
    model = build_mask_rcnn(tiny_config(rpn_iou_thresholds=(0.2, 0.8), rpn_positive_fraction=0.25,
                                        box_iou_thresh=0.6, box_positive_fraction=0.5), device="meta")
    m = model.rpn.matcher
    assert (m.low_threshold, m.high_threshold) == (0.2, 0.8) and model.rpn.sampler.positive_fraction == 0.25
    r = model.roi_heads
    assert (r.matcher.low_threshold, r.matcher.high_threshold) == (0.6, 0.6)
    assert r.sampler.positive_fraction == 0.5
    default = build_mask_rcnn(tiny_config(), device="meta")  # detectron2's defaults
    assert (default.rpn.matcher.low_threshold, default.rpn.matcher.high_threshold) == (0.3, 0.7)
    assert default.roi_heads.matcher.high_threshold == 0.5 and default.rpn.sampler.positive_fraction == 0.5
    with pytest.raises(ConfigError, match="IoU thresholds"):
        tiny_config(rpn_iou_thresholds=(0.8, 0.2))
    with pytest.raises(ConfigError, match="positive_fraction"):
        tiny_config(rpn_positive_fraction=0.0)
