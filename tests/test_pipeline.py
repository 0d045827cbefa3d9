"""One pipeline: `vitinit convert`'s file and the bench's in-memory weights are the same tensors, and the
defaults are lossless (the written file computes what the source computed)."""

from __future__ import annotations

import logging

import pytest
import torch
from fixtures import make_fixtures as mf
from fixtures.reference import backbone_features, timm_beit_features
from typer.testing import CliRunner
from vitinit_cli.main import app

from vitinit.bench import load_weights, resolve
from vitinit.errors import ConfigError
from vitinit.modeling.vit import DetectionViT, load_backbone_state
from vitinit.targets.vitdet import read_vitdet

runner = CliRunner()
SMALL = ["model.img_size=64", "model.window_size=4", "model.variant=custom", "model.backbone.num_heads=2"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    return {
        "mae": (root / "mae.pth", mf.mae_checkpoint(root / "mae.pth")),
        "beit_ft": (root / "beit_ft.pth", mf.beit_checkpoint(root / "beit_ft.pth", pretrain=False)),
    }


def _convert(tmp_path, src, *options: str) -> dict[str, torch.Tensor]:
    out = tmp_path / "out.safetensors"
    args = ["convert", str(src), "--num-heads", "2", "--size", "64", "--window-size", "4", "-o", str(out)]
    res = runner.invoke(app, [*args, *options])
    assert res.exit_code == 0, res.output
    return read_vitdet(out)


# (source, recipe, recipe overrides, the same choice as `vitinit convert` options)
CASES = {
    "mae-defaults": ("mae", "mae-vitb", [], []),
    "mae-ablation": (
        "mae", "mae-vitb", ["model.pos_abs=random", "model.pos_rel=zero", "weights.seed=3"],
        ["--abs-pos", "random", "--seed", "3"],
    ),
    "beit-ft-shared": (
        "beit_ft", "beit-vitb", ["model.pos_abs=zero"], ["--rel-pos", "shared", "--abs-pos", "zero"]
    ),
    "beit-ft-per-block": (
        "beit_ft", "beit-vitb", ["model.rel_pos=per_block", "model.pos_abs=random"], ["--abs-pos", "random"]
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_convert_file_and_bench_memory_are_identical(sources, tmp_path, case):
    name, recipe_name, overrides, options = CASES[case]
    path, _ = sources[name]
    recipe = resolve(recipe_name, [*SMALL, f"weights.source={path}", *overrides])
    config, state, provenance = load_weights(recipe)
    written = _convert(tmp_path, path, *options)
    assert set(state) == set(written.state_dict)
    for k, v in written.state_dict.items():
        assert torch.equal(state[k], v), k
    # Same backbone; the bench adds its training knobs (drop path) on top.
    assert config.replace(drop_path_rate=0.0) == written.config
    assert provenance["normalization"] == written.provenance["normalization"]
    if case == "mae-ablation":  # pos_rel zero in the bench = zero tables (MAE has none anyway)
        assert "random truncated normal" in provenance["normalization"]["abs_pos"]


def test_bench_records_when_its_recipe_averages_per_block_tables(sources, caplog):
    path, _ = sources["beit_ft"]
    recipe = resolve("beit-vitb", [*SMALL, f"weights.source={path}"])  # the paper's rel_pos: shared
    with caplog.at_level(logging.WARNING):
        config, state, provenance = load_weights(recipe)
    assert config.rel_pos == "shared" and "AVERAGED (lossy)" in caplog.text
    assert "AVERAGED" in provenance["normalization"]["rel_pos_rule"]
    # pos_abs: random (the paper's BEiT recipe) is drawn by the normalization, recorded there.
    assert "random truncated normal" in provenance["normalization"]["abs_pos"]
    assert state["pos_embed"].std() > 0.01


def test_default_beit_finetuned_file_is_lossless(sources, tmp_path):
    """The file as written with no options computes the fine-tuned BEiT's patch tokens (per-block tables,
    zero abs pos), at the pre-training grid with windows covering it."""
    path, beit = sources["beit_ft"]
    out = tmp_path / "beit.safetensors"
    args = ["convert", str(path), "--num-heads", "2", "--size", str(mf.IMG), "--window-size", str(mf.GRID)]
    assert runner.invoke(app, [*args, "-o", str(out)]).exit_code == 0
    w = read_vitdet(out)
    assert w.config.rel_pos == "per_block" and not w.state_dict["pos_embed"].any()
    net = DetectionViT(w.config.replace(out_indices=(mf.DEPTH - 1,))).eval()
    load_backbone_state(net, w.state_dict)
    x = torch.randn(2, 3, mf.IMG, mf.IMG, generator=torch.Generator().manual_seed(0))
    assert (backbone_features(net, x) - timm_beit_features(beit, x)).abs().max() <= 1e-5


def test_random_init_has_one_source_the_models_own_init():
    """`--from random` is DetectionViT.reset_parameters under a seeded RNG (the caller's RNG untouched);
    with no function to preserve, its abs pos is the model's random draw by default."""
    from vitinit.formats.random import random_checkpoint
    from vitinit.modeling.vit import ViTBackboneConfig
    from vitinit.normalize.options import NormalizeOptions
    from vitinit.targets import TARGETS

    state = torch.random.get_rng_state()
    ckpt = random_checkpoint("vit-t", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(3)
    cfg = ViTBackboneConfig.for_variant("vit-t", img_size=16, global_block_indexes=(), rel_pos="none",
                                        use_abs_pos=False)
    model = DetectionViT(cfg).state_dict()
    assert set(model) == set(ckpt.tensors)
    assert all(torch.equal(ckpt.tensors[k].load(), v) for k, v in model.items())
    n = TARGETS["vitdet"].normalize(ckpt, NormalizeOptions(img_size=256, seed=5))
    pos = n.tensors["pos_embed"].load()
    assert abs(pos.std().item() - 0.02) < 0.002 and "random" in n.provenance.normalization["abs_pos"]
    zero = TARGETS["vitdet"].normalize(ckpt, NormalizeOptions(img_size=256, abs_pos="zero"))
    assert not zero.tensors["pos_embed"].load().any()


def test_bad_position_options_are_one_line_errors(sources, tmp_path):
    path, _ = sources["mae"]
    out = tmp_path / "x.safetensors"
    res = runner.invoke(app, ["convert", str(path), "--abs-pos", "randon", "-o", str(out)])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and "--abs-pos must be one of" in lines[0], res.output
    assert not list(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="pos_abs"):  # the recipe schema may refuse it first
        load_weights(resolve("mae-vitb", [*SMALL, f"weights.source={path}", "model.pos_abs=randon"]))


def test_a_converted_file_gets_the_recipes_position_policy(sources, tmp_path):
    """A `--to vitdet` file is already in the target layout: the bench applies pos_abs / pos_rel to it and
    records what it changed (same draw as the normalization's)."""
    path, _ = sources["beit_ft"]
    written = _convert(tmp_path, path)  # lossless: zero abs pos, per-block tables
    file = tmp_path / "out.safetensors"

    def bench(*overrides: str, source=file):
        return load_weights(resolve("beit-vitb", [*SMALL, f"weights.source={source}", *overrides]))

    config, state, prov = bench("model.pos_abs=random", "weights.seed=3")
    fresh = bench("model.rel_pos=per_block", "model.pos_abs=random", "weights.seed=3", source=path)[1]
    assert torch.equal(state["pos_embed"], fresh["pos_embed"])
    assert prov["position_policy"] == ["pos_embed: random"]
    tables = [k for k in written.state_dict if "relative_position" in k]
    config, state, prov = bench("model.pos_abs=none", "model.pos_rel=zero")
    assert not config.use_abs_pos and "pos_embed" not in state
    assert all(not state[k].any() for k in tables) and written.state_dict[tables[0]].any()
    config, state, _ = bench("model.pos_rel=none")
    assert config.rel_pos == "none" and not any("relative_position" in k for k in state)
    load_backbone_state(DetectionViT(config), state)
