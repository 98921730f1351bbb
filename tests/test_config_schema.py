"""The config schema is the one place a key is declared: every field has a flag that reaches it, a flat YAML name
that means it, a value that round-trips through config.yaml, and a row in docs/training.md's knob table; every
choice and range is checked when the config is built, before any data is read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from visiontrain.cli import build_parser, config_from_args
from visiontrain.cli.flags import BEGIN, END, knob_table
from visiontrain.config import Leaf, RunConfig, flat_names, keys, load_config, read_yaml
from visiontrain.errors import ConfigError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "training.md"
LEAVES = {leaf.key: leaf for leaf in keys()}


def _other_value(leaf: Leaf) -> tuple[list[str], Any]:
    """(flag arguments, the config value they give): a legal value that differs from the default."""
    if leaf.choices:
        value = next(c for c in leaf.choices if c != leaf.default)
        return [value], value
    kind, low = leaf.kind, leaf.knob.low
    if kind == "bool":
        return (["off"], False) if leaf.default else ([], True)
    if kind == "mapping":
        return ["k=v"], {"k": "v"}
    if kind.startswith("list["):
        item = {"list[int]": 3, "list[float]": 0.5}.get(kind, {"train.track": "mlflow"}.get(leaf.key, "x*"))
        return [str(item), str(item)], [item, item]
    if kind == "int":
        value = int(max(low or 0, 1)) + 2 if leaf.default is None else leaf.default + 1
        if leaf.knob.high is not None:
            value = min(value, int(leaf.knob.high))
        return [str(value)], value
    if kind == "float":
        value = 0.5 if leaf.default in (None, 0.0, 1.0) else leaf.default / 2
        return [str(value)], value
    if kind == "yaml":
        return ["auto"], "auto"
    value = {"train.device": "cpu", "recipe": "fast"}.get(leaf.key, "something_else")
    return [value], value


# Keys that only mean something together with another (the config refuses them alone).
_COMPANIONS: dict[str, dict[str, Any]] = {
    "recipe": {"model": "fast_cnn"},  # the recipe fills model.args for its own model only
    "model.unfreeze_at": {"freeze_backbone": True},
    **{k: {"init_from": "w.safetensors"} for k in ("model.rename", "model.strict", "model.init_match")},
}


def _companion_flags(key: str) -> list[str]:
    out: list[str] = []
    for flat, value in _COMPANIONS.get(key, {}).items():
        out += [f"--{flat.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return out


def _get(cfg: RunConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.parametrize("key", list(LEAVES))
def test_every_key_has_a_flag_a_flat_name_and_round_trips(key: str, tmp_path: Path) -> None:
    leaf = LEAVES[key]
    args, value = _other_value(leaf)
    assert value != leaf.default, key
    cfg = config_from_args(build_parser().parse_args(["train", leaf.flag, *args, *_companion_flags(key)]))
    assert _get(cfg, key) == value, (leaf.flag, args)
    # the flat YAML name (the flag's, with underscores) means the same key
    flat = leaf.flag.removeprefix("--").replace("-", "_")
    assert flat_names()[flat] == key
    assert _get(load_config({flat: value, **_COMPANIONS.get(key, {})}), key) == value
    # and the saved config.yaml gives the same config back
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    assert load_config(read_yaml(path)) == cfg
    assert leaf.knob.help, f"{key} has no help"


def test_flags_and_flat_names_are_unique() -> None:
    flags = [leaf.flag for leaf in keys()] + [s[0] for leaf in keys() for s in leaf.knob.shortcuts]
    assert len(flags) == len(set(flags))
    help_text = build_parser().parse_args(["train"]) and _train_help()
    for flag in flags:
        assert f"{flag} " in help_text or f"{flag}\n" in help_text or f"{flag}," in help_text, flag


def _train_help() -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["train"].format_help()  # type: ignore[union-attr]


@pytest.mark.parametrize(("raw", "fragment"), [
    ({"optimizer": "adamm"}, "optim.name 'adamm' is not one of: sgd, adam, adamw, rmsprop; did you mean adam?"),
    ({"schedule": "cosin"}, "optim.schedule 'cosin' is not one of"),
    ({"precision": "fp8"}, "train.precision 'fp8' is not one of: 32, bf16, fp16, auto"),
    ({"device": "tpu"}, "train.device 'tpu' is not valid; use auto, cpu, cuda, cuda:N or mps"),
    ({"normalize": "imagenett"}, "did you mean imagenet?"),
    ({"init_match": "shape"}, "model.init_match 'shape' is not one of: name, order"),
    ({"clip_grad_norm": 1.0, "lr": float("inf")}, "optim.lr must be a finite number"),
    ({"seed": 2**40}, "train.seed must be 0 to 4,294,967,295"),
    ({"seed": 2**70}, "train.seed is out of range"),
    ({"gamma": 0}, "optim.gamma must be in (0, 1]"),
])
def test_choices_and_ranges_are_checked_when_the_config_is_built(raw: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(raw, where="my.yaml")
    assert fragment in str(info.value)


def test_a_saved_precision_of_32_reads_back_from_yaml_as_a_number() -> None:
    assert load_config({"precision": 32}).train.precision == "32"  # YAML reads `precision: 32` as an int


def test_choice_errors_come_before_any_data_is_read(main_cli, one_line_error, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    for flag, value in (("--optimizer", "adamm"), ("--schedule", "cosin"), ("--precision", "fp8"), ("--device", "tpu")):
        one_line_error(main_cli("train", "--data", missing, "--out", tmp_path / "runs", flag, value), value)
    assert not (tmp_path / "runs").exists()


def test_bool_flags_take_on_and_off() -> None:
    def plots(*argv: str) -> bool:
        return config_from_args(build_parser().parse_args(["train", *argv])).train.plots

    assert plots() is True
    assert plots("--plots", "off") is False and plots("--no-plots") is False and plots("--plots") is True


def test_every_engine_table_covers_the_choices_the_config_allows() -> None:
    from visiontrain.engine.optim import OPTIMIZERS, SCHEDULES
    from visiontrain.engine.precision import CHOICES

    assert set(LEAVES["optim.name"].choices or ()) == set(OPTIMIZERS)
    assert set(LEAVES["optim.schedule"].choices or ()) == set(SCHEDULES)
    assert set(LEAVES["train.precision"].choices or ()) == set(CHOICES)


def test_the_docs_knob_table_is_generated_from_the_schema() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    current = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert current == knob_table(), ("docs/training.md's knob table is stale; regenerate it with "
                                     "`python -m visiontrain.cli.flags docs/training.md`")
    for leaf in keys():
        assert f"| `{leaf.key}` |" in current


def test_the_hparams_tensorboard_shows_are_the_keys_the_schema_marks(synthetic_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    marked = [leaf.flat_names[0] for leaf in keys() if leaf.knob.hparam]
    assert {"lr", "batch_size", "epochs", "model", "optimizer", "seed"} <= set(marked)
    acc = EventAccumulator(str(synthetic_run.dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = next(plugin_data_pb2.HParamsPluginData.FromString(c).session_start_info for c in content.values()
                 if plugin_data_pb2.HParamsPluginData.FromString(c).HasField("session_start_info"))
    assert sorted(start.hparams) == sorted(marked)
    assert start.hparams["lr"].number_value == synthetic_run.config.optim.lr
