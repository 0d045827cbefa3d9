"""Hostile inputs, round two (issue 17): configs that contradict the weights, values out of range, files and
answers too big, links that loop. Each case builds its input here, small, and ends in one line naming what
is wrong (never a silently different backbone, never the "internal error" line)."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import pytest
import torch
from _hostile import INTERNAL_ERROR, one_line_error, run
from fixtures import make_fixtures as mf
from fixtures import make_newer as mn

from vitinit import bench
from vitinit.engine.run_folder import RunFolder, RunFolderError, read_jsonl
from vitinit.errors import CheckpointFormatError, ConfigError, SpecMismatchError, TrainingError
from vitinit.formats import read_checkpoint
from vitinit.io.save import HashCancelled

TINY = ("--size", "64", "--window-size", "4")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("made")
    out = {"timm": root / "timm", "vit": root / "vit", "d2v": root / "d2v", "mae": root / "mae.pth"}
    mn.timm_folder(out["timm"], embed_dim=64, num_heads=4)
    mf.hf_folder(out["vit"], "vit")
    mn.data2vec_hf(out["d2v"])
    mf.mae_checkpoint(out["mae"])
    return out


def _copy(folder: Path, dst: Path, **config) -> Path:
    """``folder`` (config.json + weights) copied to ``dst`` with config.json's keys set (None: removed)."""
    dst.mkdir()
    for f in folder.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in config.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# ---------------------------------------------------------------------------------------------------------
# 1. Configs that contradict the weights
# ---------------------------------------------------------------------------------------------------------


def test_timm_architecture_of_another_size_is_refused(made, tmp_path):
    """Before: vit_large over 64-wide, 4-head weights converted with vit_large's 16 heads."""
    cfg = json.loads((made["timm"] / "config.json").read_text())
    args = {k: v for k, v in cfg["model_args"].items() if k not in ("embed_dim", "num_heads", "depth")}
    bad = _copy(made["timm"], tmp_path / "large", architecture="vit_large_patch16_224", model_args=args)
    with pytest.raises(SpecMismatchError, match="contradicts the weights: width 1024 .the weights have 64"):
        read_checkpoint(bad)
    one_line_error(run("convert", str(bad), *TINY, "-o", str(tmp_path / "o.safetensors")), "width 1024")
    assert not (tmp_path / "o.safetensors").exists()
    assert read_checkpoint(made["timm"]).spec.num_heads == 4  # the honest folder still converts


@pytest.mark.parametrize(
    "num_heads, message",
    [(True, "got True"), (-4, "got -4"), ("4", "got '4'"), (3, "3 heads do not divide"),
     (10**9, "from 1 to")],
)
def test_timm_model_args_of_the_wrong_type_or_value_are_refused(made, tmp_path, num_heads, message):
    """Before: ``num_heads: true`` wrote a file safetensors could not read; -4 and strings crashed."""
    cfg = json.loads((made["timm"] / "config.json").read_text())
    bad = _copy(made["timm"], tmp_path / "bad", model_args={**cfg["model_args"], "num_heads": num_heads})
    with pytest.raises((CheckpointFormatError, SpecMismatchError), match=message):
        read_checkpoint(bad)


def test_timm_huge_depth_is_refused_before_building_anything(made, tmp_path):
    """Before: a huge depth reached timm (GBs, or the catch-all)."""
    cfg = json.loads((made["timm"] / "config.json").read_text())
    bad = _copy(made["timm"], tmp_path / "deep", model_args={**cfg["model_args"], "depth": 10**9})
    with pytest.raises(CheckpointFormatError, match="depth must be an integer from 1 to 256"):
        read_checkpoint(bad)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("hidden_size", 64, "width 64 (the weights have 32)"),
        ("num_hidden_layers", 12, "depth 12 (the weights have 4)"),
        ("patch_size", 16, "patch 16 (the weights have 8)"),
        ("num_attention_heads", 3, "3 heads do not divide the weights' width 32"),
        ("num_attention_heads", True, "num_attention_heads must be an integer"),
        ("num_attention_heads", "2", "num_attention_heads must be an integer"),
        ("layer_norm_eps", -1e-6, "layer_norm_eps must be a number between 0 and 1"),
        ("layer_norm_eps", float("inf"), "layer_norm_eps must be a number between 0 and 1"),
        ("layer_norm_eps", "tiny", "layer_norm_eps must be a number between 0 and 1"),
    ],
)
def test_transformers_config_contradicting_the_tensors_is_refused(made, tmp_path, key, value, message):
    """Before: the config's head count was used as is; an impossible eps or a string crashed."""
    bad = _copy(made["vit"], tmp_path / "bad", **{key: value})
    with pytest.raises((CheckpointFormatError, SpecMismatchError), match=re.escape(message)):
        read_checkpoint(bad)


def test_transformers_heads_contradicting_num_heads_is_refused(made):
    """Before: --num-heads silently won over config.json."""
    with pytest.raises(SpecMismatchError, match="--num-heads 4 contradicts"):
        read_checkpoint(made["vit"], num_heads=4)
    assert read_checkpoint(made["vit"], num_heads=mf.HEADS).spec.num_heads == mf.HEADS


def test_model_type_contradicting_the_keys_is_refused(made, tmp_path):
    """Before: data2vec tensors labelled dinov2 converted as DINOv2."""
    bad = _copy(made["d2v"], tmp_path / "label", model_type="dinov2")
    with pytest.raises(CheckpointFormatError, match="model_type 'dinov2' but the keys use BEiT modules"):
        read_checkpoint(bad)
    assert read_checkpoint(made["d2v"]).provenance.family == "data2vec"


def test_dinov2_chunk_holding_a_block_twice_is_refused(tmp_path):
    """Before: the last copy silently won."""
    src = tmp_path / "chunked.pth"
    mn.dinov2_official(src, chunks=2)
    sd = torch.load(src, weights_only=True)
    dup = "blocks.1.1.norm1.weight"  # block 1 lives in chunk 0 (blocks.0.1.*); chunk 1 holds it again
    sd[dup] = sd["blocks.0.1.norm1.weight"] + 1
    torch.save(sd, src)
    with pytest.raises(CheckpointFormatError, match="blocks.0.1.norm1.weight and blocks.1.1.norm1.weight"):
        read_checkpoint(src)


def test_tar_archive_of_checkpoints_is_refused(made, tmp_path):
    """Before: a real tar of two checkpoints converted one member's weights."""
    other = tmp_path / "other.pth"
    mf.mae_checkpoint(other, seed=9)
    bad = tmp_path / "two.pth.tar"
    with tarfile.open(bad, "w") as tar:
        tar.add(made["mae"], arcname="mae.pth")
        tar.add(other, arcname="other.pth")
    with pytest.raises(CheckpointFormatError, match=r"a tar archive \('mae.pth', 'other.pth'\)"):
        read_checkpoint(bad)
    one_line_error(run("convert", str(bad), "--num-heads", "2", *TINY), "not a checkpoint")


@pytest.mark.parametrize(
    "patch, message",
    [("0", "--patch-size (pixels) must be an integer from 2 to 64, got 0"), ("10000", "got 10000"),
     ("12", "--patch-size 12 does not divide --size 64")],
)
def test_patch_size_is_validated_before_reading_anything(tmp_path, patch, message):
    """Before: 0 was ignored, 10000 tried to allocate 78 GB."""
    missing = tmp_path / "not-there.pth"  # never opened: the options fail first
    one_line_error(run("convert", str(missing), "--patch-size", patch, *TINY), message)


# ---------------------------------------------------------------------------------------------------------
# 2. Bounded memory: files read whole are capped, nesting and numbers bounded, values quoted short
# ---------------------------------------------------------------------------------------------------------


def test_huge_config_json_is_refused_before_reading(made, tmp_path):
    """Before: a 1 GiB config.json was read whole (2.5 GB of RSS)."""
    bad = _copy(made["vit"], tmp_path / "big")
    with open(bad / "config.json", "r+b") as f:
        f.truncate(1 << 30)  # sparse: a 1 GiB config.json that costs no disk
    with pytest.raises(CheckpointFormatError, match="1024.0 MiB; at most 16 MiB is read"):
        read_checkpoint(bad)


def test_huge_preprocessor_config_is_not_read(made, tmp_path):
    """Before: a transformers folder's preprocessor_config.json (the source's mean/std) was read whole."""
    bad = _copy(made["vit"], tmp_path / "big-pre")
    with open(bad / "preprocessor_config.json", "wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB that costs no disk
    ckpt = read_checkpoint(bad)  # a hint, not the weights: ignored, as an unreadable one always was
    assert "preprocessor_config" not in str(ckpt.provenance.input_norm)


def _results_run(tmp_path, text: str) -> RunFolder:
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.results.write_text(text)
    return folder


@pytest.mark.parametrize(
    "text, message",
    [("[" * 100_000 + "]" * 100_000, "nested more than 64 levels"),
     ('{"iters": ' + "9" * 5000 + "}", "an integer of 5000 digits")],
    ids=["deep", "long-number"],
)
def test_results_json_nesting_and_numbers_are_bounded(tmp_path, text, message):
    """Before: both reached the catch-all (RecursionError, int conversion limit)."""
    folder = _results_run(tmp_path, text)
    with pytest.raises(RunFolderError, match=message):
        folder.read_results()
    one_line_error(run("report", str(folder.path)), message)


def test_metrics_line_is_read_with_a_cap(tmp_path, caplog):
    """Before: the file was read whole (a 1 GiB line cost 2.5 GB of RSS)."""
    path = tmp_path / "metrics.jsonl"
    with open(path, "w") as f:
        f.write('{"iter": 1}\n')
        f.write('{"pad": "' + "x" * (3 << 20) + '"}\n')  # one 3 MiB line: skipped, never held whole
        f.write('{"iter": 2}\n')
    assert read_jsonl(path) == [{"iter": 1}, {"iter": 2}]
    assert "metrics.jsonl:2 is over 1 MiB; skipped" in caplog.text


def test_recipe_file_is_capped(tmp_path):
    """Before: any size was parsed."""
    big = tmp_path / "big.yaml"
    big.write_text("_base_: demo.yaml\n# " + "x" * (2 << 20) + "\n")
    one_line_error(run("bench", str(big), "--dry-run"), "is over 1024 KiB")


def test_error_lines_quote_user_values_cut_short(made, tmp_path):
    """Before: a 10 MB architecture name and a 120 KB override were echoed whole."""
    bad = _copy(made["timm"], tmp_path / "long", architecture="clip_" + "x" * 1_000_000)
    line = one_line_error(run("convert", str(bad), *TINY), "not a supported initialization")
    assert len(line) < 700 and "1000005 characters" in line
    override = "train.seed=" + "9" * 120_000
    line = one_line_error(run("bench", "demo", "--dry-run", override), "train.seed")
    assert len(line) < 700


# ---------------------------------------------------------------------------------------------------------
# 3. Values that overflow, runs that do not fit, links that loop, recipes that read the environment
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [("train.seed=" + "9" * 32, "train.seed must be a finite number of at most 15 digits"),
     ("train.seed=-1", "train.seed must be ≥ 0"),
     ("weights.seed=4294967296", "weights.seed must be ≥ 0 and ≤ 2147483647"),
     ("optim.lr=1e400", "optim.lr must be a finite number"),
     ("model.img_size=1000000", "model.img_size must be ≥ 16 and ≤ 4096"),
     ("model.backbone.embed_dim=1000000", "model.backbone.embed_dim must be from 1 to 16384")],
)
def test_overrides_out_of_representable_range_fail_at_dry_run(override, message):
    """Before: accepted at --dry-run; lr=1e400 (inf) stopped training at iteration 0, img_size=1e6
    asked for 1.5 TB."""
    one_line_error(run("bench", "demo", "--dry-run", override), message)


def test_resume_with_a_checkpoint_of_another_model_is_refused_before_any_change(tmp_path):
    """Before: the run folder was rewritten, then loading failed half-way (the catch-all)."""
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    micro = ["model.img_size=64", "model.window_size=2", "data.synthetic.num_train=4",
             "data.synthetic.num_val=2", "data.synthetic.image_size=64", "data.epoch_images=4",
             "train.batch_size=2", "schedule.iters=4"]
    folder.write_recipe(bench.resolve("demo", micro))
    folder.checkpoints.mkdir()
    vit_l = {"backbone.vit.patch_embed.proj.weight": torch.zeros(1024, 3, 1, 1),
             "backbone.vit.blocks.23.norm1.weight": torch.zeros(1024)}
    torch.save({"iter": 2, "model": vit_l, "optimizer": {}, "scaler": {}, "rng": {}, "hooks": {}},
               folder.last_checkpoint)
    before = {p: p.read_bytes() for p in folder.path.rglob("*") if p.is_file()}
    with pytest.raises(TrainingError, match=r"is of another model \(ViT width 1024, depth 24\) than the "
                                            r"run's recipe demo \(custom\) \(ViT width 96, depth 4\)"):
        bench.run_bench(output_dir=folder.path, resume=True, progress=False)
    line = one_line_error(run("bench", "--resume", "-o", str(folder.path), "-q"), "is of another model")
    assert str(folder.last_checkpoint) in line
    assert {p: p.read_bytes() for p in folder.path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_symlink_loop_is_one_line(made, tmp_path, overwrite):
    """Before: a misleading "created by another process", or the link replaced."""
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop.name)
    args = ["convert", str(made["mae"]), "--num-heads", "2", *TINY, "-o", str(loop)]
    one_line_error(run(*args, *(["--overwrite"] if overwrite else [])), "is a symbolic link loop")
    assert loop.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["loop.safetensors"]


def test_environment_resolvers_are_refused_in_recipes_and_overrides(tmp_path, monkeypatch):
    """Before: ${oc.env:HF_TOKEN} in a recipe resolved, and --dry-run printed the token."""
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    leaky = tmp_path / "leaky.yaml"
    leaky.write_text("_base_: demo.yaml\nweights:\n  source: ${oc.env:HF_TOKEN}\n")
    line = one_line_error(run("bench", str(leaky), "--dry-run"), "calls an OmegaConf resolver")
    assert "hf_secret" not in line
    res = run("bench", "demo", "--dry-run", "weights.source=${oc.env:HF_TOKEN}")
    assert "hf_secret" not in one_line_error(res, "calls an OmegaConf resolver")
    with pytest.raises(ConfigError, match="resolver"):
        bench.resolve("demo", ["optim.lr=${oc.decode:'1e-3'}"])
    plain = run("bench", "demo", "--dry-run", "model.img_size=128")  # plain ${model.img_size} still works
    assert plain.exit_code == 0 and "image_size: 128" in plain.output


# ---------------------------------------------------------------------------------------------------------
# No hostile case reaches the catch-all
# ---------------------------------------------------------------------------------------------------------


def test_no_hostile_case_reaches_the_internal_error_line(made, tmp_path):
    """Every CLI call in the hostile-input modules goes through ``_hostile.run``, which fails the test on the
    "internal error" line; this test runs a corpus of the cheapest cases once more, side by side."""
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x02}q\x00." + b"\x00" * 64)
    corpus = [
        ("convert", str(junk)),
        ("convert", str(_copy(made["vit"], tmp_path / "a", num_attention_heads=None, hidden_size=True))),
        ("convert", str(_copy(made["vit"], tmp_path / "b", layer_norm_eps="x"))),
        ("convert", str(_copy(made["timm"], tmp_path / "c", model_args=[1, 2]))),
        ("convert", str(made["mae"]), "--size", "-3"),
        ("convert", str(made["mae"]), "--window-size", "0"),
        ("bench", "demo", "--dry-run", "train.batch_size=1e400"),
        ("bench", "demo", "--dry-run", "optim.lr=nan"),
    ]
    for args in corpus:
        res = run(*args)
        assert res.exit_code == 1 and INTERNAL_ERROR not in res.output, (args, res.output)


def test_a_failed_conversion_stops_hashing_its_source(tmp_path, monkeypatch):
    """The source is hashed by a thread from the start (issue 17's overlap); a source that then fails to
    parse must not keep the process reading a multi-GB file to the end before the error shows."""
    import time

    import vitinit.convert as conversion

    seen = {}

    def slow_hash(path, *, cancel):
        seen["stopped"] = cancel.wait(timeout=30)  # a hash that would take 30 s unless told to stop
        raise HashCancelled(str(path))

    monkeypatch.setattr(conversion, "source_sha256", slow_hash)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint" * 64)
    start = time.monotonic()
    one_line_error(run("convert", str(junk), *TINY), "not a readable PyTorch checkpoint")
    assert seen == {"stopped": True} and time.monotonic() - start < 20


def test_converted_file_with_deep_or_huge_metadata_is_one_line(tmp_path):
    from safetensors.torch import save_file

    deep = tmp_path / "deep.safetensors"
    save_file({"w": torch.zeros(2)}, str(deep), metadata={"format": "vitinit.vitdet", "backbone_config": "{}",
                                                          "provenance": "[" * 100_000 + "]" * 100_000})
    one_line_error(run("publish", str(deep), "--repo", "me/x", "--dry-run"), "unreadable vitdet metadata")
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "x" * 1_000_000})
    line = one_line_error(run("publish", str(other), "--repo", "me/x", "--dry-run"), "is not a converted")
    assert len(line) < 700
