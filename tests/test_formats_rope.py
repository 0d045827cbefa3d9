"""DINOv3 and EVA-02 layouts: auto-detected and converted to files that compute the source's patch tokens.

Each layout is written by the source's own code (``fixtures.make_rope``), read by auto-detection, converted
with the default options through the ``--to vitdet`` FILE as written, and compared with the source model
(``fixtures.reference_rope``) at the pre-training grid and at 2x (every block global), ≤ 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from fixtures.layouts_rope import ROPE
from fixtures.make_rope import HEADS
from fixtures.reference import backbone_features, converted_backbone

from vitinit.errors import SpecMismatchError
from vitinit.formats import read_checkpoint
from vitinit.normalize.options import NormalizeOptions
from vitinit.targets import detectron2 as d2_target


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("rope")
    return {name: (root / c.name, c.make(root / c.name)) for name, c in ROPE.items()}


def _read(name: str, path):
    return read_checkpoint(path, num_heads=HEADS if ROPE[name].needs_heads else None)


def rope_max_diff(ckpt, source, reference, scale: int) -> float:
    """max |converted − source| on patch tokens at ``scale`` × the pre-training grid."""
    s = ckpt.spec
    size = s.pretrain_grid[0] * s.patch_size * scale
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    net = converted_backbone(ckpt)
    if scale != 1:  # the same file, run at the larger grid with every block global
        net = net.__class__(net.config.replace(global_block_indexes=tuple(range(s.depth)))).eval()
        net.load_state_dict(converted_backbone(ckpt).state_dict())
    return (backbone_features(net, x) - reference(source, x)).abs().max().item()


@pytest.mark.parametrize("name", list(ROPE))
def test_rope_layout_is_detected_and_matches_its_source_at_1x_and_2x(made, name):
    path, source = made[name]
    ckpt = _read(name, path)
    case = ROPE[name]
    assert (ckpt.provenance.family, ckpt.provenance.format) == (case.family, case.format)
    assert ckpt.spec.rope is not None and ckpt.provenance.input_norm["mean"]
    for scale in (1, 2):
        diff = rope_max_diff(ckpt, source, case.reference, scale)
        assert diff <= 1e-5, f"{name} at {scale}x: max |diff| {diff:.2e}"


def test_dinov3_official_periods_and_k_mask(made):
    path, _ = made["dinov3_official"]
    ckpt = _read("dinov3_official", path)
    assert ckpt.spec.rope.periods_dtype == "bfloat16" and ckpt.spec.qkv_bias == "qv"
    d = ckpt.spec.embed_dim
    assert ckpt.tensors["blocks.0.attn.qkv.bias"].load()[d : 2 * d].abs().max() == 0  # bias_mask applied
    assert {"storage_tokens", "mask_token", "rope_embed.periods"} <= set(ckpt.provenance.dropped)


def test_dinov3_7b_architecture_swiglu_without_qkv_bias(made):
    ckpt = _read("dinov3_timm_7b_swiglu", made["dinov3_timm_7b_swiglu"][0])
    assert (ckpt.spec.mlp, ckpt.spec.qkv_bias, ckpt.spec.mlp_norm) == ("swiglu", "none", False)


def test_eva02_spec_and_input_norm(made):
    ckpt = _read("eva02_official", made["eva02_official"][0])
    s = ckpt.spec
    assert (s.mlp, s.mlp_norm, s.qkv_bias, s.patch_size, s.num_prefix_tokens) == ("swiglu", True, "qv", 14, 1)
    assert s.rope.variant == "eva" and s.rope.pretrain_grid == (4, 4)
    assert ckpt.provenance.input_norm["mean"][0] == pytest.approx(0.48145466)


@pytest.mark.parametrize("name", ["dinov3_timm_folder", "eva02_timm_folder"])
def test_detectron2_target_refuses_rope_in_one_line(made, name):
    ckpt = _read(name, made[name][0])
    with pytest.raises(SpecMismatchError) as e:
        d2_target.normalize(ckpt, NormalizeOptions())
    assert "\n" not in str(e.value) and "RoPE" in str(e.value) and "--to vitdet" in str(e.value)


def test_input_norm_travels_to_inspect_and_the_bench(made):
    from typer.testing import CliRunner
    from vitinit.recipes.check import parse_recipe
    from vitinit_cli.main import app

    from vitinit.bench import resolve

    path, _ = made["eva02_timm_folder"]
    out = CliRunner().invoke(app, ["inspect", str(path)], env={"COLUMNS": "200"}).output
    assert "input normalisation: mean [0.48145466" in out and "timm pretrained_cfg" in out
    recorded = _read("eva02_timm_folder", path).provenance.input_norm
    mean, std, which = parse_recipe(resolve("eva02-vitb")).input_norm(recorded)
    assert mean == tuple(recorded["mean"]) and "weights'" in which  # the recipe leaves it null
    mean, _, which = parse_recipe(resolve("beit-vitb")).input_norm(recorded)
    assert mean == (0.5, 0.5, 0.5) and "recipe" in which  # a recipe's own values win
    mean, _, which = parse_recipe(resolve("eva02-vitb")).input_norm(None)
    assert mean == (0.485, 0.456, 0.406) and "ImageNet" in which
