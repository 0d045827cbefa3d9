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
from vitinit.modeling.vit import DetectionViT, init_pos_embed_, load_backbone_state
from vitinit.normalize.detection import detection_config, to_vitdet
from vitinit.normalize.options import NormalizeOptions
from vitinit.ops.rel_pos import resize_rel_pos_table
from vitinit.targets import TARGETS


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


def test_beit_abs_pos_is_zeros_by_default_and_random_on_request(ckpts):
    """BEiT has no absolute embedding: zeros add nothing (lossless); the paper's random draw is asked for."""
    cfg = detection_config(ckpts["beit_pt"].spec, img_size=512)  # 64x64 grid: enough samples for a std
    tensors, prov = to_vitdet(ckpts["beit_pt"], cfg, seed=7)
    assert not tensors["pos_embed"].load().any() and "zeros" in prov.normalization["abs_pos"]
    tensors, prov = to_vitdet(ckpts["beit_pt"], cfg, abs_pos="random", seed=7)
    pos = tensors["pos_embed"].load()
    assert abs(pos.std().item() - 0.02) < 0.002 and abs(pos.mean().item()) < 0.001
    record = prov.normalization["abs_pos"]
    assert "random truncated normal" in record and "seed 7" in record
    # The model's own init (DetectionViT.reset_parameters' draw) from a generator seeded 7: reproducible.
    want = init_pos_embed_(torch.empty(1, *cfg.grid, mf.WIDTH), torch.Generator().manual_seed(7))
    assert torch.equal(pos, want)
    mae_zero = to_vitdet(ckpts["mae"], detection_config(ckpts["mae"].spec, img_size=64), abs_pos="zero")[0]
    assert not mae_zero["pos_embed"].load().any()


def test_position_ablations_are_normalization_options(ckpts):
    """pos_abs none / pos_rel none build a backbone without the tensors; pos_rel zero zeroes the tables."""
    ckpt = ckpts["beit_pt"]
    opts = NormalizeOptions(img_size=64, window_size=4, abs_pos="none", rel_pos="none")
    n = TARGETS["vitdet"].normalize(ckpt, opts)
    assert not n.config.use_abs_pos and n.config.rel_pos == "none"
    assert "pos_embed" not in n.tensors and not any("relative_position" in k for k in n.tensors)
    load_backbone_state(DetectionViT(n.config), n.state_dict())
    opts = NormalizeOptions(img_size=64, window_size=4, rel_pos_init="zero")
    zero = TARGETS["vitdet"].normalize(ckpt, opts)
    tables = [v for k, v in zero.state_dict().items() if "relative_position" in k]
    assert len(tables) == 2 and not any(t.any() for t in tables)
    assert "rel_pos_init=zero" in zero.provenance.normalization["rel_pos"]
    with pytest.raises(ConfigError, match="abs_pos must be one of"):
        NormalizeOptions(abs_pos="randon")


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


def test_finetuned_beit_keeps_per_block_tables_by_default(ckpts, caplog):
    ckpt = ckpts["beit_ft"]
    with caplog.at_level(logging.WARNING):
        n = TARGETS["vitdet"].normalize(ckpt, NormalizeOptions(img_size=32, window_size=4))
    assert n.config.rel_pos == "per_block" and "averaged" not in caplog.text.lower()
    assert "rel_pos_rule" not in n.provenance.normalization
    state = n.state_dict()
    for i in range(4):
        table = ckpt.tensors[f"blocks.{i}.attn.relative_position_bias_table"].load()[:-3]
        assert torch.equal(state[f"blocks.{i}.rel_pos.relative_position_bias_table"], table)


def test_finetuned_beit_tables_shared_rule_is_the_mean_and_warns(ckpts, caplog):
    ckpt = ckpts["beit_ft"]
    cfg = detection_config(
        ckpt.spec, img_size=32, window_size=4, global_block_indexes=(1, 3), rel_pos="shared"
    )
    with caplog.at_level(logging.WARNING):
        tensors, prov = to_vitdet(ckpt, cfg)
    assert "AVERAGED (lossy)" in caplog.text and "AVERAGED" in prov.normalization["rel_pos_rule"]
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
    fold_net = converted_backbone(ckpt, layer_scale="fold")
    keep_net = converted_backbone(ckpt, layer_scale="keep")
    x = torch.randn(2, 3, mf.IMG, mf.IMG)
    assert (backbone_features(fold_net, x) - backbone_features(keep_net, x)).abs().max() <= 1e-5


def test_detectron2_layout_zero_abs_pos_for_beit_and_folded_gamma(ckpts):
    n = TARGETS["detectron2"].normalize(ckpts["beit_pt"], NormalizeOptions(img_size=32, drop_rel_pos=True))
    state = n.state_dict()
    assert state["backbone.net.pos_embed"].shape == (1, 1 + mf.GRID**2, mf.WIDTH)
    assert not state["backbone.net.pos_embed"].any() and "zeros" in n.provenance.normalization["abs_pos"]
    assert not any("gamma" in k for k in state) and "relative_position_bias_table" in n.provenance.dropped


def test_layer_scale_mismatch_between_config_and_mode_is_refused(ckpts):
    cfg = detection_config(ckpts["beit_pt"].spec, img_size=64, layer_scale="keep")
    with pytest.raises(ConfigError, match="layer_scale"):
        to_vitdet(ckpts["beit_pt"], cfg, layer_scale="fold")
    with pytest.raises(ConfigError, match="rel_pos"):
        detection_config(ckpts["mae"].spec, rel_pos="decomposed")
