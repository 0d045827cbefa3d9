"""Configs that contradict the weights (issue 17's first part) for the newer readers: DINOv3, EVA-02, CLIP,
SigLIP. Each folder is written here by the source's own code (tests/fixtures), then its config edited to lie;
each case ends in one line naming the key (never a silently different backbone, never the "internal error"
line). The readers share :mod:`vitinit.formats._claims` with the older ones (tests/test_hostile_configs.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from _hostile import one_line_error, run
from fixtures import make_clip_siglip as mcs
from fixtures import make_rope as mr

from vitinit.errors import CheckpointFormatError, SpecMismatchError
from vitinit.formats import read_checkpoint

REFUSED = (CheckpointFormatError, SpecMismatchError)
INF = float("inf")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("newer")
    out = {name: root / name for name in ("dinov3", "eva02", "clip", "open_clip", "siglip")}
    mr.dinov3_hf(out["dinov3"])
    mr.eva02_timm(out["eva02"])
    mcs.hf_clip(out["clip"])
    mcs.open_clip_folder(out["open_clip"])
    mcs.timm_siglip(out["siglip"])
    return out


def _lie(folder: Path, dst: Path, edit: Callable[[dict], None], name: str = "config.json") -> Path:
    """``folder`` copied to ``dst`` with its config file ``name`` changed by ``edit``."""
    dst.mkdir()
    for f in folder.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((folder / name).read_text())
    edit(cfg)
    (dst / name).write_text(json.dumps(cfg))
    return dst


def _refused(bad: Path, message: str, tmp_path: Path) -> None:
    with pytest.raises(REFUSED, match=re.escape(message)):
        read_checkpoint(bad)
    out = tmp_path / "o.safetensors"
    one_line_error(run("convert", str(bad), "--size", "64", "--window-size", "4", "-o", str(out)), message)
    assert not out.exists()


# transformers config.json lies: DINOv3 (model_type dinov3_vit) and CLIP (CLIPVisionModel).
_HF_LIES = [
    ("hidden_size", 64, "width 64 (the weights have 32)"),
    ("num_attention_heads", 3, "3 heads do not divide the weights' width 32"),
    ("num_attention_heads", True, "num_attention_heads must be an integer"),
    ("num_attention_heads", "2", "num_attention_heads must be an integer"),
    ("num_attention_heads", -4, "num_attention_heads must be an integer"),
    ("num_hidden_layers", 10**9, "num_hidden_layers must be an integer from 1 to 256"),
    ("layer_norm_eps", -1e-6, "layer_norm_eps must be a number between 0 and 1"),
    ("layer_norm_eps", INF, "layer_norm_eps must be a number between 0 and 1"),
    ("layer_norm_eps", "tiny", "layer_norm_eps must be a number between 0 and 1"),
]


@pytest.mark.parametrize("key, value, message", [
    *_HF_LIES,
    ("num_hidden_layers", 12, "depth 12 (the weights have 3)"),
    ("patch_size", 8, "patch 8 (the weights have 16)"),
    ("rope_theta", "x", "rope_theta must be a number"),
])
def test_dinov3_transformers_config_contradicting_the_tensors_is_refused(made, tmp_path, key, value, message):
    """Before: num_attention_heads was used as is, a string eps or rope_theta reached the catch-all."""
    _refused(_lie(made["dinov3"], tmp_path / "bad", lambda c: c.update({key: value})), message, tmp_path)


@pytest.mark.parametrize("key, value, message", [
    *_HF_LIES,
    ("num_hidden_layers", 12, "depth 12 (the weights have 4)"),
    ("patch_size", 16, "patch 16 (the weights have 8)"),
    ("hidden_act", ["gelu"], "hidden_act ['gelu'] is not supported"),
])
def test_clip_transformers_config_contradicting_the_tensors_is_refused(made, tmp_path, key, value, message):
    _refused(_lie(made["clip"], tmp_path / "bad", lambda c: c.update({key: value})), message, tmp_path)


def test_newer_transformers_heads_agree_with_num_heads(made):
    """The honest folders read with the config's heads; a --num-heads that contradicts them is refused."""
    for name in ("dinov3", "clip"):
        assert read_checkpoint(made[name]).spec.num_heads == 2
        with pytest.raises(SpecMismatchError, match="--num-heads 4 contradicts"):
            read_checkpoint(made[name], num_heads=4)


@pytest.mark.parametrize("key, value, message", [
    ("width", 64, "width 64 (the weights have 32)"),
    ("layers", 12, "depth 12 (the weights have 4)"),
    ("patch_size", 16, "patch 16 (the weights have 8)"),
    ("head_width", 12, "head_width 12 does not divide the weights' width 32"),
    ("head_width", True, "head_width must be an integer"),
    ("head_width", -16, "head_width must be an integer"),
    ("layers", True, "layers must be an integer from 1 to 256"),
    ("norm_kwargs", {"eps": -1}, "eps must be a number between 0 and 1"),
    ("norm_kwargs", [1], "norm_kwargs must be a mapping"),
])
def test_open_clip_config_contradicting_the_tensors_is_refused(made, tmp_path, key, value, message):
    """Before: head_width was divided into the width unchecked (12: 2 heads of 16), eps taken as is."""
    def edit(cfg: dict) -> None:
        cfg["model_cfg"]["vision_cfg"][key] = value

    _refused(_lie(made["open_clip"], tmp_path / "bad", edit, "open_clip_config.json"), message, tmp_path)


def test_open_clip_heads_come_from_head_width(made, tmp_path):
    assert read_checkpoint(made["open_clip"]).spec.num_heads == 2
    with pytest.raises(SpecMismatchError, match="--num-heads 4 contradicts"):
        read_checkpoint(made["open_clip"], num_heads=4)

    def edit(cfg: dict) -> None:
        cfg["model_cfg"]["quick_gelu"] = "yes"

    bad = _lie(made["open_clip"], tmp_path / "q", edit, "open_clip_config.json")
    _refused(bad, "quick_gelu must be true", tmp_path)


def _model_args(key: str, value) -> Callable[[dict], None]:
    def edit(cfg: dict) -> None:
        cfg["model_args"][key] = value
    return edit


@pytest.mark.parametrize("name", ["eva02", "siglip"])
@pytest.mark.parametrize("value, message", [
    (True, "got True"), (-4, "got -4"), ("2", "got '2'"), (3, "3 heads do not divide"), (10**9, "from 1 to"),
])
def test_timm_newer_model_args_of_the_wrong_type_or_value_are_refused(made, tmp_path, name, value, message):
    _refused(_lie(made[name], tmp_path / "bad", _model_args("num_heads", value)), message, tmp_path)


@pytest.mark.parametrize("name, arch", [("eva02", "eva02_large_patch14_224"),
                                        ("siglip", "vit_large_patch16_siglip_256")])
def test_timm_newer_architecture_of_another_size_is_refused(made, tmp_path, name, arch):
    """An architecture whose size the weights do not have (its defaults: width 1024, 16 heads)."""
    def edit(cfg: dict) -> None:
        cfg["architecture"] = arch
        for key in ("embed_dim", "depth", "num_heads"):
            cfg["model_args"].pop(key)

    _refused(_lie(made[name], tmp_path / "large", edit), "width 1024 (the weights have 32)", tmp_path)
    assert read_checkpoint(made[name]).spec.num_heads == 2  # the honest folder still converts


@pytest.mark.parametrize("value", ["x", True, [0, 0], [4, 4, 4], 10**6])
def test_eva02_ref_feat_shape_of_the_wrong_type_is_refused(made, tmp_path, value):
    """Before: ``tuple(True)`` / ``"x"`` reached the catch-all, 0 a RoPE grid of nothing."""
    bad = _lie(made["eva02"], tmp_path / "bad", _model_args("ref_feat_shape", value))
    _refused(bad, "ref_feat_shape must be one or two integers", tmp_path)
