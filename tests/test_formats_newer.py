"""Newer layouts (timm hub folders, DINOv2 ± registers, BEiT v2, data2vec) and refused inputs.

Each layout is written by the real model code (tests/fixtures/make_newer.py), read by auto-detection
(``--from`` only where two families share one layout) and compared with that model on patch tokens at its
pre-training resolution (patch 14 for DINOv2: no resampling), ≤ 1e-5.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import timm
import torch
from fixtures import make_fixtures as mf
from fixtures import make_newer as mn
from fixtures.layouts import NEWER
from fixtures.reference import backbone_features, converted_backbone

from vitinit.errors import CheckpointFormatError
from vitinit.formats import read_checkpoint


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("newer")
    return {name: (root / c.name, c.make(root / c.name)) for name, c in NEWER.items()}


def _read(name: str, path, **kw):
    case = NEWER[name]
    heads = mf.HEADS if case.needs_heads else None
    return read_checkpoint(path, family=case.from_family or "auto", num_heads=heads, **kw)


@pytest.mark.parametrize("name", list(NEWER))
def test_newer_layout_is_detected_and_matches_its_source_model(made, name):
    path, source = made[name]
    ckpt = _read(name, path)
    case = NEWER[name]
    assert (ckpt.provenance.family, ckpt.provenance.format) == (case.family, case.format)
    s = ckpt.spec
    grid = s.pretrain_grid[0]
    assert s.patch_size == (mn.DINO_PATCH if case.family == "dinov2" else mf.PATCH) and grid == mf.GRID
    x = torch.randn(
        2, 3, grid * s.patch_size, grid * s.patch_size, generator=torch.Generator().manual_seed(0)
    )
    reference = case.reference(source, x)
    for layer_scale in ("keep", "fold") if s.layer_scale else ("keep",):
        net = converted_backbone(ckpt, layer_scale=layer_scale)  # the default options are lossless
        diff = (backbone_features(net, x) - reference).abs().max().item()
        assert diff <= 1e-5, f"{name} ({layer_scale}): max |diff| {diff:.2e}"


def test_timm_folder_names_its_family_and_head_count(made):
    path, _ = made["timm_folder_vit"]
    ckpt = read_checkpoint(path)  # no --num-heads: model_args.num_heads
    assert ckpt.spec.num_heads == mf.HEADS and ckpt.provenance.family == "supervised"
    assert any("model_args.num_heads" in n for n in ckpt.provenance.notes)
    assert read_checkpoint(path, family="supervised").provenance.family == "supervised"
    with pytest.raises(
        CheckpointFormatError, match="not a mocov3 checkpoint.*architecture 'vit_base_patch16_224'"
    ):
        read_checkpoint(path, family="mocov3")
    tiny = read_checkpoint(made["timm_folder_vit_default_heads"][0])  # no num_heads in model_args
    assert tiny.spec.num_heads == 3 and any(
        "vit_tiny_patch16_224 default" in n for n in tiny.provenance.notes
    )


def test_timm_folder_refuses_architectures_of_other_families(tmp_path):
    mn.timm_folder(tmp_path / "flexivit", "flexivit_small")
    with pytest.raises(CheckpointFormatError, match="flexivit_small"):
        read_checkpoint(tmp_path / "flexivit")


def test_hf_timm_repository_converts_by_auto_detection(tmp_path, monkeypatch):
    """hf://timm/... resolves to timm's folder (config.json + model.safetensors), served on 127.0.0.1."""
    from test_remote import COMMIT, _Server

    from vitinit.io.remote import resolve_source

    mn.timm_folder(
        tmp_path / "src",
        "vit_small_patch14_dinov2",
        init_values=0.1,
        img_size=mn.DINO_IMG,
        patch_size=mn.DINO_PATCH,
    )
    files = {n: (tmp_path / "src" / n).read_bytes() for n in ("config.json", "model.safetensors")}

    def routes(path: str):
        parts = path.split("?")[0].strip("/").split("/")
        if parts[:4] == ["api", "models", "timm", "vit_small_patch14_dinov2.lvd142m"]:
            if len(parts) >= 6 and parts[4] == "tree":
                tree = [
                    {"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                    for f, d in files.items()
                ]
                return 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}
            info = {
                "id": "timm/vit_small_patch14_dinov2.lvd142m",
                "sha": COMMIT,
                "siblings": [{"rfilename": f} for f in files],
            }
            return 200, json.dumps(info).encode(), {"Content-Type": "application/json"}
        if len(parts) >= 5 and parts[2] == "resolve" and "/".join(parts[4:]) in files:
            data = files["/".join(parts[4:])]
            return 200, data, {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": COMMIT}
        return 404, b"", {"X-Error-Code": "EntryNotFound"}

    srv = _Server(routes)
    try:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        folder = resolve_source(
            "hf://timm/vit_small_patch14_dinov2.lvd142m", family="auto", cache_dir=tmp_path / "cache"
        )
    finally:
        srv.close()
    ckpt = read_checkpoint(folder)
    assert ckpt.provenance.family == "dinov2" and ckpt.spec.num_heads == mf.HEADS
    assert ckpt.spec.patch_size == 14 and ckpt.spec.layer_scale


def test_dinov2_grid_at_518_and_dropped_tokens(tmp_path, made):
    """The released pre-training resolution: 518 px / patch 14 = 37x37, plus one cls row."""
    model = timm.create_model(
        "vit_small_patch14_dinov2", pretrained=False, embed_dim=32, depth=1, num_heads=2
    )
    assert model.pos_embed.shape[1] == 1 + 37 * 37
    sd = dict(model.state_dict(), mask_token=torch.zeros(1, 32), register_tokens=torch.zeros(1, 4, 32))
    torch.save(sd, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    ckpt = read_checkpoint(tmp_path / "dinov2_vits14_reg4_pretrain.pth", num_heads=2)
    assert ckpt.spec.pretrain_grid == (37, 37) and ckpt.spec.num_prefix_tokens == 1
    assert {"cls_token", "mask_token", "register tokens"} <= set(ckpt.provenance.dropped)
    assert "register" in ckpt.provenance.dropped["register tokens"]
    assert "blocks.0.gamma_1" in ckpt.tensors  # ls1.gamma kept as layer scale
    hf = read_checkpoint(made["dinov2_hf_reg"][0]).provenance.dropped
    assert "embeddings.register_tokens" in hf


def test_dinov2_giant_swiglu_is_refused(tmp_path, made):
    sd = torch.load(made["dinov2_official"][0], weights_only=True)
    for i in range(mf.DEPTH):
        sd[f"blocks.{i}.mlp.w12.weight"] = sd.pop(f"blocks.{i}.mlp.fc1.weight").repeat(2, 1)
    torch.save(sd, tmp_path / "dinov2_vitg14.pth")
    with pytest.raises(CheckpointFormatError, match="SwiGLU"):
        read_checkpoint(tmp_path / "dinov2_vitg14.pth", num_heads=2)


# ---------------------------------------------------------------------------------------------------------
# Refused or mis-detected inputs (issue 13), each built at test time from a valid fixture.


def test_integer_weights_are_refused(tmp_path):
    mf.deit_checkpoint(tmp_path / "deit.pth")
    sd = torch.load(tmp_path / "deit.pth", weights_only=True)["model"]
    sd["blocks.0.attn.qkv.weight"] = (sd["blocks.0.attn.qkv.weight"] * 100).to(torch.int8)
    torch.save({"model": sd}, tmp_path / "int8.pth")
    before = (tmp_path / "int8.pth").read_bytes()
    with pytest.raises(CheckpointFormatError, match=r"'blocks.0.attn.qkv.weight' has dtype int8.*floating"):
        read_checkpoint(tmp_path / "int8.pth", num_heads=2)
    assert (tmp_path / "int8.pth").read_bytes() == before
    # Integer index buffers are not weights: BEiT's relative_position_index (int64) is dropped, not refused.
    mf.beit_checkpoint(tmp_path / "beit.pth")
    assert read_checkpoint(tmp_path / "beit.pth", num_heads=2).provenance.family == "beit"


def test_layer_scale_under_two_names_is_refused(tmp_path):
    mf.beit_checkpoint(tmp_path / "beit.pth")
    sd = torch.load(tmp_path / "beit.pth", weights_only=True)["model"]
    sd["blocks.1.ls1.gamma"] = sd["blocks.1.gamma_1"] * 2
    torch.save({"model": sd}, tmp_path / "both.pth")
    with pytest.raises(CheckpointFormatError, match=r"block 1 has blocks.1.gamma_1 and blocks.1.ls1.gamma"):
        read_checkpoint(tmp_path / "both.pth", num_heads=2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_mae_is_detected_as_mae(tmp_path, dtype):
    mf.mae_checkpoint(tmp_path / "mae.pth", full=False)
    sd = torch.load(tmp_path / "mae.pth", weights_only=False)["model"]
    torch.save({"model": {k: v.to(dtype) for k, v in sd.items()}}, tmp_path / "mae_half.pth")
    ckpt = read_checkpoint(tmp_path / "mae_half.pth", num_heads=2)  # no 'args': the sin-cos decides
    assert ckpt.provenance.family == "mae"
    assert any("sin-cos" in n for n in ckpt.provenance.notes)


def test_registry_has_the_newer_initializations():
    from vitinit.io import registry

    for model in ("vit-s", "vit-b", "vit-l"):
        plain, reg = registry.official_checkpoint("dinov2", model), registry.WITH_REGISTERS[("dinov2", model)]
        letter = model[-1]
        assert (
            plain.url
            == f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{letter}14/dinov2_vit{letter}14_pretrain.pth"
        )
        assert reg.url.endswith(f"dinov2_vit{letter}14_reg4_pretrain.pth") and not plain.has_hash
    assert registry.official_checkpoint("beitv2", "vit-b").filename == "beitv2_base_patch16_224_pt1k.pth"
    assert "hf://facebook/data2vec-vision-base" in registry.NOT_RELEASED[("data2vec", "vit-b")]


def test_dinov2_recipe_resamples_the_source_to_patch_16(tmp_path):
    """recipes/dinov2-vitb.yaml sets model.backbone.patch_size 16: the bench resamples the 14-px source."""
    from pathlib import Path

    from vitinit.recipes import load_recipe, to_plain

    from vitinit.bench.weights import load_weights

    mn.timm_folder(
        tmp_path / "dinov2", "vit_small_patch14_dinov2", init_values=0.1, patch_size=14, img_size=56
    )
    overrides = [
        f"weights.source={tmp_path / 'dinov2'}",
        "model.variant=custom",
        "model.img_size=64",
        "model.window_size=4",
    ]
    recipe = to_plain(load_recipe(Path(__file__).parents[1] / "recipes" / "dinov2-vitb.yaml", overrides))
    config, state, provenance = load_weights(recipe)
    assert config.patch_size == 16 and state["patch_embed.proj.weight"].shape == (mf.WIDTH, 3, 16, 16)
    assert state["pos_embed"].shape == (1, 4, 4, mf.WIDTH) and "blocks.0.gamma_1" in state
    assert any("14 -> 16" in n for n in provenance["notes"])


def test_cli_converts_a_timm_dinov2_folder_to_patch_16(made, tmp_path):
    """`vitinit convert FOLDER --patch-size 16`: auto-detected, head count from config.json, resampled."""
    import json as json_

    from typer.testing import CliRunner
    from vitinit_cli.main import app

    from vitinit.targets.vitdet import read_vitdet

    out = tmp_path / "dinov2-p16.safetensors"
    args = ["convert", str(made["timm_folder_dinov2"][0]), "--patch-size", "16", "--size", "64"]
    res = CliRunner().invoke(app, [*args, "--window-size", "4", "-o", str(out)])
    assert res.exit_code == 0, res.output
    written = read_vitdet(out)
    prov = json_.loads(written.metadata["provenance"])
    assert prov["family"] == "dinov2" and any("14 -> 16" in n for n in prov["notes"])
    assert written.config.patch_size == 16
    bad = CliRunner().invoke(app, [*args, "--from", "mocov3", "-o", str(tmp_path / "x.safetensors")])
    assert bad.exit_code != 0 and "it looks like dinov2" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "x.safetensors").exists()


def test_every_reader_has_the_same_shape():
    """Issue 11's reader protocol: FAMILIES, score(raw) -> Score, read(raw, *, model, num_heads, family)."""
    import inspect

    from vitinit.families import FAMILIES
    from vitinit.formats import READERS, Score

    for reader in READERS:
        assert set(reader.FAMILIES) <= set(FAMILIES), reader.__name__
        assert inspect.signature(reader.score).return_annotation in (Score, "Score")
        params = inspect.signature(reader.read).parameters
        assert {"model", "num_heads", "family"} <= set(params), reader.__name__
        assert inspect.signature(reader.read).return_annotation in ("Checkpoint",), reader.__name__


def test_args_entry_names_the_family(tmp_path):
    """A training checkpoint's args.model is evidence before the keys (here BEiT v2's pre-training name)."""
    import argparse

    mf.beit_checkpoint(tmp_path / "beit.pth")
    sd = torch.load(tmp_path / "beit.pth", weights_only=True)["model"]
    args = argparse.Namespace(model="beit_base_patch16_224_8k_vocab_cls_pt")
    torch.save({"model": sd, "args": args}, tmp_path / "beitv2_train.pth")
    ckpt = read_checkpoint(tmp_path / "beitv2_train.pth", num_heads=2)
    assert ckpt.provenance.family == "beitv2"
    assert any("args.model = 'beit_base_patch16_224_8k_vocab_cls_pt'" in n for n in ckpt.provenance.notes)
