"""Recipes (``--recipe NAME``): what they set, what overrides them, what a run saves, and ``precision: auto``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import visiontrain
from visiontrain.config import RunConfig, load_config
from visiontrain.config.recipes import RECIPES, resolve
from visiontrain.engine import precision
from visiontrain.engine.precision import Precision, cpu_has_native_bf16, resolve_precision
from visiontrain.errors import ConfigError


def test_a_recipe_fills_keys_the_user_left_alone() -> None:
    cfg = load_config({"recipe": "fast"})
    fast = resolve("fast")
    assert cfg.model.name == fast["model.name"] == "fast_cnn"
    assert cfg.model.args == fast["model.args"]
    assert cfg.data.batch_size == fast["data.batch_size"]
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.schedule) == (fast["optim.name"], fast["optim.lr"], "onecycle")
    assert cfg.train.precision == "auto" and cfg.train.label_smoothing == fast["train.label_smoothing"]
    assert cfg.recipe == "fast"
    assert load_config({}).model.name != "fast_cnn"  # no recipe, the defaults


def test_explicit_keys_win_over_the_recipe_and_another_model_drops_its_model_args() -> None:
    cfg = load_config({"recipe": "fast", "train": {"epochs": 3}, "lr": 0.002})
    assert cfg.train.epochs == 3 and cfg.optim.lr == 0.002
    assert cfg.data.batch_size == resolve("fast")["data.batch_size"]  # the rest is still the recipe's
    other = load_config({"recipe": "fast", "model": "small_cnn"})
    assert other.model.name == "small_cnn" and other.model.args == {}  # fast_cnn's widths do not fit small_cnn


def test_override_with_a_recipe_applies_it_under_the_other_overrides() -> None:
    cfg = RunConfig().override({"recipe": "seeds", "train.epochs": 2})
    assert cfg.model.name == "seed_net" and cfg.optim.name == "sgd" and cfg.train.epochs == 2


def test_an_unknown_recipe_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown recipe 'nope'.*fast"):
        load_config({"recipe": "nope"})
    with pytest.raises(ConfigError, match="recipe must be a recipe name"):
        load_config({"recipe": 3})


def test_every_recipe_resolves_to_a_valid_config() -> None:
    for name in RECIPES:
        cfg = load_config({"recipe": name})
        assert cfg.recipe == name
        for dotted, value in resolve(name).items():
            node = cfg.to_dict()
            for part in dotted.split("."):
                node = node[part]
            assert node == value, (name, dotted)


def test_a_recipe_run_saves_the_resolved_values_and_repeats_from_its_config(tmp_path: Path) -> None:
    data = {"name": "synthetic", "args": {"train": 120, "val": 30, "test": 30}, "image_size": 16}
    run = visiontrain.train({"recipe": "fast", "data": data, "out": str(tmp_path), "name": "r",
                             "precision": "32", "epochs": 2}, quiet=True)
    saved = yaml.safe_load((run.dir / "config.yaml").read_text(encoding="utf-8"))
    assert saved["recipe"] == "fast"
    assert saved["model"]["name"] == "fast_cnn" and saved["model"]["args"] == resolve("fast")["model.args"]
    assert saved["train"]["epochs"] == 2 and saved["train"]["precision"] == "32"
    assert run.summary["precision"] == "32" and run.summary["epochs_completed"] == 2
    again = visiontrain.train({**saved, "name": "again"}, quiet=True)  # the saved file alone repeats the run
    assert again.summary["final"] == run.summary["final"]


def test_recipes_command_lists_and_shows(main_cli) -> None:
    listed = main_cli("recipes", "--json")
    assert listed.code == 0, listed.err
    assert {row["name"] for row in json.loads(listed.out)} == set(RECIPES)
    shown = main_cli("recipes", "fast")
    assert shown.code == 0 and "fast_cnn" in shown.out and "optim.lr" in shown.out
    bad = main_cli("train", "--recipe", "nope")
    assert bad.code == 2 and "unknown recipe 'nope'" in bad.err and "Traceback" not in bad.err


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: fpu sse2 avx2 {flags}\n\n", encoding="ascii")
    return path


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision.sys, "platform", "linux")
    assert cpu_has_native_bf16(_cpuinfo(tmp_path, "avx512f amx_bf16 amx_tile"))
    assert cpu_has_native_bf16(_cpuinfo(tmp_path, "avx512f avx512_bf16"))
    assert not cpu_has_native_bf16(_cpuinfo(tmp_path, "avx512f avx512bw"))  # bf16 only emulated there
    assert not cpu_has_native_bf16(tmp_path / "missing")


def test_auto_precision_is_bf16_only_on_native_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    assert Precision("auto", cpu).mode == "bf16" and Precision("auto", cpu).dtype is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "32" and Precision("auto", cpu).dtype is None
    assert resolve_precision("auto", torch.device("mps")) == "32"
    assert resolve_precision("fp16", cpu) == "fp16"  # an explicit choice is kept
    with pytest.raises(ConfigError, match="choose one of: 32, bf16, fp16, auto"):
        Precision("half", cpu)


def test_the_finetune_recipe_starts_from_pretrained_weights_unless_init_from_brings_them() -> None:
    cfg = load_config({"recipe": "finetune", "model": {"name": "timm/resnet10t"}})
    assert (cfg.model.pretrained, cfg.model.freeze_backbone, cfg.model.unfreeze_at, cfg.model.backbone_lr_scale) \
        == ("DEFAULT", True, 2, 0.1)
    assert (cfg.optim.name, cfg.optim.schedule, cfg.train.label_smoothing, cfg.data.transforms["train"]) \
        == ("adamw", "cosine", 0.1, "photos")
    for via_flags in (False, True):  # a YAML key, or a flag on the command line (an override of the recipe's config)
        cfg = (load_config({"recipe": "finetune"}).override({"recipe": "finetune", "model.init_from": "w.pth"})
               if via_flags else load_config({"recipe": "finetune", "model": {"init_from": "w.pth"}}))
        assert cfg.model.pretrained is None and cfg.model.init_from == "w.pth" and cfg.model.freeze_backbone
    both = load_config({"recipe": "finetune"}).override({"model.init_from": "w.pth",
                                                         "model.pretrained": "IMAGENET1K_V1"})
    assert both.model.pretrained == "IMAGENET1K_V1"  # said explicitly: kept
