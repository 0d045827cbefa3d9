"""The ResNet-101 baseline's trunk is detectron2's: stem, stride in the 1×1 conv, norms, init, sizes."""

from __future__ import annotations

import torch
import torch.nn as nn
from _detectron2 import import_detectron2

from vitinit.modeling.resnet import ResNetTrunk, build_resnet_fpn

# detectron2's build_resnet_backbone (depth 101, BN, res2-res5) and build_resnet_fpn_backbone, counted with
# detectron2's own code (test_trunk_matches_detectron2_build_resnet_backbone checks them when it is there).
R101_TRUNK_PARAMS = 42_500_160
R101_FPN_PARAMS = 45_846_592


def _first_blocks(trunk: ResNetTrunk):
    return [getattr(trunk, f"res{i}")[0] for i in range(2, 6)]


def test_trunk_shapes_strides_and_parameters():
    torch.manual_seed(0)
    trunk = ResNetTrunk("resnet101", norm=nn.BatchNorm2d).eval()
    assert sum(p.numel() for p in trunk.parameters()) == R101_TRUNK_PARAMS
    assert [len(getattr(trunk, f"res{i}")) for i in range(2, 6)] == [3, 4, 23, 3]
    with torch.no_grad():
        out = trunk(torch.rand(1, 3, 96, 128))
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "res2": (256, 24, 32), "res3": (512, 12, 16), "res4": (1024, 6, 8), "res5": (2048, 3, 4)
    }
    # stride_in_1x1 (detectron2's configs/common/models/mask_rcnn_fpn.py): the 1×1 conv downsamples.
    for block, stride in zip(_first_blocks(trunk), (1, 2, 2, 2), strict=True):
        assert block.conv1[0].stride == (stride, stride) and block.conv2[0].stride == (1, 1)
        assert block.shortcut[0].stride == (stride, stride)
    other = ResNetTrunk("resnet50", norm=nn.BatchNorm2d, stride_in_1x1=False)
    res3 = _first_blocks(other)[1]
    assert res3.conv2[0].stride == (2, 2) and res3.conv1[0].stride == (1, 1)
    # detectron2's stem: 7×7/2 conv without bias, norm, ReLU, 3×3/2 max-pool; convs bias-free, He fan-out.
    conv, norm = trunk.stem[0][0], trunk.stem[0][1]
    assert conv.kernel_size == (7, 7) and conv.stride == (2, 2) and conv.bias is None
    assert isinstance(norm, nn.BatchNorm2d) and isinstance(trunk.stem[1], nn.MaxPool2d)
    assert all(m.bias is None for m in trunk.modules() if isinstance(m, nn.Conv2d))
    w = trunk.res4[5].conv3[0].weight  # 1×1, 256 → 1024: c2_msra_fill std = sqrt(2 / fan_out)
    assert abs(w.std().item() / (2 / 1024) ** 0.5 - 1) < 0.05
    with torch.device("meta"):
        fpn = build_resnet_fpn(norm_layer=nn.BatchNorm2d)
    assert sum(p.numel() for p in fpn.parameters()) == R101_FPN_PARAMS


def test_trunk_matches_detectron2_build_resnet_backbone():
    """Same parameters in the same order, and the same features once detectron2's weights are copied in."""
    import_detectron2("detectron2.modeling")
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 101
    cfg.MODEL.RESNETS.NORM = cfg.MODEL.FPN.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0  # from scratch: nothing frozen (new_baselines)
    cfg.MODEL.RESNETS.OUT_FEATURES = cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1  # detectron2's default, kept by the new_baselines configs
    torch.manual_seed(0)
    ref = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    ours = ResNetTrunk("resnet101", norm=nn.BatchNorm2d).eval()
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters())
    assert [p.shape for p in ref.parameters()] == [p.shape for p in ours.parameters()]
    strides = {k: v.stride for k, v in ref.output_shape().items()}
    assert strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    ours.load_state_dict(dict(zip(ours.state_dict(), ref.state_dict().values(), strict=True)))
    for m in ref.modules():  # non-trivial norm statistics, so a misplaced norm would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    ours.load_state_dict(dict(zip(ours.state_dict(), ref.state_dict().values(), strict=True)))
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        want, got = ref(x), ours(x)
    for name in ("res2", "res3", "res4", "res5"):
        assert want[name].shape == got[name].shape
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4)
    # The same init statistics: detectron2's c2_msra_fill.
    for a, b in zip(ref.parameters(), ResNetTrunk(norm=nn.BatchNorm2d).parameters(), strict=True):
        if a.dim() == 4 and a.numel() > 10_000:
            assert abs(a.std().item() / b.std().item() - 1) < 0.1
    fpn = build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
    assert sum(p.numel() for p in fpn.parameters()) == R101_FPN_PARAMS
    strides = build_resnet_fpn(norm_layer=nn.BatchNorm2d).feature_strides
    assert [v.stride for v in fpn.output_shape().values()] == list(strides.values()) == [4, 8, 16, 32, 64]
