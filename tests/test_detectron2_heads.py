"""Optional cross-check against upstream detectron2 (skipped unless ``VITINIT_DETECTRON2_SRC`` is set).

For the same inputs, our box coder, anchors, RoI pooling, mask targets, mask paste, RPN (losses and
proposals) and RoI-head losses and inference give detectron2's values. Tolerances: 1e-5 relative for the
float computations (same ops, different summation order), exact for pooling, anchors and binary masks.
Nothing of detectron2 is copied into the project: it is imported from the source tree at test time.
"""

from __future__ import annotations

import pytest
import torch
from _detectron2 import import_detectron2

from vitinit.modeling.anchors import CellAnchorGenerator
from vitinit.modeling.mask_ops import crop_mask_targets, paste_masks_in_image
from vitinit.modeling.mask_rcnn import MaskRCNNConfig, build_mask_rcnn
from vitinit.modeling.poolers import ROIPooler
from vitinit.modeling.roi_heads import mask_rcnn_loss
from vitinit.modeling.vit import ViTBackboneConfig

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


@pytest.fixture(scope="module")
def d2():
    import_detectron2("detectron2.modeling")
    import detectron2.layers.mask_ops as mask_ops
    import detectron2.modeling as modeling
    import detectron2.structures as structures
    from detectron2.modeling import box_regression, matcher, poolers
    from detectron2.modeling.proposal_generator import rpn
    from detectron2.modeling.roi_heads import fast_rcnn, mask_head
    from detectron2.utils.events import EventStorage

    return type("D2", (), dict(modeling=modeling, structures=structures, mask_ops=mask_ops, rpn=rpn,
                               box_regression=box_regression, poolers=poolers, matcher=matcher,
                               fast_rcnn=fast_rcnn, mask_head=mask_head, EventStorage=EventStorage))


def random_boxes(n: int, size: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size * 0.8
    wh = 4 + torch.rand(n, 2, generator=g) * size * 0.5
    return torch.cat([xy, (xy + wh).clamp(max=size)], 1)


def tiny_model(size: int = 128, num_classes: int = 3) -> torch.nn.Module:
    bb = ViTBackboneConfig(embed_dim=32, depth=4, num_heads=2, mlp_hidden_dim=64, img_size=size,
                           window_size=4, global_block_indexes=(1, 3))
    cfg = MaskRCNNConfig(backbone=bb, num_classes=num_classes, fpn_channels=16, box_head_fc=32, norm="BN",
                         min_size=size, max_size=size)
    torch.manual_seed(0)
    return build_mask_rcnn(cfg)


def test_box_coder_matches_box2box_transform(d2):
    ref = d2.box_regression.Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    coder = tiny_model().roi_heads.box_coder
    src, dst = random_boxes(50, 1024, 0), random_boxes(50, 1024, 1)
    torch.testing.assert_close(coder.encode_single(dst, src), ref.get_deltas(src, dst), rtol=1e-5, atol=1e-5)
    deltas = torch.randn(50, 4 * 3, generator=torch.Generator().manual_seed(2))
    ours = coder.decode_single(deltas, src)
    torch.testing.assert_close(ours, ref.apply_deltas(deltas, src), rtol=1e-5, atol=1e-3)


def test_anchors_match_default_anchor_generator(d2):
    sizes, strides = [[32.0], [64.0], [128.0], [256.0], [512.0]], [4, 8, 16, 32, 64]
    ref = d2.modeling.anchor_generator.DefaultAnchorGenerator(
        sizes=sizes, aspect_ratios=[[0.5, 1.0, 2.0]], strides=strides, offset=0.0
    )
    feats = [torch.zeros(1, 1, 171 // s + 1, 256 // s) for s in strides]
    ours = CellAnchorGenerator(tuple(tuple(s) for s in sizes), (0.5, 1.0, 2.0), tuple(strides))(feats)
    for a, b in zip(ours, ref(feats), strict=True):
        torch.testing.assert_close(a, b.tensor, rtol=0, atol=1e-5)


def test_pooler_matches_roi_align_v2_pooler(d2):
    torch.manual_seed(0)
    feats = [torch.randn(2, 8, 256 // 2**i, 192 // 2**i) for i in range(4)]
    boxes = [random_boxes(40, 700, 3), random_boxes(25, 700, 4)]
    ref = d2.poolers.ROIPooler(7, SCALES, sampling_ratio=0, pooler_type="ROIAlignV2")
    want = ref(feats, [d2.structures.Boxes(b) for b in boxes])
    torch.testing.assert_close(ROIPooler(7, SCALES)(feats, boxes), want, rtol=0, atol=0)


def test_mask_targets_and_paste_match_detectron2(d2):
    g = torch.Generator().manual_seed(5)
    bitmaps = torch.rand(6, 60, 80, generator=g) > 0.4
    boxes = random_boxes(6, 60, 6)
    want = d2.structures.BitMasks(bitmaps).crop_and_resize(boxes, 28).float()
    torch.testing.assert_close(crop_mask_targets(bitmaps, boxes, torch.arange(6), 28), want, rtol=0, atol=0)

    probs = torch.rand(6, 1, 28, 28, generator=g)
    boxes = random_boxes(6, 400, 7)
    want = d2.mask_ops.paste_masks_in_image(probs[:, 0], d2.structures.Boxes(boxes), (300, 400))
    ours = paste_masks_in_image(probs, boxes, (300, 400))[:, 0] >= 0.5
    assert torch.equal(ours, want) and ours.sum() > 1000


def d2_rpn_like(d2, model):
    """detectron2's RPN with our RPN's settings and head weights."""
    ours, cfg, c = model.rpn, model.config, model.backbone.out_channels
    head = d2.rpn.StandardRPNHead(in_channels=c, num_anchors=ours.anchor_generator.num_anchors,
                                  conv_dims=[c] * cfg.rpn_conv_depth)
    state = {}
    for i in range(cfg.rpn_conv_depth):
        state[f"conv.conv{i}.weight"] = ours.head.conv[i][0].weight
        state[f"conv.conv{i}.bias"] = ours.head.conv[i][0].bias
    for a, b in (("objectness_logits", "cls_logits"), ("anchor_deltas", "bbox_pred")):
        state[f"{a}.weight"], state[f"{a}.bias"] = getattr(ours.head, b).weight, getattr(ours.head, b).bias
    head.load_state_dict(state)
    gen = d2.modeling.anchor_generator.DefaultAnchorGenerator(
        sizes=[[float(s)] for s in cfg.anchor_sizes], aspect_ratios=[list(cfg.aspect_ratios)],
        strides=[model.backbone.feature_strides[n] for n in model.backbone.feature_names], offset=0.0,
    )
    return d2.rpn.RPN(
        in_features=list(model.backbone.feature_names), head=head, anchor_generator=gen,
        anchor_matcher=d2.matcher.Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=d2.box_regression.Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)),
        batch_size_per_image=ours.batch_size_per_image, positive_fraction=0.5,
        pre_nms_topk=(ours.pre_nms_top_n["training"], ours.pre_nms_top_n["testing"]),
        post_nms_topk=(ours.post_nms_top_n["training"], ours.post_nms_top_n["testing"]),
        nms_thresh=ours.nms_thresh, smooth_l1_beta=0.0,
    )


def test_rpn_losses_and_proposals_match_detectron2(d2):
    from torchvision.models.detection.image_list import ImageList

    model = tiny_model()
    # Sample every labelled anchor (no randomness): a batch larger than the anchors, as both normalise by it.
    model.rpn.batch_size_per_image = 10**6
    model.rpn.sampler.batch_size_per_image = 10**6
    ref = d2_rpn_like(d2, model)
    torch.manual_seed(1)
    feats = model.backbone(torch.rand(2, 3, 128, 128))
    sizes = [(128, 96), (85, 128)]
    gt = [torch.tensor([[10.0, 12.0, 50.0, 70.0], [60.0, 5.0, 90.0, 40.0]]),
          torch.tensor([[20.0, 20.0, 100.0, 80.0]])]
    instances = [d2.structures.Instances(s, gt_boxes=d2.structures.Boxes(b))
                 for s, b in zip(sizes, gt, strict=True)]
    images = ImageList(torch.zeros(2, 3, 128, 128), sizes)
    d2_images = d2.structures.ImageList(torch.zeros(2, 3, 128, 128), sizes)
    for training in (True, False):
        model.rpn.train(training)
        ref.train(training)
        proposals, losses = model.rpn(images, feats, [{"boxes": b} for b in gt] if training else None)
        with d2.EventStorage():
            want, want_losses = ref(d2_images, dict(feats), instances if training else None)
        if training:
            for a, b in (("loss_objectness", "loss_rpn_cls"), ("loss_rpn_box_reg", "loss_rpn_loc")):
                assert losses[a] > 0
                torch.testing.assert_close(losses[a], want_losses[b], rtol=1e-5, atol=0)
        for p, w in zip(proposals, want, strict=True):
            assert len(p) > 100
            torch.testing.assert_close(p, w.proposal_boxes.tensor, rtol=1e-5, atol=1e-4)


def test_roi_head_losses_and_inference_match_detectron2(d2):
    k = 3
    g = torch.Generator().manual_seed(8)
    rois = [random_boxes(20, 128, 9), random_boxes(12, 128, 10)]
    labels = [torch.randint(0, k + 1, (20,), generator=g), torch.randint(0, k + 1, (12,), generator=g)]
    gt = [random_boxes(3, 128, 11), random_boxes(2, 128, 12)]
    matched = [torch.randint(0, 3, (20,), generator=g), torch.randint(0, 2, (12,), generator=g)]
    targets = [{"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64)} for b in gt]
    logits, deltas = torch.randn(32, k + 1, generator=g), torch.randn(32, 4 * (k + 1), generator=g)
    heads = tiny_model(num_classes=k).roi_heads
    ours = heads.box_losses(logits, deltas, rois, labels, matched, targets)

    # detectron2's layout: classes 0..K-1, background last; no background box deltas.
    order = list(range(1, k + 1)) + [0]
    d2_logits, d2_deltas = logits[:, order], deltas[:, 4:]
    to_d2 = [torch.where(lab == 0, k, lab - 1) for lab in labels]
    instances = [
        d2.structures.Instances((128, 128), proposal_boxes=d2.structures.Boxes(r), gt_classes=c,
                                gt_boxes=d2.structures.Boxes(b[m]))
        for r, c, b, m in zip(rois, to_d2, gt, matched, strict=True)
    ]
    predictor = d2.fast_rcnn.FastRCNNOutputLayers(
        input_shape=d2.modeling.ShapeSpec(channels=8),
        box2box_transform=d2.box_regression.Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)),
        num_classes=k, test_score_thresh=heads.score_thresh, test_nms_thresh=heads.nms_thresh,
        test_topk_per_image=heads.detections_per_img, smooth_l1_beta=0.0,
    )
    with d2.EventStorage():
        want = predictor.losses((d2_logits, d2_deltas), instances)
    torch.testing.assert_close(ours["loss_classifier"], want["loss_cls"], rtol=1e-5, atol=0)
    torch.testing.assert_close(ours["loss_box_reg"], want["loss_box_reg"], rtol=1e-5, atol=0)

    # Mask loss on the foreground RoIs.
    masks = [torch.rand(3, 128, 128, generator=g) > 0.5, torch.rand(2, 128, 128, generator=g) > 0.5]
    fg = [lab > 0 for lab in labels]
    mask_logits = torch.randn(int(sum(f.sum() for f in fg)), k + 1, 28, 28, generator=g)
    loss = mask_rcnn_loss(mask_logits, [r[f] for r, f in zip(rois, fg, strict=True)],
                          [lab[f] for lab, f in zip(labels, fg, strict=True)],
                          [m[f] for m, f in zip(matched, fg, strict=True)], masks)
    fg_instances = [
        d2.structures.Instances((128, 128), proposal_boxes=d2.structures.Boxes(r[f]), gt_classes=c[f],
                                gt_masks=d2.structures.BitMasks(mk[m[f]]))
        for r, c, mk, m, f in zip(rois, to_d2, masks, matched, fg, strict=True)
    ]
    with d2.EventStorage():
        want = d2.mask_head.mask_rcnn_loss(mask_logits[:, 1:], fg_instances)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=0)

    # Inference: softmax, class-specific decoding, clipping, threshold, NMS per class, top-k.
    heads.score_thresh = 0.2
    predictor.test_score_thresh = 0.2
    boxes = heads.box_coder.decode_single(deltas, torch.cat(rois)).reshape(32, k + 1, 4)
    scores = logits.softmax(-1)
    ours = [heads.select(b, s, (128, 128))
            for b, s in zip(boxes.split([20, 12]), scores.split([20, 12]), strict=True)]
    want, _ = predictor.inference((d2_logits, d2_deltas), [d2.structures.Instances(
        (128, 128), proposal_boxes=d2.structures.Boxes(r)) for r in rois])
    for o, w in zip(ours, want, strict=True):
        assert len(o["boxes"]) > 3
        torch.testing.assert_close(o["boxes"], w.pred_boxes.tensor, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(o["scores"], w.scores, rtol=1e-5, atol=1e-6)
        assert torch.equal(o["labels"], w.pred_classes + 1)


# ------------------------------------------------------------------------- the whole detector, mapped


def _bn(state: dict, prefix: str, bn: torch.nn.Module) -> None:
    for k, v in bn.state_dict().items():
        state[f"{prefix}.{k}"] = v


def detectron2_mask_rcnn(d2, model: torch.nn.Module) -> torch.nn.Module:
    """detectron2's ``GeneralizedRCNN`` holding ``model``'s backbone module and its heads' weights.

    The heads' layouts differ only in names and in the background class: torchvision's at index 0,
    detectron2's last (scores) or absent (box deltas, mask logits). BN-norm models only.
    """
    from detectron2.modeling import Backbone, GeneralizedRCNN, ShapeSpec
    from detectron2.modeling.roi_heads import FastRCNNConvFCHead, MaskRCNNConvUpsampleHead, StandardROIHeads

    cfg, ours = model.config, model.roi_heads
    names = list(model.backbone.feature_names)
    d2_names = [f"p{i + 2}" for i in range(len(names))]
    strides = [model.backbone.feature_strides[n] for n in names]
    c, k = model.backbone.out_channels, cfg.num_classes

    class Wrapped(Backbone):
        def __init__(self, pyramid):
            super().__init__()
            self.pyramid = pyramid
            self._out_features = d2_names
            self._out_feature_strides = dict(zip(d2_names, strides, strict=True))
            self._out_feature_channels = dict.fromkeys(d2_names, c)

        @property
        def padding_constraints(self):
            return {"size_divisibility": 32, "square_size": cfg.max_size if cfg.square_pad else 0}

        def forward(self, x):
            return dict(zip(d2_names, self.pyramid(x).values(), strict=True))

    rpn = d2_rpn_like(d2, model)
    rpn.in_features = d2_names
    scales = [1.0 / s for s in strides[:4]]
    box_shape = ShapeSpec(channels=c, height=7, width=7)
    box_head = FastRCNNConvFCHead(box_shape, conv_dims=[c] * cfg.box_head_convs, fc_dims=[cfg.box_head_fc],
                                  conv_norm="BN")
    predictor = d2.fast_rcnn.FastRCNNOutputLayers(
        ShapeSpec(channels=cfg.box_head_fc),
        box2box_transform=d2.box_regression.Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)),
        num_classes=k, test_score_thresh=cfg.box_score_thresh, test_nms_thresh=cfg.box_nms_thresh,
        test_topk_per_image=cfg.box_detections_per_img, smooth_l1_beta=0.0,
    )
    mask_head = MaskRCNNConvUpsampleHead(ShapeSpec(channels=c, height=14, width=14), num_classes=k,
                                         conv_dims=[c] * (cfg.mask_head_convs + 1), conv_norm="BN")
    heads = StandardROIHeads(
        box_in_features=d2_names[:4], box_pooler=d2.poolers.ROIPooler(7, scales, 0, "ROIAlignV2"),
        box_head=box_head, box_predictor=predictor, mask_in_features=d2_names[:4],
        mask_pooler=d2.poolers.ROIPooler(14, scales, 0, "ROIAlignV2"), mask_head=mask_head, num_classes=k,
        batch_size_per_image=cfg.box_batch_size_per_image, positive_fraction=cfg.box_positive_fraction,
        proposal_matcher=d2.matcher.Matcher([0.5], [0, 1], allow_low_quality_matches=False),
    )
    state: dict[str, torch.Tensor] = {}
    for i in range(cfg.box_head_convs):
        state[f"conv{i + 1}.weight"] = ours.box_head[i][0].weight
        _bn(state, f"conv{i + 1}.norm", ours.box_head[i][1])
    state["fc1.weight"], state["fc1.bias"] = ours.box_head[-2].weight, ours.box_head[-2].bias
    box_head.load_state_dict(state)
    order = list(range(1, k + 1)) + [0]
    p = ours.box_predictor
    predictor.load_state_dict({
        "cls_score.weight": p.cls_score.weight[order], "cls_score.bias": p.cls_score.bias[order],
        "bbox_pred.weight": p.bbox_pred.weight[4:], "bbox_pred.bias": p.bbox_pred.bias[4:],
    })
    state = {}
    for i in range(cfg.mask_head_convs):
        state[f"mask_fcn{i + 1}.weight"] = ours.mask_head[i][0].weight
        _bn(state, f"mask_fcn{i + 1}.norm", ours.mask_head[i][1])
    mp = ours.mask_predictor
    state.update({
        "deconv.weight": mp.conv5_mask.weight, "deconv.bias": mp.conv5_mask.bias,
        "predictor.weight": mp.mask_fcn_logits.weight[1:], "predictor.bias": mp.mask_fcn_logits.bias[1:],
    })
    mask_head.load_state_dict(state)
    return GeneralizedRCNN(backbone=Wrapped(model.backbone), proposal_generator=rpn, roi_heads=heads,
                           pixel_mean=list(cfg.image_mean), pixel_std=list(cfg.image_std), input_format="RGB")


def detectron2_detect(d2_model, model, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """detectron2's detections for ``image`` (0..1, CHW), resized as our transform does, in our format."""
    model.transform.eval()
    resized = model.transform.resize(image, None)[0]
    with torch.no_grad():
        (out,) = d2_model([{"image": resized, "height": image.shape[1], "width": image.shape[2]}])
    inst = out["instances"]
    return {"boxes": inst.pred_boxes.tensor, "scores": inst.scores, "labels": inst.pred_classes + 1,
            "masks": inst.pred_masks}


def test_the_whole_detector_matches_detectron2s_generalized_rcnn(d2):
    model = tiny_model(size=160)
    model.roi_heads.score_thresh = 0.0
    with torch.no_grad():  # heads that tell classes and positions apart (the init would score all ~1/4)
        for p in model.roi_heads.parameters():
            p.normal_(0, 0.2)
    model.eval()
    d2_model = detectron2_mask_rcnn(d2, model).eval()
    g = torch.Generator().manual_seed(3)
    for h, w in ((107, 160), (160, 120), (60, 80)):  # COCO's 640×427, 480×640, 320×240 at a quarter
        image = torch.rand(3, h, w, generator=g)
        with torch.no_grad():
            (ours,) = model([image])
        want = detectron2_detect(d2_model, model, image)
        assert len(ours["boxes"]) == len(want["boxes"]) > 10
        torch.testing.assert_close(ours["boxes"], want["boxes"], rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(ours["scores"], want["scores"], rtol=1e-4, atol=1e-5)
        assert torch.equal(ours["labels"], want["labels"])
        assert torch.equal(ours["masks"][:, 0] >= 0.5, want["masks"])
