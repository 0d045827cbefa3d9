"""The detector's parts, one semantic each: pooler levels, ROIAlignV2, exact anchors, losses and their
normalisation, predictor init, mask targets and paste on float boxes, precision under autocast."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import roi_align

from vitinit.errors import ConfigError
from vitinit.modeling.anchors import CellAnchorGenerator, cell_anchors
from vitinit.modeling.box_regression import box_regression_loss
from vitinit.modeling.mask_ops import crop_mask_targets, paste_masks_in_image
from vitinit.modeling.mask_rcnn import MaskRCNNConfig, build_mask_rcnn
from vitinit.modeling.poolers import ROIPooler, assign_levels
from vitinit.modeling.vit import ViTBackboneConfig

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


def tiny_config(**overrides) -> MaskRCNNConfig:
    bb = ViTBackboneConfig(embed_dim=32, depth=4, num_heads=2, mlp_hidden_dim=64, img_size=256, window_size=4,
                           global_block_indexes=(1, 3))
    base = dict(backbone=bb, num_classes=3, fpn_channels=32, box_head_fc=64, norm="BN", min_size=256,
                max_size=256, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=50,
                box_detections_per_img=20)
    return MaskRCNNConfig(**{**base, **overrides})


# ----------------------------------------------------------------------------------------------- poolers


def test_level_mapper_is_the_fpn_rule_with_224_on_level_4():
    sides = torch.tensor([8.0, 111.0, 112.0, 223.9, 224.0, 447.0, 448.0, 2000.0])
    boxes = torch.stack([torch.zeros(8), torch.zeros(8), sides, sides], 1)
    # Levels 2..5 as offsets from P2: < 112 → P2, [112, 224) → P3, [224, 448) → P4, ≥ 448 → P5 (clamped).
    assert assign_levels(boxes, 2, 5).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_pooler_uses_aligned_adaptive_roi_align_on_the_level_of_each_box():
    torch.manual_seed(0)
    feats = [torch.randn(2, 3, 256 // 2**i, 200 // 2**i) for i in range(4)]
    boxes = [torch.tensor([[10.3, 20.1, 60.7, 50.2], [0.0, 0.0, 300.0, 250.0]]),
             torch.tensor([[100.5, 30.0, 340.0, 230.0]])]
    pooled = ROIPooler(7, SCALES)(feats, boxes)
    want = []
    for img, b in ((0, boxes[0][0]), (0, boxes[0][1]), (1, boxes[1][0])):
        level = int(assign_levels(b[None], 2, 5))
        rois = torch.cat([torch.tensor([float(img)]), b])[None]
        want.append(roi_align(feats[level], rois, 7, SCALES[level], sampling_ratio=0, aligned=True))
    torch.testing.assert_close(pooled, torch.cat(want), rtol=0, atol=0)
    # Not the legacy setting (aligned=False, sampling_ratio=2).
    legacy = ROIPooler(7, SCALES, sampling_ratio=2, aligned=False)(feats, boxes)
    assert not torch.allclose(pooled, legacy, atol=1e-3)
    with pytest.raises(ValueError, match="powers of 1/2"):
        ROIPooler(7, (1 / 4, 1 / 16))


# ----------------------------------------------------------------------------------------------- anchors


def test_cell_anchors_are_exact_and_centred_on_the_grid_corners():
    cell = cell_anchors((32.0,), (0.5, 1.0, 2.0))
    w, h = 32 / math.sqrt(0.5), 32 * math.sqrt(0.5)  # ratio = h / w, area 32²
    torch.testing.assert_close(cell[0], torch.tensor([-w / 2, -h / 2, w / 2, h / 2]))
    torch.testing.assert_close(cell[1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
    assert cell[0, 2] % 1 != 0  # 22.627, where torchvision's AnchorGenerator rounds to 23
    gen = CellAnchorGenerator(((32.0,), (64.0,)), (0.5, 1.0, 2.0), (4, 8))
    a2, a3 = gen([torch.zeros(1, 1, 3, 5), torch.zeros(1, 1, 2, 3)])
    assert a2.shape == (3 * 5 * 3, 4) and a3.shape == (2 * 3 * 3, 4)
    # Order (y, x, anchor); offset 0: location (y=1, x=2) of stride 4 is centred at (8, 4).
    want = torch.tensor([8.0 - 16, 4.0 - 16, 8.0 + 16, 4.0 + 16])
    torch.testing.assert_close(a2[(1 * 5 + 2) * 3 + 1], want)


# ------------------------------------------------------------------------------------------------ losses


def test_box_regression_loss_is_l1_by_default_and_smooth_l1_on_request():
    pred, target = torch.tensor([[0.0, 0.05, 1.0, -2.0]]), torch.zeros(1, 4)
    assert box_regression_loss(pred, target, 0.0).item() == pytest.approx(3.05)
    beta = 1 / 9
    want = 0.5 * 0.05**2 / beta + (1.0 - 0.5 * beta) + (2.0 - 0.5 * beta)
    assert box_regression_loss(pred, target, beta).item() == pytest.approx(want)


def test_rpn_losses_are_summed_over_256_per_image():
    model = build_mask_rcnn(tiny_config())
    rpn = model.rpn.train()
    gt = torch.tensor([[10.0, 10.0, 50.0, 40.0]])
    anchors = torch.tensor([[10.0, 10.0, 50.0, 40.0], [12.0, 10.0, 50.0, 40.0], [100.0, 100.0, 140.0, 130.0],
                            [30.0, 10.0, 70.0, 40.0]])  # IoU 1, 0.95, 0, 0.33 (ignored)
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    deltas = torch.full((1, 4, 4), 0.1)
    losses = rpn.losses(anchors, logits, deltas, [{"boxes": gt}])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    objectness = bce(logits[0, :3], torch.tensor([1.0, 1.0, 0.0]), reduction="sum")
    gt_deltas = rpn.box_coder.encode_single(gt.expand(2, 4), anchors[:2])
    box = (deltas[0, :2] - gt_deltas).abs().sum()
    assert losses["loss_objectness"].item() == pytest.approx(objectness.item() / 256)
    assert losses["loss_rpn_box_reg"].item() == pytest.approx(box.item() / 256)


def test_roi_box_loss_is_class_specific_l1_over_the_number_of_sampled_rois():
    model = build_mask_rcnn(tiny_config())
    heads = model.roi_heads
    rois = [torch.tensor([[10.0, 10.0, 50.0, 40.0], [12.0, 8.0, 52.0, 44.0], [0.0, 0.0, 5.0, 5.0]])]
    labels, matched = [torch.tensor([2, 2, 0])], [torch.tensor([0, 0, 0])]
    targets = [{"boxes": torch.tensor([[11.0, 9.0, 51.0, 42.0]]), "labels": torch.tensor([2])}]
    torch.manual_seed(0)
    logits, deltas = torch.randn(3, 4), torch.randn(3, 4 * 4)
    losses = heads.box_losses(logits, deltas, rois, labels, matched, targets)
    gt_deltas = heads.box_coder.encode_single(targets[0]["boxes"].expand(2, 4), rois[0][:2])
    want = (deltas[:2, 8:12] - gt_deltas).abs().sum() / 3  # 3 sampled RoIs, 2 of them foreground
    assert losses["loss_box_reg"].item() == pytest.approx(want.item(), rel=1e-5)
    assert losses["loss_classifier"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels[0]).item()
    )


def test_predictors_start_as_detectron2s():
    model = build_mask_rcnn(tiny_config(num_classes=80, box_head_fc=512), device="cpu")
    p = model.roi_heads.box_predictor
    assert p.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert p.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.05)
    masks = model.roi_heads.mask_predictor.mask_fcn_logits
    assert masks.weight.std().item() == pytest.approx(0.001, rel=0.1)
    for layer in (p.cls_score, p.bbox_pred, masks):
        assert torch.all(layer.bias == 0)
    # The short-run option keeps torchvision's: He init of the mask logits (fan out 81 × 1 × 1).
    tv = build_mask_rcnn(tiny_config(num_classes=80, box_head_fc=512, predictor_init="torchvision"))
    w = tv.roi_heads.mask_predictor.mask_fcn_logits.weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / 81), rel=0.1)
    assert tv.roi_heads.box_predictor.cls_score.weight.std().item() > 0.02
    with pytest.raises(ConfigError, match="predictor_init"):
        tiny_config(predictor_init="xavier")


# ------------------------------------------------------------------------------------------------- masks


def test_mask_targets_are_aligned_roi_align_crops_of_the_bitmaps():
    masks = torch.zeros(2, 40, 60, dtype=torch.uint8)
    masks[0, 10:30, 20:40] = 1  # a 20×20 square: pixels 20..39 ↔ continuous [20, 40)
    boxes = torch.tensor([[20.0, 10.0, 40.0, 30.0], [20.0, 10.0, 60.0, 30.0], [20.0, 10.0, 40.0, 30.0]])
    out = crop_mask_targets(masks, boxes, torch.tensor([0, 0, 1]), 28)
    assert out.shape == (3, 28, 28) and out.dtype == torch.float32
    assert out[0].all()  # the box is the square: every cell inside
    assert out[1, :, :14].all() and not out[1, :, 14:].any()  # twice as wide: the left half
    assert not out[2].any()  # matched to the empty second instance


def test_paste_samples_the_mask_at_pixel_centres_inside_the_float_box():
    box = torch.tensor([[10.3, 20.7, 50.2, 60.9]])
    pasted = paste_masks_in_image(torch.ones(1, 1, 28, 28), box, (80, 70))
    assert pasted.shape == (1, 1, 80, 70) and pasted.dtype == torch.float32
    ys, xs = torch.nonzero(pasted[0, 0] > 0.5, as_tuple=True)
    # Pixels whose centre (i + 0.5) lies inside the box: x 10..49, y 21..60.
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 49, 21, 60)
    # Left half on: the edge lands at the box's centre x = 30.25, so pixels 10..29 (centre 29.5).
    half = torch.zeros(1, 1, 28, 28)
    half[..., :14] = 1
    cols = torch.nonzero((paste_masks_in_image(half, box, (80, 70))[0, 0] > 0.5).any(0)).squeeze(1)
    assert (cols.min().item(), cols.max().item()) == (10, 29)


# --------------------------------------------------------------------------------------------- precision


def test_heads_run_under_autocast_and_decode_boxes_in_float32():
    """bf16 convs and fcs (the FLOPs), float32 boxes: bf16 decoding would put boxes on a 1-2 px grid."""
    torch.manual_seed(0)
    model = build_mask_rcnn(tiny_config(box_score_thresh=0.0)).eval()
    seen = {}
    parts = {"rpn conv": model.rpn.head.conv, "box head": model.roi_heads.box_head,
             "box predictor": model.roi_heads.box_predictor.bbox_pred, "mask head": model.roi_heads.mask_head,
             "mask predictor": model.roi_heads.mask_predictor}
    def record(name):
        def hook(module, inputs, output):
            seen.setdefault(name, output.dtype)
        return hook

    for name, m in parts.items():
        m.register_forward_hook(record(name))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        (out,) = model([torch.rand(3, 256, 192)])
    assert seen == dict.fromkeys(parts, torch.bfloat16)
    assert out["boxes"].dtype == out["scores"].dtype == out["masks"].dtype == torch.float32
    big = out["boxes"][out["boxes"] > 128]  # bf16's spacing there is 1 px
    assert len(big) > 10 and (big.frac() != 0).float().mean() > 0.9
