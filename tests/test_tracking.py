"""Experiment trackers (``train.loggers``): records flattened for W&B, the run id kept for a resumed run,
and a missing optional tracker refused before training. The W&B run of a real (micro) training, in offline
mode, is checked in test_trained.py."""

from __future__ import annotations

import sys

import pytest
from vitinit.recipes import as_recipe

from vitinit.engine.tracking import WANDB_ID_FILE, WandbTracker, check_loggers, flatten
from vitinit.errors import ConfigError, MissingDependencyError


def test_records_are_flattened_by_kind():
    record = {"kind": "eval", "iter": 20, "epoch": 0.3, "bbox": {"AP": 12.5, "APs": None},
              "segm": {"AP": 9.0}}
    assert flatten(record) == {"eval/epoch": 0.3, "eval/bbox/AP": 12.5, "eval/segm/AP": 9.0}
    assert flatten({"kind": "train", "iter": 3, "loss": 1.5, "lr": 1e-3, "flag": True}) == {
        "train/loss": 1.5, "train/lr": 1e-3
    }


def test_a_resumed_run_keeps_its_wandb_id(tmp_path):
    first = WandbTracker(tmp_path, "demo", {}, [])._run_id()
    assert (tmp_path / "wandb" / WANDB_ID_FILE).read_text().strip() == first
    assert WandbTracker(tmp_path, "demo", {}, [])._run_id() == first
    assert WandbTracker(tmp_path / "other", "demo", {}, [])._run_id() != first


def test_missing_wandb_is_refused_before_training(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb → ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'vitinit\[wandb\]'"):
        check_loggers(["tensorboard", "wandb"])
    check_loggers(["tensorboard"])


def test_loggers_key_is_checked():
    assert as_recipe("demo").train.loggers == ["tensorboard"]
    assert as_recipe("demo", ["train.loggers=[wandb,tensorboard]"]).train.loggers == ["wandb", "tensorboard"]
    assert as_recipe("demo", ["train.loggers=[]"]).train.loggers == []
    with pytest.raises(ConfigError, match="train.loggers items must be among tensorboard, wandb, got 'mlfl"):
        as_recipe("demo", ["train.loggers=[mlflow]"])
