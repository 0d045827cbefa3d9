"""Layer-wise lr decay: our layer ids give detectron2's ``get_vit_lr_decay_rate`` for each parameter."""

from __future__ import annotations

import pytest
import torch
from _detectron2 import import_detectron2

from vitinit.engine.optim import build_param_groups
from vitinit.modeling.lr_decay import lr_decay_layers, vit_lr_decay_layer_id
from vitinit.modeling.mask_rcnn import MaskRCNNConfig, build_mask_rcnn
from vitinit.modeling.vit import ViTBackboneConfig


def _detector() -> torch.nn.Module:
    backbone = ViTBackboneConfig(
        embed_dim=32, depth=4, num_heads=2, mlp_hidden_dim=64, img_size=64, window_size=2,
        global_block_indexes=(1, 3),
    )
    with torch.device("meta"):  # names and shapes only
        return build_mask_rcnn(MaskRCNNConfig(backbone=backbone, num_classes=3, min_size=64, max_size=64))


def test_layer_ids():
    assert vit_lr_decay_layer_id("patch_embed.proj.weight", 12) == 0
    assert vit_lr_decay_layer_id("pos_embed", 12) == 0
    assert vit_lr_decay_layer_id("blocks.11.attn.qkv.weight", 12) == 12
    assert vit_lr_decay_layer_id("rel_pos_window.relative_position_bias_table", 12) == 13
    layer_id, top = lr_decay_layers(_detector())
    assert top == 5 and layer_id("backbone.vit.blocks.0.norm1.weight") == 1 and layer_id("rpn.head.x") == 5
    assert lr_decay_layers(torch.nn.Linear(2, 2)) is None


def test_matches_detectron2_get_vit_lr_decay_rate():
    vit = import_detectron2("detectron2.modeling.backbone.vit")
    groups = build_param_groups(_detector(), lr=1.0, weight_decay=0.1, layer_decay=0.7)
    checked = 0
    for g in groups:
        for name in g["names"]:
            # detectron2's ViTDet names the ViT backbone.net, ours backbone.vit
            theirs = vit.get_vit_lr_decay_rate(name.replace("backbone.vit.", "backbone.net."), 0.7, 4)
            assert g["lr_scale"] == pytest.approx(theirs), name
            checked += 1
    assert checked > 50
