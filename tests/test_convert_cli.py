"""`vitinit convert` / `vitinit inspect` end to end, through the CLI, and their failure modes."""

from __future__ import annotations

import json
import os

import pytest
import torch
from _detectron2 import import_detectron2
from fixtures import make_fixtures as mf
from timm.models.beit import Beit
from timm.models.vision_transformer import VisionTransformer
from typer.testing import CliRunner
from vitinit_cli.main import app

from vitinit.io.save import sha256_file
from vitinit.modeling.vit import DetectionViT, load_backbone_state
from vitinit.targets.vitdet import read_vitdet

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    mf.mae_checkpoint(root / "mae.pth")
    mf.beit_checkpoint(root / "beit.pth")
    mf.deit_checkpoint(root / "deit.pth")
    return root


def run(*args: str):
    return runner.invoke(app, list(args))


def assert_one_line_failure(result, *, contains: str) -> None:
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert contains in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_convert_default_name_sha_and_metadata(files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run(
        "convert", str(files / "mae.pth"), "--num-heads", "2", "--size", "64", "--window-size", "4", "--pth"
    )
    assert res.exit_code == 0, res.output
    out = tmp_path / "mae-custom-w32d4-vitdet-64.safetensors"
    assert f"wrote {out.name}" in res.output and f"sha256 {sha256_file(out)}" in res.output
    w = read_vitdet(out)
    assert w.metadata["format"] == "vitinit.vitdet" and w.metadata["source_sha256"] == sha256_file(
        files / "mae.pth"
    )
    prov = json.loads(w.metadata["provenance"])
    assert (
        prov["family"] == "mae" and prov["normalization"]["grid"] == [8, 8] and "decoder_*" in prov["dropped"]
    )
    load_backbone_state(DetectionViT(w.config), w.state_dict)
    copy = read_vitdet(tmp_path / "mae-custom-w32d4-vitdet-64.pth")
    assert all(torch.equal(copy.state_dict[k], v) for k, v in w.state_dict.items())


def test_users_example_as_typed(tmp_path, monkeypatch):
    """`vitinit convert --from beit --to vitdet --size 1024` with the registry download replaced by a file."""
    beit = Beit(
        img_size=224,
        patch_size=16,
        embed_dim=192,
        depth=12,
        num_heads=3,
        num_classes=0,
        use_abs_pos_emb=False,
        use_shared_rel_pos_bias=True,
        init_values=0.1,
        use_fc_norm=False,
    )
    src = tmp_path / "beit_vit_tiny_pt.pth"
    torch.save({"model": beit.state_dict()}, src)
    calls = []

    def fake_resolve(source, *, family, model="vit-b", **kw):
        calls.append((source, family, model))
        return src

    monkeypatch.setattr("vitinit.io.remote.resolve_source", fake_resolve)
    monkeypatch.chdir(tmp_path)
    res = run("convert", "--from", "beit", "--to", "vitdet", "--size", "1024")
    assert res.exit_code == 0, res.output
    assert calls == [(None, "beit", "vit-b")]
    w = read_vitdet(tmp_path / "beit-vitt-vitdet-1024.safetensors")
    assert w.config.grid == (64, 64) and w.config.global_block_indexes == (2, 5, 8, 11)
    assert w.state_dict["rel_pos_global.relative_position_bias_table"].shape == (127 * 127, 3)
    assert w.state_dict["blocks.0.gamma_1"].shape == (192,)


def test_inspect_prints_format_keys_dropped_and_plan(files):
    res = run("inspect", str(files / "beit.pth"), "--num-heads", "2")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for expected in (
        "format: beit",
        "blocks.{0..3}.attn.qkv.weight",
        "lm_head.*",
        "mask_token",
        "zeros at 128x128 (source has none)",  # BEiT has no abs pos: the default adds nothing
        "layer scale",
    ):
        assert expected in text, expected


def test_inspect_shows_a_converted_backbone_provenance(files, tmp_path):
    """Before: inspect tried the readers on vitinit's own output and read it as BEiT (unexpected key
    rel_pos_global...). The metadata marks it: inspect shows where it came from (file and .pth copy)."""
    out = tmp_path / "mae-vitdet.safetensors"
    res = run("convert", str(files / "mae.pth"), "--num-heads", "2", "--size", "64", "--window-size", "4",
              "-o", str(out), "--pth")
    assert res.exit_code == 0, res.output
    for path in (out, out.with_suffix(".pth")):
        res = runner.invoke(app, ["inspect", str(path)], env={"COLUMNS": "200"})
        assert res.exit_code == 0, res.output
        text = " ".join(res.output.split())
        for expected in ("vitdet backbone", "family │ mae", sha256_file(files / "mae.pth"), "decoder_*",
                         "normalized: grid", "[8, 8]", '"window_size": 4'):
            assert expected in text, (expected, res.output)
        assert "error" not in text and "unexpected key" not in text


def test_detectron2_target(files, tmp_path):
    out = tmp_path / "d2.pth"
    res = run("convert", str(files / "beit.pth"), "--to", "detectron2", "--num-heads", "2", "-o", str(out))
    assert_one_line_failure(res, contains="--drop-rel-pos")
    assert not out.exists()
    res = run("convert", str(files / "mae.pth"), "--to", "detectron2", "--num-heads", "2", "-o", str(out))
    assert res.exit_code == 0, res.output
    ckpt = torch.load(out, weights_only=True)
    model = ckpt["model"]
    src = torch.load(files / "mae.pth", weights_only=False)["model"]
    assert torch.equal(model["backbone.net.pos_embed"], src["pos_embed"])  # pre-training grid, cls slot kept
    assert torch.equal(model["backbone.net.blocks.3.attn.qkv.weight"], src["blocks.3.attn.qkv.weight"])
    # depth 4: every block is the last of its quarter, so all are global (grid 1024 / 8 = 128)
    assert all(
        model[f"backbone.net.blocks.{i}.attn.rel_pos_{a}"].shape == (2 * 128 - 1, 16)
        for i in range(4)
        for a in "hw"
    )
    assert not any(k.endswith(("cls_token", "norm.weight")) and "blocks" not in k for k in model)
    res = run(
        "convert",
        str(files / "beit.pth"),
        "--to",
        "detectron2",
        "--num-heads",
        "2",
        "-o",
        str(out),
        "--overwrite",
        "--drop-rel-pos",
    )
    assert res.exit_code == 0, res.output
    assert "gamma_1" not in " ".join(torch.load(out, weights_only=True)["model"])


# ------------------------------------------------------------------------------------------------------
# Bad input: one line, exit != 0, no output left, source untouched


def _bad_sources(files, tmp):
    sd = torch.load(files / "deit.pth", weights_only=True)["model"]
    sd["blocks.1.attn.proj.weight"] = torch.zeros(mf.WIDTH, mf.WIDTH + 1)
    torch.save({"model": sd}, tmp / "wrong_shape.pth")
    torch.save({"model": {"conv1.weight": torch.zeros(4, 3, 3, 3)}}, tmp / "resnet.pth")
    (tmp / "empty.pth").write_bytes(b"")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp / 'PWNED'}",))

    torch.save({"model": Evil()}, tmp / "evil.pth")
    return {
        "wrong_shape": (["wrong_shape.pth", "--num-heads", "2"], "blocks.1.attn.proj.weight"),
        "unknown_format": (["resnet.pth"], "unknown checkpoint format"),
        "model_contradicts": ([str(files / "mae.pth"), "--model", "vit-l"], "vit-l expects width 1024"),
        "empty_file": (["empty.pth"], "empty"),
        "malicious_pickle": (["evil.pth"], "refused"),
    }


def test_bad_input_gives_one_line_and_leaves_nothing(files, tmp_path):
    cases = _bad_sources(files, tmp_path)
    for name, (args, message) in cases.items():
        src = args[0] if os.path.isabs(args[0]) else str(tmp_path / args[0])
        before = sha256_file(src)
        out = tmp_path / f"{name}.safetensors"
        res = run("convert", src, *args[1:], "-o", str(out))
        assert_one_line_failure(res, contains=message)
        assert not out.exists(), name
        assert sha256_file(src) == before, name
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}")], name  # no temp file
    assert not (tmp_path / "PWNED").exists()


def test_existing_output_needs_overwrite(files, tmp_path):
    out = tmp_path / "taken.safetensors"
    out.write_bytes(b"keep me")
    before = sha256_file(files / "mae.pth")
    res = run("convert", str(files / "mae.pth"), "--num-heads", "2", "--size", "64", "-o", str(out))
    assert_one_line_failure(res, contains="--overwrite")
    assert out.read_bytes() == b"keep me" and sha256_file(files / "mae.pth") == before
    res = run(
        "convert", str(files / "mae.pth"), "--num-heads", "2", "--size", "64", "-o", str(out), "--overwrite"
    )
    assert res.exit_code == 0 and read_vitdet(out).config.img_size == 64


@pytest.mark.parametrize(
    "extra",
    [
        ("--to", "detectron2", "-o", "{src}"),  # the output is the source itself
        ("-o", "{stem}.safetensors", "--pth"),  # the .pth copy would land on the source
    ],
)
def test_the_source_is_never_overwritten_even_with_overwrite(tmp_path, extra):
    src = tmp_path / "mae.pth"
    mf.mae_checkpoint(src)
    before = sha256_file(src)
    args = [a.format(src=src, stem=src.with_suffix("")) for a in extra]
    res = run("convert", str(src), "--num-heads", "2", "--size", "64", "--overwrite", *args)
    assert_one_line_failure(res, contains="is the source checkpoint")
    assert sha256_file(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mae.pth"]


def test_bad_options_are_one_line_errors(files, tmp_path):
    res = run("convert", str(files / "mae.pth"), "--to", "mmdet", "-o", str(tmp_path / "x.safetensors"))
    assert_one_line_failure(res, contains="--to must be one of")
    res = run("convert", str(files / "mae.pth"), "--from", "beit", "-o", str(tmp_path / "x.safetensors"))
    assert_one_line_failure(res, contains="not a beit checkpoint")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------------
# Optional: upstream detectron2's own ViT (skipped unless $VITINIT_DETECTRON2_SRC points at its source)


def test_detectron2_output_loads_into_upstream_vit_and_matches(files, tmp_path):
    d2vit = import_detectron2("detectron2.modeling.backbone.vit")
    from fixtures.reference import timm_vit_features

    out = tmp_path / "mae_d2.pth"
    args = ("convert", str(files / "mae.pth"), "--to", "detectron2", "--num-heads", "2", "--size", "32")
    assert run(*args, "-o", str(out)).exit_code == 0
    state = torch.load(out, weights_only=True)["model"]
    net = d2vit.ViT(
        img_size=mf.IMG, patch_size=mf.PATCH, embed_dim=mf.WIDTH, depth=mf.DEPTH, num_heads=mf.HEADS,
        drop_path_rate=0.0, window_size=0, window_block_indexes=(), use_rel_pos=True,
        pretrain_img_size=mf.IMG, pretrain_use_cls_token=True, out_feature="last_feat",
    ).eval()
    net.load_state_dict({k.removeprefix("backbone.net."): v for k, v in state.items()}, strict=True)
    x = torch.randn(2, 3, mf.IMG, mf.IMG)
    with torch.no_grad():
        ours = net(x)["last_feat"].flatten(2).transpose(1, 2)
    # Reference: timm's ViT loaded with the original MAE file's encoder.
    sd = torch.load(files / "mae.pth", weights_only=False)["model"]
    source = VisionTransformer(**mf.VIT_KW, num_classes=0).eval()
    source.load_state_dict({k: v for k, v in sd.items() if not k.startswith(("decoder_", "mask_token"))})
    assert (ours - timm_vit_features(source, x)).abs().max() <= 1e-5
