"""The run configuration: typed, validated once at the edge, saved with every run.

A config is nested frozen dataclasses (:mod:`visiontrain.config.sections`). It comes from defaults, then a
YAML file, then dotted overrides (``train.epochs=3``) — the CLI's flags are such overrides. Unknown keys,
wrong types, values out of range and names outside a key's choices are errors that name the key, raised
when the config is built, before any data is read: a typo never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visiontrain import limits
from visiontrain.config.knobs import Leaf, coerce, knob, leaves
from visiontrain.config.recipes import resolve as resolve_recipe
from visiontrain.config.sections import DataConfig, ModelConfig, OptimConfig, TrainConfig
from visiontrain.errors import ConfigError


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = knob("runs", "the runs root folder", peers=("output", "project", "output_dir", "default_root_dir"))
    name: str | None = knob(None, "run folder name under --out (one name: no / or ..) [default: "
                            "<data>-<model>-<time>]; an existing name gets a -2, -3 … suffix", peers=("experiment",))
    recipe: str | None = knob(None, "a preset of model, schedule, batch size, precision and epochs (see "
                              "`visiontrain recipes`, e.g. fast); every other flag and config key overrides it")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, where: str = "config") -> RunConfig:
        return load_config(raw or {}, where=where)

    def override(self, overrides: dict[str, Any], where: str = "override") -> RunConfig:
        """A new config with dotted keys replaced, e.g. ``{"train.epochs": 3}``.

        A new ``recipe`` sets its values first, then the other overrides apply on top of them.
        """
        merged = self.to_dict()
        recipe = next((v for k, v in overrides.items() if canonical_key(k, where) == "recipe"), None)
        if recipe is not None and recipe != self.recipe:
            model = next((v for k, v in overrides.items() if canonical_key(k, where) == "model.name"), None)
            init_from = next((v for k, v in overrides.items() if canonical_key(k, where) == "model.init_from"),
                             merged.get("model", {}).get("init_from"))
            for dotted, value in _recipe_settings(recipe, model, where, init_from).items():
                _set_dotted(merged, dotted, value, where)
        given = {canonical_key(k, where) for k in overrides}
        for dotted, value in overrides.items():
            _set_dotted(merged, canonical_key(dotted, where), value, where)
        name = recipe or self.recipe
        if name and "model.init_from" in given and "model.pretrained" not in given and merged["model"].get(
                "pretrained") == resolve_recipe(str(name)).get("model.pretrained"):
            merged["model"]["pretrained"] = None  # --init-from brings the weights, not the recipe's pretrained ones
        return load_config(merged, where=where)


SECTIONS = frozenset(name for name, hint in typing.get_type_hints(RunConfig).items() if dataclasses.is_dataclass(hint))


@functools.cache
def keys() -> tuple[Leaf, ...]:
    """Every settable key of a run config, with what it declares (flag, help, range, choices)."""
    return tuple(leaves(RunConfig))


@functools.cache
def flat_names() -> dict[str, str]:
    """Flat YAML names → dotted keys: every flag's name with underscores (``clip_grad_norm``), the extra names
    a key declares, a shortcut flag's name (``augment`` → ``data.transforms.train``), and a field's own name
    where no other section has a field of that name (``mixup_alpha``)."""
    names: dict[str, str] = {}
    counts = typing.Counter(leaf.name for leaf in keys())
    for leaf in keys():
        for flat in leaf.flat_names:
            names.setdefault(flat, leaf.key)
        for flag, entry, _help in leaf.knob.shortcuts:
            names.setdefault(flag.removeprefix("--").replace("-", "_"), f"{leaf.key}.{entry}")
    for leaf in keys():
        if counts[leaf.name] == 1 and "." in leaf.key:
            names.setdefault(leaf.name, leaf.key)
    return names


def hparam_values(cfg: RunConfig) -> dict[str, Any]:
    """The keys marked ``hparam`` in the schema, by flat name, with this config's values (TensorBoard's HParams)."""
    values = cfg.to_dict()
    out = {}
    for leaf in keys():
        if leaf.knob.hparam:
            node: Any = values
            for part in leaf.key.split("."):
                node = node[part]
            out[leaf.flat_names[0]] = node
    return out


# Flat keys accepted at the top of a YAML file (kept under its old name for code that reads it).
ALIASES = flat_names()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader (no Python objects are ever built from a file); at most
    ``limits.MAX_CONFIG_BYTES`` are read, so ``--config /dev/zero`` ends at once."""
    p = Path(path)
    try:
        raw = yaml.safe_load(limits.read_capped(p, limits.MAX_CONFIG_BYTES, "a config file").decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist; check the path given to --config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        detail = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line, whatever PyYAML wrote
        raise ConfigError(f"config file {p} is not valid YAML{at}: {detail}") from None
    except (ValueError, RecursionError) as exc:  # a date like 2024-13-01, or nesting deeper than Python's stack
        raise ConfigError(f"config file {p} has a value YAML cannot build ({type(exc).__name__}: "
                          f"{str(exc)[:100]}); quote it to make it a string") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} cannot be read: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p} must be a mapping of keys to values, not a {type(raw).__name__}")
    return raw


def load_config(raw: dict[str, Any], where: str = "config") -> RunConfig:
    """Build a validated RunConfig from a (possibly flat-aliased) mapping."""
    nested: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: key {key!r} must be a string")
        if key in SECTIONS and isinstance(value, dict):
            for sub, sub_value in value.items():
                _set_dotted(nested, f"{key}.{sub}", sub_value, where)
        else:
            _set_dotted(nested, canonical_key(key, where), value, where)
    cfg = _build(RunConfig, _with_recipe(nested, where), where, prefix="")
    _check(cfg, where)
    return cfg


def _with_recipe(nested: dict[str, Any], where: str) -> dict[str, Any]:
    """``nested`` with the recipe it names filled in underneath its explicit keys (see config.recipes)."""
    name = nested.get("recipe")
    if name is None:
        return nested
    model = nested.get("model", {}).get("name")
    init_from = nested.get("model", {}).get("init_from")
    base: dict[str, Any] = {}
    for dotted, value in _recipe_settings(name, model, where, init_from).items():
        _set_dotted(base, dotted, value, where)
    return _merge_under(base, nested)


def _recipe_settings(name: Any, model: Any, where: str, init_from: Any = None) -> dict[str, Any]:
    if not isinstance(name, str):
        raise ConfigError(f"{where}: recipe must be a recipe name such as fast, got {name!r}")
    settings = resolve_recipe(name)
    if model is not None and model != settings.get("model.name"):  # its model arguments fit its own model only
        settings = {k: v for k, v in settings.items() if not k.startswith("model.args")}
    if init_from:  # the weights come from --init-from: a recipe's pretrained weights would be loaded under them
        settings.pop("model.pretrained", None)
    return settings


def _merge_under(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, section by section: a key set in ``top`` replaces ``base``'s value whole (a mapping
    such as ``model.args`` too, so a saved config.yaml always rebuilds exactly what it says)."""
    out = dict(base)
    for key, value in top.items():
        section = key in SECTIONS and isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = {**out[key], **value} if section else value
    return out


def _check(cfg: RunConfig, where: str) -> None:
    """Every key's declared range and pattern, then the rules that tie keys together."""
    values = cfg.to_dict()
    for leaf in keys():
        node: Any = values
        for part in leaf.key.split("."):
            node = node[part]
        problem = leaf.knob.check(node, leaf.key)
        if problem:
            raise ConfigError(f"{where}: {problem}")
    for ok, message in _cross_checks(cfg):
        if not ok:
            raise ConfigError(f"{where}: {message}")


def _cross_checks(cfg: RunConfig) -> list[tuple[bool, str]]:
    m = cfg.model
    return [
        (bool(cfg.data.name.strip()), "data.name must name a dataset, a folder or a manifest, not be empty (for "
         "the current folder, say '.')"),
        (cfg.name is None or _one_component(cfg.name), f"name must be one folder name under --out, got "
         f"{cfg.name!r}: no / or \\, not empty, . or .. (to write elsewhere, set --out)"),
        (m.in_channels in (None, 1, 3), "model.in_channels must be 1 or 3"),
        (m.backbone_lr_scale > 0, "model.backbone_lr_scale must be positive (to stop training it, freeze it)"),
        (m.unfreeze_at is None or m.unfreeze_at >= 2, "model.unfreeze_at must be an epoch number of at least 2"),
        (m.unfreeze_at is None or bool(m.freeze or m.freeze_backbone),
         "model.unfreeze_at needs something frozen: add --freeze-backbone or --freeze PATTERN"),
        (bool(m.init_from) or not (m.rename or m.strict or m.init_match != "name"),
         "model.rename, model.strict and model.init_match apply to model.init_from; set --init-from"),
    ]


def _one_component(name: str) -> bool:
    """A run name is one folder under ``--out``: ``../../x`` or ``/tmp/x`` would write elsewhere."""
    return (bool(name.strip()) and name not in (".", "..") and not any(c in name for c in "/\\\0")
            and Path(name).name == name and not Path(name).is_absolute())


def canonical_key(key: str, where: str = "override") -> str:
    """The dotted key a flat or dotted name means (``clip-grad-norm`` → ``train.clip_grad_norm``)."""
    key = key.replace("-", "_")
    flat = flat_names()
    if key in flat:
        return flat[key]
    if "." in key or key in {f.name for f in dataclasses.fields(RunConfig)}:
        return key
    close = difflib.get_close_matches(key, list(flat), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ConfigError(f"{where}: unknown key {key!r}; {hint}use a flag's name (e.g. epochs, clip_grad_norm) or a "
                      "section key such as train.epochs (`visiontrain train --help` lists them)")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {dotted!r} goes inside {part!r}, which is not a section")
        node = child
    # `args` dicts may receive dotted sub-keys (model.args.dropout=0.2); everything else is a leaf
    node[parts[-1]] = value


def _build(cls: type, raw: dict[str, Any], where: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            section = prefix.rstrip(".") or "the top level"
            close = difflib.get_close_matches(str(key), sorted(names), n=1)
            hint = f"did you mean {prefix}{close[0]}? " if close else ""
            raise ConfigError(f"{where}: unknown key {prefix + str(key)!r} in {section}; {hint}"
                              f"valid keys: {', '.join(sorted(names))}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        hint, value, key = hints[f.name], raw[f.name], prefix + f.name
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
            values[f.name] = _build(hint, value, where, prefix=key + ".")
        else:
            values[f.name] = coerce(value, hint, key, where)
    return cls(**values)


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=3"`` → ``("train.epochs", 3)``; the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.log_every=50")
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except (yaml.YAMLError, ValueError, RecursionError):  # not YAML (or a date like 2024-13-01): the text itself
        value = raw
    return key.strip(), value
