"""CLIP and SigLIP vision towers, every layout: auto-detected, converted, and checked against the source.

Each layout is written by the source's own code (tests/fixtures/make_clip_siglip.py: open_clip, transformers,
timm), read by auto-detection, converted with the default options to a ``--to vitdet`` file, read back, and
compared with the source model's own blocks on patch tokens at the pre-training grid (before ln_post), ≤ 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from fixtures import make_fixtures as mf
from fixtures.layouts import IMAGE_TEXT
from fixtures.reference import backbone_features, converted_backbone

from vitinit.errors import CheckpointFormatError
from vitinit.formats import read_checkpoint


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    return {name: (root / c.name, c.make(root / c.name)) for name, c in IMAGE_TEXT.items()}


def _read(name: str, path):
    return read_checkpoint(path, num_heads=mf.HEADS if IMAGE_TEXT[name].needs_heads else None)


@pytest.mark.parametrize("name", list(IMAGE_TEXT))
def test_tower_is_detected_and_matches_its_source_model(made, name):
    path, source = made[name]
    case = IMAGE_TEXT[name]
    ckpt = _read(name, path)
    assert (ckpt.provenance.family, ckpt.provenance.format) == (case.family, case.format)
    s = ckpt.spec
    assert (s.mlp, s.pre_norm, s.patch_bias) == (case.mlp, case.family == "clip", case.family == "siglip")
    assert s.num_heads == mf.HEADS and s.pretrain_grid == (mf.GRID, mf.GRID)
    assert s.num_prefix_tokens == (1 if case.family == "clip" else 0)
    x = torch.randn(2, 3, mf.IMG, mf.IMG, generator=torch.Generator().manual_seed(0))
    diff = (backbone_features(converted_backbone(ckpt), x) - case.reference(source, x)).abs().max().item()
    assert diff <= 1e-5, f"{name}: max |diff| {diff:.2e}"


@pytest.mark.parametrize("name", list(IMAGE_TEXT))
def test_tower_records_its_input_normalisation_and_what_it_dropped(made, name):
    path, _ = made[name]
    case = IMAGE_TEXT[name]
    prov = _read(name, path).provenance
    std = (0.26862954, 0.26130258, 0.27577711) if case.family == "clip" else (0.5, 0.5, 0.5)
    assert prov.input_norm["mean"] == pytest.approx(case.mean)
    assert prov.input_norm["std"] == pytest.approx(std)
    assert ("documented" not in prov.input_norm["from"]) == case.norm_from_config, prov.input_norm["from"]
    dropped = " ".join(prov.dropped)
    if case.family == "clip":
        assert "class_embedding" in dropped or "cls_token" in dropped
        assert any(word in dropped for word in ("ln_post", "post_layernorm", "norm.*"))
    else:
        assert "head.*" in dropped or "attn_pool.*" in dropped  # the MAP head
    if "open_clip" in case.format or case.format in ("hf/clip", "hf/siglip"):
        assert any("text" in group for group in prov.dropped), prov.dropped


def test_naflex_siglip2_is_refused_in_one_line(tmp_path):
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    config = Siglip2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    Siglip2VisionModel(config).save_pretrained(tmp_path / "naflex")
    with pytest.raises(CheckpointFormatError, match="NaFlex SigLIP 2.*google/siglip2-base-patch16-224") as e:
        read_checkpoint(tmp_path / "naflex")
    assert "\n" not in str(e.value)


def test_open_clip_text_tower_is_not_read_as_blocks(made):
    """The text tower's keys (``transformer.resblocks.*``) are the vision tower's without ``visual.``."""
    path, source = made["clip_open_clip"]
    ckpt = _read("clip_open_clip", path)
    assert ckpt.spec.depth == len(source.visual.transformer.resblocks)
    with pytest.raises(CheckpointFormatError, match="not a siglip checkpoint"):
        read_checkpoint(path, family="siglip", num_heads=mf.HEADS)


def test_hub_config_without_defaults_gets_the_config_class_defaults(tmp_path):
    """openai/clip-vit-base-patch16's config.json lists only ``patch_size`` in ``vision_config``: the rest
    are CLIPVisionConfig's defaults (QuickGELU, eps 1e-5), as transformers fills them in."""
    import json

    from fixtures import make_clip_siglip as mc

    mc.hf_clip(tmp_path / "clip", full=True)
    config = json.loads((tmp_path / "clip" / "config.json").read_text())
    for key in ("hidden_act", "layer_norm_eps"):
        config["vision_config"].pop(key, None)
    (tmp_path / "clip" / "config.json").write_text(json.dumps(config))
    spec = read_checkpoint(tmp_path / "clip").spec
    assert (spec.mlp, spec.norm_eps, spec.pre_norm) == ("quick_gelu", 1e-5, True)


def test_open_clip_resnet_tower_is_refused_in_one_line(tmp_path):
    import json

    from safetensors.torch import save_file

    folder = tmp_path / "rn"
    folder.mkdir()
    save_file({"visual.conv1.weight": torch.zeros(8, 3, 3, 3)}, str(folder / "open_clip_model.safetensors"))
    vision = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8}  # open_clip's RN50.json shape
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"vision_cfg": vision}}))
    with pytest.raises(CheckpointFormatError, match="not a ViT tower") as e:
        read_checkpoint(folder)
    assert "\n" not in str(e.value)


def test_timm_openai_clip_under_a_gelu_architecture_says_so(made):
    """timm serves OpenAI's weights under ``vit_base_patch16_clip_224``, which timm computes with exact GELU:
    converted as timm computes it, with a note that OpenAI trained them with QuickGELU."""
    path, source = made["clip_timm_gelu"]
    ckpt = _read("clip_timm_gelu", path)
    assert type(source.blocks[0].mlp.act).__name__ == "GELU" and ckpt.spec.mlp == "gelu"
    assert any("OpenAI trained these weights with QuickGELU" in n for n in ckpt.provenance.notes)


@pytest.mark.parametrize(("name", "why"), [("clip_hf_full", "ln_pre"), ("siglip_hf_vision", "gelu_tanh")])
def test_detectron2_target_refuses_the_towers_in_one_line(made, name, why):
    """Upstream ViTDet's ViT has exact GELU and no ln_pre: a CLIP / SigLIP file there would compute else."""
    from vitinit.errors import SpecMismatchError
    from vitinit.normalize.options import NormalizeOptions
    from vitinit.targets import detectron2 as d2_target

    with pytest.raises(SpecMismatchError) as e:
        d2_target.normalize(_read(name, made[name][0]), NormalizeOptions())
    assert "\n" not in str(e.value) and why in str(e.value) and "--to vitdet" in str(e.value)


def test_detectron2_target_refusal_reads_as_one_sentence(made):
    """Before: "cannot express clip's a quick_gelu MLP (its Mlp is exact GELU)"."""
    from vitinit.errors import SpecMismatchError
    from vitinit.normalize.options import NormalizeOptions
    from vitinit.targets import detectron2 as d2_target

    with pytest.raises(SpecMismatchError) as e:
        d2_target.normalize(_read("clip_hf_full", made["clip_hf_full"][0]), NormalizeOptions())
    assert str(e.value) == (
        "--to detectron2: upstream ViTDet's ViT has no quick_gelu activation (its MLP is exact GELU) or norm "
        "before the blocks (ln_pre), which these clip weights need (there they would compute something "
        "else); use --to vitdet, whose backbone has them"
    )


def test_recorded_normalisation_reaches_inspect_and_the_recipes(made):
    """open_clip's preprocess_cfg is shown by ``inspect``; clip-vitb / siglip2-vitb leave pixel_mean/std null,
    so the bench normalises with what the weights recorded."""
    from typer.testing import CliRunner
    from vitinit.recipes.check import parse_recipe
    from vitinit_cli.main import app

    from vitinit.bench import resolve

    path, _ = made["clip_open_clip_folder"]
    out = CliRunner().invoke(app, ["inspect", str(path)], env={"COLUMNS": "200"}).output
    assert "input normalisation: mean [0.48145466" in out and "open_clip_config.json preprocess_cfg" in out
    for recipe, name in (("clip-vitb", "clip_hf_full"), ("siglip2-vitb", "siglip_hf_vision")):
        recorded = _read(name, made[name][0]).provenance.input_norm
        mean, std, which = parse_recipe(resolve(recipe)).input_norm(recorded)
        assert (mean, std) == (tuple(recorded["mean"]), tuple(recorded["std"])) and "weights'" in which
