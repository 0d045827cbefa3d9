"""Normalization to the paper's backbone: abs pos, relative position tables, layer scale, exact key set."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from fixtures import make_fixtures as mf
from fixtures.reference import backbone_features, converted_backbone

from vitinit.errors import ConfigError
from vitinit.formats import read_checkpoint
from vitinit.modeling.vit import DetectionViT, load_backbone_state
from vitinit.normalize.detection import detection_config, to_vitdet
from vitinit.ops.rel_pos import resize_rel_pos_table


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("normalize")
    mf.mae_checkpoint(root / "mae.pth")
    mf.beit_checkpoint(root / "beit_pt.pth")
    mf.beit_checkpoint(root / "beit_ft.pth", pretrain=False)
    return {n: read_checkpoint(root / f"{n}.pth", num_heads=mf.HEADS) for n in ("mae", "beit_pt", "beit_ft")}


def _load(tensors) -> dict[str, torch.Tensor]:
    return {k: t.load() for k, t in tensors.items()}


@pytest.mark.parametrize("name", ["mae", "beit_pt", "beit_ft"])
@pytest.mark.parametrize("rel_pos", ["shared", "per_block"])
def test_output_is_exactly_the_backbone_state(ckpts, name, rel_pos):
    cfg = detection_config(ckpts[name].spec, img_size=128, window_size=4, rel_pos=rel_pos)
    tensors, prov = to_vitdet(ckpts[name], cfg)
    net = DetectionViT(cfg)
    assert set(tensors) == set(net.state_dict())
    load_backbone_state(net, _load(tensors))  # strict, raises on any missing/unexpected/mis-shaped key
    assert {"abs_pos", "rel_pos", "layer_scale", "grid"} <= set(prov.normalization)
    assert ckpts[name].provenance.normalization == {}  # the input checkpoint is not mutated


def test_abs_pos_drops_cls_and_resizes_plain_bicubic(ckpts):
    ckpt = ckpts["mae"]
    cfg = detection_config(ckpt.spec, img_size=128)  # grid 4x4 -> 16x16
    pos = to_vitdet(ckpt, cfg)[0]["pos_embed"].load()
    src = ckpt.tensors["pos_embed"].load()[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    want = F.interpolate(src, size=(16, 16), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    assert torch.equal(pos, want)
    antialiased = F.interpolate(src, size=(16, 16), mode="bicubic", antialias=True).permute(0, 2, 3, 1)
    assert not torch.allclose(pos, antialiased, atol=1e-4)  # timm's default would give other values


def test_beit_gets_a_fresh_recorded_abs_pos(ckpts):
    cfg = detection_config(ckpts["beit_pt"].spec, img_size=512)  # 64x64 grid: enough samples for a std
    tensors, prov = to_vitdet(ckpts["beit_pt"], cfg, seed=7)
    pos = tensors["pos_embed"].load()
    assert abs(pos.std().item() - 0.02) < 0.002 and abs(pos.mean().item()) < 0.001
    assert (
        "fresh truncated normal" in prov.normalization["abs_pos"]
        and "seed 7" in prov.normalization["abs_pos"]
    )
    assert torch.equal(pos, to_vitdet(ckpts["beit_pt"], cfg, seed=7)[0]["pos_embed"].load())


def test_zero_tables_for_methods_without_relative_bias(ckpts):
    cfg = detection_config(ckpts["mae"].spec, img_size=128, window_size=4)
    tensors = _load(to_vitdet(ckpts["mae"], cfg)[0])
    for key in ("rel_pos_window.relative_position_bias_table", "rel_pos_global.relative_position_bias_table"):
        assert not tensors[key].any()


def test_beit_shared_table_goes_into_both_tables_without_cls_rows(ckpts):
    ckpt = ckpts["beit_pt"]
    table = ckpt.tensors["rel_pos_bias.relative_position_bias_table"].load()
    cfg = detection_config(ckpt.spec, img_size=128, window_size=4)  # window 4 = pre-training grid; global 16
    tensors = _load(to_vitdet(ckpt, cfg)[0])
    assert torch.equal(tensors["rel_pos_window.relative_position_bias_table"], table[:-3])
    glob = tensors["rel_pos_global.relative_position_bias_table"]
    assert glob.shape == (31 * 31, mf.HEADS)
    # BEiT's geometric scheme keeps offsets 0 and ±1 on their source values: the centre 3x3 is unchanged.
    centre_src = table[:-3].reshape(7, 7, -1)[2:5, 2:5]
    assert torch.allclose(glob.reshape(31, 31, -1)[14:17, 14:17], centre_src, atol=1e-6)


def test_rel_pos_resize_options_differ(ckpts):
    ckpt = ckpts["beit_pt"]
    cfg = detection_config(ckpt.spec, img_size=128, window_size=4)
    key = "rel_pos_global.relative_position_bias_table"
    geometric = to_vitdet(ckpt, cfg)[0][key].load()
    bicubic = to_vitdet(ckpt, cfg, rel_pos_resize="bicubic")[0][key].load()
    table = ckpt.tensors["rel_pos_bias.relative_position_bias_table"].load()
    assert torch.equal(bicubic, resize_rel_pos_table(table, (16, 16), num_extra_rows=3, method="bicubic"))
    assert not torch.allclose(geometric, bicubic, atol=1e-3)
    with pytest.raises(ConfigError, match="rel_pos_resize"):
        to_vitdet(ckpt, cfg, rel_pos_resize="linear")


def test_finetuned_beit_tables_shared_rule_is_the_mean_and_warns(ckpts, caplog):
    ckpt = ckpts["beit_ft"]
    cfg = detection_config(ckpt.spec, img_size=32, window_size=4, global_block_indexes=(1, 3))
    with caplog.at_level(logging.WARNING):
        tensors, prov = to_vitdet(ckpt, cfg)
    assert "averaged" in caplog.text and "averaged" in prov.normalization["rel_pos_rule"]
    tables = [ckpt.tensors[f"blocks.{i}.attn.relative_position_bias_table"].load()[:-3] for i in range(4)]
    assert torch.allclose(
        tensors["rel_pos_window.relative_position_bias_table"].load(), (tables[0] + tables[2]) / 2, atol=1e-7
    )
    assert torch.allclose(
        tensors["rel_pos_global.relative_position_bias_table"].load(), (tables[1] + tables[3]) / 2, atol=1e-7
    )
    kept = _load(
        to_vitdet(ckpt, detection_config(ckpt.spec, img_size=32, window_size=4, rel_pos="per_block"))[0]
    )
    for i in range(4):
        assert torch.equal(kept[f"blocks.{i}.rel_pos.relative_position_bias_table"], tables[i])


def test_fold_is_exact(ckpts):
    """Folded and kept layer scale give the same features (also at detection size, with real windows)."""
    ckpt = ckpts["beit_pt"]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    outs = {}
    for mode in ("keep", "fold"):
        cfg = detection_config(ckpt.spec, img_size=64, window_size=4, layer_scale=mode)
        tensors = _load(to_vitdet(ckpt, cfg, layer_scale=mode)[0])
        assert ("blocks.0.gamma_1" in tensors) == (mode == "keep")
        net = DetectionViT(cfg).eval()
        load_backbone_state(net, tensors)
        with torch.no_grad():
            outs[mode] = net(x)
    for a, b in zip(outs["keep"], outs["fold"], strict=True):
        assert (a - b).abs().max().item() <= 1e-5
    fold_net = converted_backbone(ckpt, layer_scale="fold", zero_abs_pos=True)
    keep_net = converted_backbone(ckpt, layer_scale="keep", zero_abs_pos=True)
    x = torch.randn(2, 3, mf.IMG, mf.IMG)
    assert (backbone_features(fold_net, x) - backbone_features(keep_net, x)).abs().max() <= 1e-5


def test_layer_scale_mismatch_between_config_and_mode_is_refused(ckpts):
    cfg = detection_config(ckpts["beit_pt"].spec, img_size=64, layer_scale="keep")
    with pytest.raises(ConfigError, match="layer_scale"):
        to_vitdet(ckpts["beit_pt"], cfg, layer_scale="fold")
    with pytest.raises(ConfigError, match="rel_pos"):
        detection_config(ckpts["mae"].spec, rel_pos="decomposed")
