"""The detection model: backbone attention, pyramids, and Mask R-CNN on top (tiny, on CPU)."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
import torch.nn as nn
import typer
from typer.testing import CliRunner

from vitinit.errors import CheckpointFormatError, ConfigError
from vitinit.modeling.mask_rcnn import (
    MaskRCNNConfig,
    build_mask_rcnn,
    convert_sync_batchnorm,
    count_parameters,
    parameter_breakdown,
)
from vitinit.modeling.pyramid import PYRAMIDS, ViTFeaturePyramid, feature_indices_for
from vitinit.modeling.vit import Attention, Block, DetectionViT, ViTBackboneConfig, load_backbone_state


def tiny_backbone(**overrides) -> ViTBackboneConfig:
    base = dict(embed_dim=32, depth=4, num_heads=2, mlp_hidden_dim=64, img_size=128, window_size=4,
                global_block_indexes=(1, 3))
    base.update(overrides)
    return ViTBackboneConfig(**base)


def randomize_tables(model: nn.Module, seed: int = 0) -> None:
    """Fresh models have zero rel-pos tables; tests want them to matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.copy_(torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------------------------------------- attention


def test_sdpa_attention_matches_explicit_softmax_reference():
    torch.manual_seed(0)
    attn = Attention(dim=32, num_heads=4)
    x = torch.randn(3, 9, 32, requires_grad=True)
    bias = torch.randn(4, 9, 9, requires_grad=True)

    out = attn(x, bias)

    b, n, c = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, 4, 8).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8) + bias, dim=-1)
    ref = attn.proj((weights @ v).transpose(1, 2).reshape(b, n, c))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)

    g_out = torch.autograd.grad(out.square().sum(), (x, bias))
    g_ref = torch.autograd.grad(ref.square().sum(), (x, bias))
    for a, r in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-4)


def test_windowed_block_equals_global_attention_within_each_window():
    torch.manual_seed(0)
    window = 4
    windowed = Block(32, 2, 64, window_size=window, rel_pos_grid=(window, window))
    plain = Block(32, 2, 64, window_size=0, rel_pos_grid=(window, window))
    randomize_tables(windowed)
    plain.load_state_dict(windowed.state_dict())
    x = torch.randn(2, 8, 12, 32)  # a 2×3 arrangement of 4×4 windows

    out = windowed(x, None)

    # Global attention run on each window on its own, as if each were a whole image.
    tiles = x.view(2, 2, window, 3, window, 32).permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, 32)
    ref = plain(tiles, None).view(2, 2, 3, window, window, 32).permute(0, 1, 3, 2, 4, 5).reshape(2, 8, 12, 32)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # And it is not global attention over the whole grid.
    assert not torch.allclose(out, plain(x, None), atol=1e-3)


def test_windows_covering_the_grid_equal_all_global_attention():
    # 64 px / patch 16 = a 4×4 grid = one 4×4 window: windowed blocks see exactly what global blocks see.
    windowed_cfg = tiny_backbone(img_size=64, window_size=4, out_indices=(0, 1, 2, 3))
    global_cfg = windowed_cfg.replace(global_block_indexes=(0, 1, 2, 3))
    torch.manual_seed(0)
    windowed = DetectionViT(windowed_cfg).eval()
    state = windowed.state_dict()
    # Zero tables (fresh, non-BEiT inits) and, stronger, equal random tables in both shared slots.
    for tables in ("zero", "random"):
        if tables == "random":
            table = torch.randn_like(state["rel_pos_global.relative_position_bias_table"])
            state["rel_pos_window.relative_position_bias_table"] = table
            state["rel_pos_global.relative_position_bias_table"] = table
        windowed.load_state_dict(state)
        plain = DetectionViT(global_cfg).eval()
        load_backbone_state(plain, state)
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            for a, b in zip(windowed(x), plain(x), strict=True):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- pyramids


def expected_levels(pyramid: str, grid: tuple[int, int]) -> dict[str, tuple[int, int]]:
    h, w = grid
    if pyramid == "singlescale":
        return {"0": (h, w)}
    p5 = (h // 2, w // 2)
    return {"0": (4 * h, 4 * w), "1": (2 * h, 2 * w), "2": (h, w), "3": p5,
            "pool": ((p5[0] - 1) // 2 + 1, (p5[1] - 1) // 2 + 1)}


@pytest.fixture(scope="module")
def vit_maps() -> dict[tuple[int, int], list[torch.Tensor]]:
    """Maps of the 4 blocks of a width-32 ViT in the paper's layout (window 14, 2 global blocks)."""
    torch.manual_seed(0)
    cfg = ViTBackboneConfig(embed_dim=32, depth=4, num_heads=2, mlp_hidden_dim=64, img_size=1024,
                            global_block_indexes=(1, 3), out_indices=(0, 1, 2, 3))
    vit = DetectionViT(cfg).eval()
    randomize_tables(vit)
    with torch.no_grad():
        return {hw: vit(torch.randn(1, 3, *hw)) for hw in [(1024, 1024), (1024, 800)]}


@pytest.mark.parametrize("pyramid", PYRAMIDS)
@pytest.mark.parametrize("hw", [(1024, 1024), (1024, 800)], ids=["1024", "1024x800"])
def test_pyramid_levels_have_the_expected_shapes(vit_maps, pyramid, hw):
    grid = (hw[0] // 16, hw[1] // 16)  # 64×50 for 800 px: not a multiple of the 14-token window
    maps = vit_maps[hw]
    assert [m.shape for m in maps] == [(1, 32, *grid)] * 4
    out_indices = (0, 1, 2, 3) if pyramid == "multiscale" else (3,)
    vit = DetectionViT(tiny_backbone(img_size=1024, window_size=14, out_indices=out_indices))
    neck = ViTFeaturePyramid(vit, pyramid=pyramid, out_channels=16).eval()

    with torch.no_grad():
        feats = neck.pyramid_from(maps if pyramid == "multiscale" else maps[-1:])

    want = expected_levels(pyramid, grid)
    assert list(feats) == neck.feature_names == list(want)
    for name, f in feats.items():
        assert f.shape == (1, 16, *want[name]), name
        assert torch.isfinite(f).all()
        assert neck.feature_strides[name] == hw[0] // f.shape[-2]


def test_multiscale_adapter_reads_the_four_group_final_blocks():
    assert feature_indices_for("multiscale", 12) == (2, 5, 8, 11)
    assert feature_indices_for("multiscale", 24) == (5, 11, 17, 23)
    assert feature_indices_for("simple", 12) == feature_indices_for("singlescale", 12) == (11,)
    model = build_mask_rcnn(MaskRCNNConfig(backbone=ViTBackboneConfig.for_variant("vit-b")), device="meta")
    assert model.backbone.vit.config.feature_indices == (2, 5, 8, 11)
    assert model.backbone.vit.config.global_block_indexes == (2, 5, 8, 11)
    with pytest.raises(ConfigError, match="at least 4 blocks"):
        feature_indices_for("multiscale", 3)
    with pytest.raises(ConfigError, match="reads 4 blocks"):
        ViTFeaturePyramid(DetectionViT(tiny_backbone(out_indices=(3,))), pyramid="multiscale")


# ------------------------------------------------------------------------------------------------ Mask R-CNN


def tiny_mask_rcnn_config(**backbone_overrides) -> MaskRCNNConfig:
    return MaskRCNNConfig(
        backbone=tiny_backbone(**backbone_overrides), num_classes=3, fpn_channels=32, box_head_fc=64,
        norm="BN", min_size=128, max_size=128, rpn_batch_size_per_image=64, box_batch_size_per_image=64,
        rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=50, box_detections_per_img=20,
    )


def synthetic_batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 96, generator=g), torch.rand(3, 112, 128, generator=g)]
    targets = []
    boxes_per_image = ([[20, 10, 70, 60], [5, 70, 40, 120]], [[30, 30, 100, 90]])
    for img, boxes in zip(images, boxes_per_image, strict=True):
        masks = torch.zeros(len(boxes), *img.shape[1:], dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes, strict=True):
            m[y0:y1, x0:x1] = 1
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                        "labels": torch.tensor([1, 3][: len(boxes)]), "masks": masks})
    return images, targets


def unused_parameters(cfg: ViTBackboneConfig) -> set[str]:
    """Shared tables no block reads: the window table when every block is global, and vice versa."""
    is_global = [i in cfg.global_block_indexes for i in range(cfg.depth)]
    unused = set()
    if cfg.rel_pos == "shared" and all(is_global):
        unused.add("backbone.vit.rel_pos_window.relative_position_bias_table")
    if cfg.rel_pos == "shared" and not any(is_global):
        unused.add("backbone.vit.rel_pos_global.relative_position_bias_table")
    return unused


CASES = {
    # name: (pyramid, backbone overrides)
    "window+4global": ("multiscale", {}),
    "all-window": ("multiscale", {"global_block_indexes": ()}),
    "all-global+ckpt": ("multiscale", {"global_block_indexes": (0, 1, 2, 3), "use_act_checkpoint": True}),
    "singlescale": ("singlescale", {}),
    "simple": ("simple", {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mask_rcnn_train_and_inference_step(case):
    pyramid, overrides = CASES[case]
    torch.manual_seed(0)
    cfg = tiny_mask_rcnn_config(**overrides).replace(pyramid=pyramid)
    model = build_mask_rcnn(cfg)
    randomize_tables(model)
    images, targets = synthetic_batch()

    model.train()
    losses = model(images, targets)
    assert set(losses) == {
        "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"
    }
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()

    unused = unused_parameters(model.backbone.vit.config)
    for name, p in model.named_parameters():
        if name in unused:
            assert p.grad is None, name
            continue
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
    tables = [p for n, p in model.named_parameters() if "rel_pos" in n and p.grad is not None]
    assert tables and all(p.grad.abs().sum() > 0 for p in tables)

    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for det, img in zip(detections, images, strict=True):
        n = len(det["boxes"])
        assert n <= cfg.box_detections_per_img
        assert det["boxes"].shape == (n, 4) and det["labels"].shape == det["scores"].shape == (n,)
        assert det["masks"].shape == (n, 1, *img.shape[1:])
        assert ((det["labels"] >= 1) & (det["labels"] <= cfg.num_classes)).all()


def test_train_step_with_an_image_without_objects():
    torch.manual_seed(0)
    model = build_mask_rcnn(tiny_mask_rcnn_config()).train()
    image = torch.rand(3, 128, 128)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 128, 128, dtype=torch.uint8)}

    losses = model([image], [empty])

    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"] == 0 and losses["loss_mask"] == 0 and losses["loss_objectness"] > 0
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_backbone_weights_load_strictly():
    model = build_mask_rcnn(tiny_mask_rcnn_config())
    source = DetectionViT(model.backbone.vit.config)
    randomize_tables(source, seed=1)
    state = source.state_dict()

    load_backbone_state(model.backbone.vit, state)
    for k, v in model.backbone.vit.state_dict().items():
        assert torch.equal(v, state[k]), k

    missing = {k: v for k, v in state.items() if k != "blocks.0.attn.qkv.weight"}
    with pytest.raises(CheckpointFormatError, match=r"missing blocks\.0\.attn\.qkv\.weight"):
        load_backbone_state(model.backbone.vit, missing)
    with pytest.raises(CheckpointFormatError, match="unexpected cls_token"):
        load_backbone_state(model.backbone.vit, {**state, "cls_token": torch.zeros(1, 1, 32)})
    wrong = {**state, "pos_embed": torch.zeros(1, 4, 4, 32)}
    with pytest.raises(CheckpointFormatError, match="wrong shape pos_embed"):
        load_backbone_state(model.backbone.vit, wrong)


# ------------------------------------------------------------------------------------ config, norms, counts


def test_config_round_trip_and_validation():
    cfg = tiny_mask_rcnn_config().replace(pyramid="simple", norm="GN")
    again = MaskRCNNConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.backbone == cfg.backbone
    assert MaskRCNNConfig.from_dict({"backbone": "vit-l"}).backbone.global_block_indexes == (5, 11, 17, 23)
    with pytest.raises(ConfigError, match="pyramid"):
        MaskRCNNConfig(pyramid="fpn")
    with pytest.raises(ConfigError, match="norm"):
        MaskRCNNConfig(norm="batchnorm")
    with pytest.raises(ConfigError, match="unknown Mask R-CNN option"):
        MaskRCNNConfig.from_dict({"num_class": 3})


@pytest.mark.parametrize("norm, kind", [("BN", nn.BatchNorm2d), ("GN", nn.GroupNorm)])
def test_norm_choice_reaches_fpn_and_heads(norm, kind):
    model = build_mask_rcnn(tiny_mask_rcnn_config().replace(norm=norm), device="meta")
    # (torchvision's RPN head convs carry no norm, as in its v2 model.)
    for part in (model.backbone.fpn, model.roi_heads.box_head, model.roi_heads.mask_head):
        norms = [m for m in part.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
        assert norms and all(isinstance(m, kind) for m in norms)
    assert len(model.rpn.head.conv) == 2  # the paper's 2-conv RPN head
    assert model.roi_heads.box_head[-2].out_features == 64  # 4 convs + 1 fc


def test_sync_batchnorm_falls_back_to_batchnorm_under_a_cpu_process_group(tmp_path, caplog):
    import torch.distributed as dist

    net = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))
    with torch.no_grad():
        net[1].running_mean.fill_(0.5)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        x = torch.randn(2, 3, 5, 5)
        with pytest.raises(ValueError, match="GPU"):
            net.train()(x)  # why the fallback exists: SyncBN refuses CPU tensors under a process group
        with caplog.at_level(logging.INFO):
            net = convert_sync_batchnorm(net, "cpu")
        assert type(net[1]) is nn.BatchNorm2d
        assert torch.all(net[1].running_mean == 0.5)
        net.train()(x).sum().backward()
    finally:
        dist.destroy_process_group()


def vit_parameter_count(d: int, depth: int, grid: int, heads: int, window: int = 14) -> int:
    """By hand: patch embedding, abs pos embedding, blocks, the two shared rel-pos tables (no cls/head)."""
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)
    tables = ((2 * window - 1) ** 2 + (2 * grid - 1) ** 2) * heads
    return 3 * 16 * 16 * d + d + grid * grid * d + depth * block + tables


def test_model_info_prints_the_parameter_breakdown():
    from vitinit_cli import model_info

    app = typer.Typer()
    app.callback()(lambda: None)  # keep `model-info` a subcommand
    model_info.register(app)
    runner = CliRunner()

    result = runner.invoke(app, ["model-info", "--model", "vit-b", "--json"])
    assert result.exit_code == 0, result.output
    parts = json.loads(result.output)["parameters"]
    assert parts["ViT backbone"] == vit_parameter_count(768, 12, 64, 12)
    assert sum(v for k, v in parts.items() if k != "total") == parts["total"]
    convs, fc, predictor = 4 * (256 * 256 * 9 + 2 * 256), 256 * 49 * 1024 + 1024, 81 * 1025 + 4 * 81 * 1025
    assert parts["box head"] == convs + fc + predictor

    table = runner.invoke(app, ["model-info", "--model", "vit-l", "--pyramid", "simple"])
    assert table.exit_code == 0 and "ViT backbone" in table.output and "mask head" in table.output
    bad = runner.invoke(app, ["model-info", "--model", "vit-x"])
    assert bad.exit_code == 1 and "unknown model size" in bad.output


def test_count_parameters_on_meta_models():
    model = build_mask_rcnn(MaskRCNNConfig(backbone=ViTBackboneConfig.for_variant("vit-l")), device="meta")
    parts = parameter_breakdown(model)
    assert parts["ViT backbone"] == vit_parameter_count(1024, 24, 64, 16)
    assert parts["total"] == count_parameters(model) == sum(p.numel() for p in model.parameters())
    model.backbone.vit.patch_embed.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == parts["total"] - (3 * 256 * 1024 + 1024)


def test_training_batches_keep_the_jittered_scale_and_pad_with_zeros():
    """In training the model only pads (LSJ chose the scale); image_sizes keep the content size."""
    cfg = MaskRCNNConfig(backbone=tiny_backbone(), num_classes=3, min_size=128, max_size=128, norm="BN")
    model = build_mask_rcnn(cfg).train()
    target = {
        "boxes": torch.tensor([[2.0, 2.0, 20.0, 30.0]]),
        "labels": torch.tensor([1]),
        "masks": torch.ones(1, 40, 56, dtype=torch.uint8),
    }
    images, targets = model.transform([torch.rand(3, 40, 56)], [target])
    assert tuple(images.tensors.shape[-2:]) == (128, 128)
    assert images.image_sizes == [(40, 56)]
    assert torch.equal(targets[0]["boxes"], target["boxes"])
    assert images.tensors[0, :, 40:].abs().max() == 0 and images.tensors[0, :, :, 56:].abs().max() == 0
