"""The recipe schema: a typo, a wrong type or a bad value anywhere is one line naming the key, up front."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner
from vitinit.recipes import load_recipe
from vitinit.recipes import schema as S
from vitinit.recipes.check import list_knobs, parse_recipe
from vitinit_cli.main import app

from vitinit.bench import resolve
from vitinit.errors import ConfigError
from vitinit.modeling.mask_rcnn import MaskRCNNConfig
from vitinit.modeling.vit import ViTBackboneConfig

runner = CliRunner()

# (recipe, override, what the one-line error must say: the key, and what it accepts)
BAD = [
    ("mae-vitb", "model.pos_abs=randon", ["model.pos_abs", "pretrained, random, zero, none", "'random'"]),
    ("mae-vitb", "schedule.iters=abc", ["schedule.iters", "an integer"]),
    ("mae-vitb", "schedule.iters=2.5", ["schedule.iters", "an integer", "2.5"]),
    ("mae-vitb", "optim.lr=fast", ["optim.lr", "a number", "'fast'"]),
    ("mae-vitb", "train.batch_size=0", ["train.batch_size", "≥ 1", "got 0"]),
    ("mae-vitb", "schedule.epochs=-1", ["schedule.epochs", "> 0"]),
    ("mae-vitb", "optim.betas=[0.9]", ["optim.betas", "a list of 2 numbers"]),
    ("mae-vitb", "model.global_blocks=quartr", ["model.global_blocks", "quarter, none, all or a list"]),
    ("mae-vitb", "model.global_blocks=[0,x]", ["model.global_blocks", "[0, 'x']"]),
    ("mae-vitb", "weights.init=maee", ["weights.init", "random, supervised, mocov3, beit, mae, dinov2"]),
    ("mae-vitb", "train.amp=fp8", ["train.amp", "auto, bf16, fp16, none"]),
    ("mae-vitb", "train.grad_compression=int8", ["train.grad_compression", "none, bf16, fp16"]),
    ("mae-vitb", "model.attention=flash", ["model.attention", "auto, sdpa, flex"]),
    ("mae-vitb", "eval.num_workers=-1", ["eval.num_workers", "≥ 0"]),
    ("mae-vitb", "data.flip=maybe", ["data.flip", "true or false"]),
    # unknown keys, in every sub-tree (the open ones against their dataclass's fields)
    ("mae-vitb", "optim.lrr=1", ["unknown key optim.lrr", "did you mean lr", "weight_decay"]),
    ("mae-vitb", "foo.bar=1", ["unknown key foo", "model, weights, data"]),
    ("mae-vitb", "data.train.imgs=x", ["unknown key data.train.imgs", "images, annotations"]),
    ("mae-vitb", "model.detector.box_head_fcc=1", ["unknown key model.detector.box_head_fcc", "fc?"]),
    ("demo", "model.backbone.embed_dimm=8", ["unknown key model.backbone.embed_dimm", "embed_dim?"]),
    ("demo", "data.synthetic.num_trian=3", ["unknown key data.synthetic.num_trian", "num_train?"]),
    # values inside the open sub-trees are typed by their dataclass fields, and checked by them
    ("mae-vitb", "model.detector.box_head_fc=abc", ["model.detector.box_head_fc", "an integer"]),
    ("mae-vitb", "model.detector.anchor_sizes=[1,2]", ["model.detector", "anchor_sizes", "(5)"]),
    ("demo", "data.synthetic.noise=loud", ["data.synthetic.noise", "a number"]),
    ("mae-vitb", "model.backbone.depth=4", ["model.backbone.depth would be ignored", "mae weights"]),
    ("mae-vitb", "model.backbone.num_heads=4", ["model.backbone.num_heads would be ignored"]),
]


@pytest.mark.parametrize("name, override, expected", BAD, ids=[b[1] for b in BAD])
def test_bad_values_fail_at_load_with_the_key_and_allowed_values(name, override, expected):
    with pytest.raises(ConfigError) as e:
        resolve(name, [override])
    message = str(e.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message


@pytest.mark.parametrize(
    "section, typo",
    [("model", "pos_abss: none"), ("model.detector", "box_head_fcc: 1"), ("model.backbone", "depthh: 2"),
     ("data.synthetic", "num_vall: 2"), ("eval", "periodd: 2")],
)
def test_a_typo_in_a_recipe_file_is_an_error_too(tmp_path, section, typo):
    """Not only overrides: a user's recipe file is checked key by key, in every sub-tree."""
    lines, indent = [], ""
    for part in section.split("."):
        lines.append(f"{indent}{part}:")
        indent += "  "
    path = tmp_path / "mine.yaml"
    path.write_text("_base_: demo.yaml\n" + "\n".join(lines) + f"\n{indent}{typo}\n")
    with pytest.raises(ConfigError, match=f"unknown key {section}.{typo.split(':')[0]}"):
        load_recipe(path)


def test_a_recipe_missing_a_section_names_it(tmp_path):
    path = tmp_path / "bare.yaml"
    path.write_text("model: {variant: vit-b}\n")
    with pytest.raises(ConfigError, match="lacks model.backbone"):
        load_recipe(path)
    unset = tmp_path / "unset.yaml"
    unset.write_text("_base_: _base_coco.yaml\n")  # weights.init is ??? in the base
    with pytest.raises(ConfigError, match="weights.init is not set"):
        load_recipe(unset)


def test_open_subtrees_follow_the_dataclasses(monkeypatch):
    """Keys come from the fields, so a field another module adds is accepted without touching the schema."""
    detector = set(S.detector_fields())
    assert detector == {f.name for f in dataclasses.fields(MaskRCNNConfig)} - S._DETECTOR_SET_ELSEWHERE
    assert {"embed_dim", "depth", "num_heads", "mlp_hidden_dim"} <= set(S.backbone_fields())
    assert "img_size" not in S.backbone_fields()  # set from model.img_size, not model.backbone

    @dataclasses.dataclass(frozen=True)
    class Wider(MaskRCNNConfig):
        new_knob: int = 0

    monkeypatch.setattr(S, "MaskRCNNConfig", Wider)
    assert resolve("mae-vitb", ["model.detector.new_knob=3"])["model"]["detector"]["new_knob"] == 3
    with pytest.raises(ConfigError, match="model.detector.new_knob must be an integer"):
        resolve("mae-vitb", ["model.detector.new_knob=x"])


def test_the_typed_view_builds_the_detector_config():
    recipe = parse_recipe(resolve("demo", ["optim.lr=2e-3"]))
    assert recipe.optim.lr == 2e-3 and recipe.schedule.iters == 200 and recipe.train.batch_size == 4
    assert recipe.data.train.images and recipe.eval.num_workers == 0
    cfg = recipe.detector_config(ViTBackboneConfig(), num_classes=3)
    assert (cfg.box_head_fc, cfg.min_size, cfg.norm) == (256, 160, "BN")
    assert cfg.anchor_sizes == (16, 32, 64, 128, 256)
    assert recipe.synthetic_spec().num_train == 256


def test_dry_run_errors_are_one_line():
    for override in ("model.pos_abs=randon", "schedule.iters=2.5", "model.detector.box_head_fcc=1"):
        r = runner.invoke(app, ["bench", "mae-vitb", override, "--dry-run"])
        assert r.exit_code == 1 and r.output.startswith("error: ") and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1, r.output


def test_list_keys_prints_every_knob_with_type_and_value():
    r = runner.invoke(app, ["bench", "demo", "--list-keys"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    knobs = list_knobs(resolve("demo"))
    for k in knobs:
        assert k.key in r.output
    keys = {k.key: k for k in knobs}
    assert keys["train.grad_compression"].type == "one of none, bf16, fp16"
    assert keys["train.batch_size"].type == "an integer, ≥ 1 and ≤ 65536"
    assert keys["train.batch_size"].value == 4
    assert keys["model.detector.box_head_fc"].value == 256  # set by demo.yaml
    assert keys["model.detector.rpn_nms_thresh"].help.endswith("its default")  # MaskRCNNConfig's own default


def test_a_recipe_saved_before_the_newest_keys_still_resumes(tmp_path):
    """A run folder written before ``optim.optimizer`` / ``optim.momentum`` / ``eval.amp`` /
    ``train.loggers`` existed resumes with the keys' old behaviour, not a schema error."""
    from vitinit.recipes import check_saved_recipe, to_plain

    tree = to_plain(load_recipe("demo"))
    new_keys = (("optim", "optimizer"), ("optim", "momentum"), ("eval", "amp"), ("train", "loggers"))
    for section, key in new_keys:
        del tree[section][key]
    checked = check_saved_recipe(tree, tmp_path / "recipe.yaml")
    assert checked["optim"]["optimizer"] == "adamw" and checked["eval"]["amp"] == "none"
    assert parse_recipe(checked).optim.optimizer == "adamw"
