"""RunConfig: defaults ← YAML file (flat or nested keys) ← flags ← --set; unknown keys and wrong types are
one-line errors (exit code 2 on the command line), never a silent default."""

from __future__ import annotations

from pathlib import Path

import pytest

from visiontrain.cli import build_parser, config_from_args
from visiontrain.config import RunConfig, load_config, parse_override, read_yaml
from visiontrain.errors import ConfigError


def _from_cli(*argv: str) -> RunConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_flat_and_nested_keys_mean_the_same(tmp_path: Path) -> None:
    flat = load_config(read_yaml(_yaml(tmp_path, "epochs: 3\nlr: 0.01\ndata: synthetic\nbatch_size: 64\n")))
    nested = load_config(read_yaml(_yaml(tmp_path, "train: {epochs: 3}\noptim:\n  lr: 0.01\n"
                                                   "data: {name: synthetic, batch_size: 64}\n")))
    assert flat == nested
    assert (flat.train.epochs, flat.optim.lr, flat.data.name, flat.data.batch_size) == (3, 0.01, "synthetic", 64)
    assert flat.model == RunConfig().model  # untouched sections keep their defaults


def test_flag_overrides_the_file_and_set_overrides_both(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "epochs: 3\nmodel: {name: lenet5, args: {activation: relu}}\nseed: 7\n")
    cfg = _from_cli("--config", str(path), "--epochs", "5", "--set", "model.args.activation=tanh",
                    "--set", "data.args.train=400")
    assert cfg.train.epochs == 5  # the flag wins over the file
    assert cfg.train.seed == 7  # file values not given as flags stay
    assert cfg.model.name == "lenet5"
    assert cfg.model.args == {"activation": "tanh"}
    assert cfg.data.args == {"train": 400}  # --set values are read as YAML: 400 is an int
    assert _from_cli("--config", str(path), "--set", "train.epochs=9", "--epochs", "4").train.epochs == 9


def test_every_train_flag_reaches_its_key() -> None:
    cfg = _from_cli("--data", "synthetic", "--data-dir", "cache", "--model", "mlp", "--epochs", "4",
                    "--batch-size", "16", "--lr", "0.5", "--optimizer", "sgd", "--device", "cpu", "--seed", "3",
                    "--out", "o", "--name", "n", "--workers", "1")
    assert (cfg.data.name, cfg.data.dir, cfg.model.name, cfg.train.epochs, cfg.data.batch_size) == (
        "synthetic", "cache", "mlp", 4, 16)
    assert (cfg.optim.lr, cfg.optim.name, cfg.train.device, cfg.train.seed) == (0.5, "sgd", "cpu", 3)
    assert (cfg.out, cfg.name, cfg.data.workers) == ("o", "n", 1)


@pytest.mark.parametrize(("text", "value"), [("1e-3", 1e-3), ("3", 3.0), ("2.5E-2", 0.025), (".5", 0.5)])
def test_floats_as_people_write_them(tmp_path: Path, text: str, value: float) -> None:
    # PyYAML reads `1e-3` (no dot) as a string; a learning rate written that way must still work.
    assert _from_cli("--set", f"optim.lr={text}").optim.lr == value
    assert load_config(read_yaml(_yaml(tmp_path, f"lr: {text}\n"))).optim.lr == value


def test_overrides_give_new_configs() -> None:
    base = RunConfig()
    changed = base.override({"train.epochs": 7, "data.args.size": 16})
    assert (changed.train.epochs, changed.data.args) == (7, {"size": 16})
    assert base.train.epochs == RunConfig().train.epochs  # frozen: the original is unchanged
    with pytest.raises(AttributeError):
        base.train.epochs = 3  # type: ignore[misc]
    assert load_config(changed.to_dict()) == changed  # to_dict round-trips


def test_parse_override() -> None:
    assert parse_override("train.epochs=3") == ("train.epochs", 3)
    assert parse_override("data.image_size=null") == ("data.image_size", None)
    assert parse_override("model.args.hidden=[64, 32]") == ("model.args.hidden", [64, 32])
    assert parse_override("name=a=b") == ("name", "a=b")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("train.epochs")


@pytest.mark.parametrize(("raw", "fragments"), [
    ({"epochz": 3}, ["unknown key 'epochz'"]),
    ({"train": {"epochz": 3}}, ["unknown key 'train.epochz'", "epochs"]),
    ({"train.epochs": "three"}, ["train.epochs must be int", "'three'"]),
    ({"epochs": 2.5}, ["train.epochs must be int"]),
    ({"epochs": True}, ["train.epochs must be int"]),
    ({"lr": "fast"}, ["optim.lr must be float"]),
    ({"train": 3}, ["train must be a mapping"]),
    ({"epochs": 0}, ["train.epochs must be 1 to 1,000,000"]),
    ({"val_split": 1.0}, ["data.val_split must be in [0, 1)"]),
    ({"lr": -1}, ["optim.lr must be positive"]),
])
def test_bad_keys_and_values_name_the_key(raw: dict, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(raw, where="my.yaml")
    message = str(info.value)
    assert message.startswith("my.yaml: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(("text", "fragment"), [
    ("epochs: [3\n", "is not valid YAML at line"),
    ("- 1\n- 2\n", "must be a mapping of keys to values, not a list"),
    ("!!python/object/apply:os.system ['true']\n", "is not valid YAML"),  # the safe loader builds no objects
])
def test_bad_yaml_files(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=r"config\.yaml") as info:
        read_yaml(_yaml(tmp_path, text))
    assert fragment in str(info.value)
    assert read_yaml(_yaml(tmp_path, "")) == {}


@pytest.mark.parametrize("argv", [
    ["--set", "train.epochz=3"],
    ["--set", "nosuchsection.x=1"],
    ["--set", "train.epochs=abc"],
    ["--set", "foo"],
    ["--epochs", "0"],
    ["--config", "missing.yaml"],
])
def test_cli_config_errors_are_one_line_exit_2(main_cli, one_line_error, argv: list[str], tmp_path: Path) -> None:
    r = main_cli("train", "--data", "synthetic", "--out", tmp_path / "runs", *argv)
    one_line_error(r)
    assert not (tmp_path / "runs").exists()


def test_cli_unknown_key_in_a_file(main_cli, one_line_error, tmp_path: Path) -> None:
    path = _yaml(tmp_path, "train:\n  epochs: 3\n  lerning_rate: 0.1\n")
    line = one_line_error(main_cli("train", "--config", path), "unknown key 'train.lerning_rate'", str(path))
    assert "valid keys:" in line


def test_cli_debug_shows_the_traceback(main_cli) -> None:
    r = main_cli("--debug", "train", "--set", "train.epochs=abc")
    assert r.code == 2
    assert "Traceback (most recent call last)" in r.err and "ConfigError" in r.err
    assert r.err.rstrip().splitlines()[-1] == "visiontrain: error: command line: train.epochs must be int, got 'abc'"


def test_argparse_type_errors_exit_2(main_cli) -> None:
    r = main_cli("train", "--epochs", "three")
    assert r.code == 2 and "invalid int value: 'three'" in r.err and "Traceback" not in r.err
