"""The library surface (``vitinit.api``, exported by ``vitinit``): the README's snippet runs as written, on a
tiny MAE checkpoint written by timm's model at test time; the backbone's outputs match its output_shape and
the converted weights reproduce the source's features; ``import vitinit`` does not import torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures import make_fixtures as mf
from fixtures.reference import backbone_features, timm_vit_features
from test_bench import MICRO

import vitinit
from vitinit.errors import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"
SOURCE = "mae_pretrain_vit_base.pth"
TINY = ["model.img_size=64", "model.window_size=4", "model.variant=custom", "model.backbone.num_heads=2"]
# The README's sizes → the tiny checkpoint's (patch 8, width 32): each must be present, so the README and
# this test cannot drift apart silently.
SUBSTITUTIONS = {
    'size=1024)': 'size=64, window_size=4, num_heads=2)',
    "torch.randn(1, 3, 1024, 1024)": "torch.randn(1, 3, 64, 64)",
    '["weights.source=mae_pretrain_vit_base.pth"]': f'["weights.source={SOURCE}", *{TINY!r}]',
    '["schedule.iters=20"]': f'{[*MICRO, "schedule.iters=2", "eval.at_start=false"]!r}',
}


def readme_snippet() -> str:
    text = README.read_text()
    section = text[text.index("### Use it as a library"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VITINIT_CACHE", str(tmp_path_factory.getbasetemp() / "vitinit-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_readme_snippet_runs(tmp_path, monkeypatch):
    code = readme_snippet()
    for old, new in SUBSTITUTIONS.items():
        assert old in code, f"the README's library snippet no longer contains {old!r}"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    mf.mae_checkpoint(tmp_path / SOURCE)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own snippet
    # patch 8 (the README's ViT-B has 16): strides 2 … 32, named p<log2 stride> as detectron2 names levels
    strides = {k: s.stride for k, s in scope["shapes"].items()}
    assert strides == {"p1": 2, "p2": 4, "p3": 8, "p4": 16, "p5": 32}
    assert list(scope["feats"]) == list(scope["shapes"])
    assert scope["weights"].provenance["family"] == "mae"
    assert all(k.startswith("backbone.net.") for k in scope["weights"].state_dict)
    assert isinstance(scope["recipe"], vitinit.Recipe) and scope["model"].backbone.vit.config.embed_dim == 32
    assert scope["results"]["status"] == "finished" and Path(scope["results"]["run_dir"]).is_dir()


def test_backbone_carries_the_source_weights(tmp_path):
    """The backbone's ViT computes what the MAE source computes (patch tokens, pre-training grid)."""
    source = mf.mae_checkpoint(tmp_path / SOURCE)
    backbone = vitinit.load_backbone(
        tmp_path / SOURCE, size=mf.IMG, window_size=mf.GRID, num_heads=mf.HEADS, pyramid="simple"
    )
    x = torch.randn(2, 3, mf.IMG, mf.IMG)
    with torch.no_grad():
        ours = backbone_features(backbone.vit.eval(), x)
    torch.testing.assert_close(ours, timm_vit_features(source.eval(), x), rtol=1e-5, atol=1e-5)
    assert backbone.provenance["family"] == "mae" and backbone.provenance["sha256"]
    shapes = backbone.eval()(x)
    assert {k: (v.shape[1], mf.IMG // v.shape[-1]) for k, v in shapes.items()} == {
        k: (s.channels, s.stride) for k, s in backbone.output_shape().items()
    }


def test_converted_file_reads_as_written_and_options_are_checked(tmp_path):
    from vitinit.convert import convert

    mf.mae_checkpoint(tmp_path / SOURCE)
    out = convert(tmp_path / SOURCE, size=64, window_size=4, num_heads=2, output=tmp_path / "mae.safetensors")
    backbone = vitinit.load_backbone(out.path, pyramid="singlescale")
    assert list(backbone.output_shape()) == ["p3"]  # patch 8: the single level has stride 8
    assert backbone.provenance["sha256"] == out.provenance["sha256"]
    with pytest.raises(ConfigError, match="already converted"):
        vitinit.load_backbone(out.path, window_size=2)
    with pytest.raises(ConfigError, match="unknown option 'windowsize'"):
        vitinit.convert_weights(tmp_path / SOURCE, num_heads=2, windowsize=4)


def test_recipe_objects_flow_through():
    recipe = vitinit.load_recipe("demo", ["optim.lr=2e-3"])
    assert vitinit.load_recipe(recipe) is recipe  # parsed once; a Recipe passes as is
    again = vitinit.load_recipe(recipe, ["schedule.epochs=1"])
    assert again.optim.lr == 2e-3 and again.schedule.iters == 64  # 1 epoch of 256 images at batch 4
    with pytest.raises(ConfigError, match="optim.lrr"):
        vitinit.load_recipe(recipe, ["optim.lrr=1"])


def test_import_vitinit_is_light():
    code = "import sys, vitinit; print('torch' in sys.modules, 'vitinit.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert sorted(vitinit.__all__) == sorted(set(vitinit.__all__)) and "load_backbone" in dir(vitinit)
    with pytest.raises(AttributeError):
        vitinit.not_a_name  # noqa: B018


def test_torch_hub_entry_points(tmp_path):
    mf.mae_checkpoint(tmp_path / SOURCE)
    root = str(Path(__file__).resolve().parents[1])
    backbone = torch.hub.load(
        root, "load_backbone", tmp_path / SOURCE, source="local", size=32, window_size=4, num_heads=2
    )
    assert isinstance(backbone, vitinit.FeatureBackbone)
