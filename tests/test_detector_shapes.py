"""Real shapes: detections do not depend on the first batch's image, on the image order or on the batch.

The pooler regression (issue 8): torchvision's ``MultiScaleRoIAlign`` inferred its scales from the first
batch, so a landscape first image (COCO's 640×426, resized to 1024×681 and padded to 1024²) made every later
RoI pool from the wrong level. These tests use only the public builder, so they also run against the old
modeling code (they fail there).
"""

from __future__ import annotations

import pytest
import torch

from vitinit.modeling.mask_rcnn import MaskRCNNConfig, build_mask_rcnn
from vitinit.modeling.pyramid import PYRAMIDS
from vitinit.modeling.vit import ViTBackboneConfig


def model_for(pyramid: str, size: int) -> torch.nn.Module:
    out = (0, 1, 2, 3) if pyramid == "multiscale" else (3,)
    # At 1024 px all blocks are windowed: global attention over 4096 tokens would cost seconds on a CPU,
    # and the bug under test lives in the heads.
    bb = ViTBackboneConfig(embed_dim=32, depth=4, num_heads=2, mlp_hidden_dim=64, img_size=size,
                           window_size=size // 64 if size < 1024 else 14,
                           global_block_indexes=(1, 3) if size < 1024 else (), out_indices=out)
    cfg = MaskRCNNConfig(backbone=bb, num_classes=3, pyramid=pyramid, fpn_channels=16, box_head_fc=32,
                         norm="BN", min_size=size, max_size=size, rpn_pre_nms_top_n_test=200,
                         rpn_post_nms_top_n_test=40, box_detections_per_img=20, box_score_thresh=0.0)
    torch.manual_seed(0)
    model = build_mask_rcnn(cfg).eval()
    # Random heads that tell levels apart: detectron2's small predictor init would make every score ~1/4.
    with torch.no_grad():
        for p in model.roi_heads.parameters():
            p.normal_(0, 0.2)
    return model


def images(size: int) -> dict[str, torch.Tensor]:
    """COCO's first val shape (640×426, landscape), a portrait 480×640 and a square 640×640, scaled."""
    g = torch.Generator().manual_seed(1)
    s = size / 1024 * 1.6  # 640 px → size
    shapes = {"landscape": (426, 640), "portrait": (640, 480), "square": (640, 640)}
    return {name: torch.rand(3, round(h * s), round(w * s), generator=g) for name, (h, w) in shapes.items()}


def detect(model, batch):
    with torch.no_grad():
        return model(batch)


def assert_same(a: dict, b: dict) -> None:
    assert len(a["boxes"]) == len(b["boxes"]) > 0
    for k in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4, msg=k)


@pytest.mark.parametrize("pyramid", PYRAMIDS)
def test_a_landscape_first_batch_does_not_change_the_poolers(pyramid):
    """Fails on the old code: there the landscape first image set scales [1/2 ... 1/16] for good.

    The multi-scale model at 1024 px is the issue's repro; the other pyramids at 256 px to stay fast (a
    256×170 first image met the same bug: any content under ~0.71 of the padded height did).
    """
    size = 1024 if pyramid == "multiscale" else 256
    ims = images(size)
    model = model_for(pyramid, size)
    detect(model, [ims["landscape"]])  # the first batch: 1024×682 content at 1024 px
    square_after_landscape = detect(model, [ims["square"]])[0]
    square_first = detect(model_for(pyramid, size), [ims["square"]])[0]
    assert_same(square_after_landscape, square_first)
    want = [1 / 16] if pyramid == "singlescale" else [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    assert list(model.roi_heads.box_roi_pool.scales) == want
    assert list(model.roi_heads.mask_roi_pool.scales) == want


def test_detections_do_not_depend_on_image_order_or_batch_composition():
    ims = images(256)
    model = model_for("multiscale", 256)
    alone = {name: detect(model, [im])[0] for name, im in ims.items()}
    batch = detect(model, [ims["square"], ims["landscape"], ims["portrait"]])
    reordered = detect(model, [ims["landscape"], ims["portrait"], ims["square"]])
    for name, a, b in zip(("square", "landscape", "portrait"), batch, reordered[2:] + reordered[:2],
                          strict=True):
        assert_same(alone[name], a)
        assert_same(alone[name], b)
        assert a["masks"].shape[-2:] == ims[name].shape[-2:]
