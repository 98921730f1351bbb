"""The ``train``/``lr-find`` flags, made from the config schema (:func:`visiontrain.config.keys`): one flag per
config key, grouped by section, with the key's help, choices, range and default. Nothing here restates a
key — a new config field is a new flag, a new flat YAML name and a new row of the docs' knob table.

>>> parser = argparse.ArgumentParser()
>>> add_config_flags(parser)
>>> flag_overrides(parser.parse_args(["--epochs", "3", "--no-channels-last", "--plots", "off", "--augment", "none"]))
{'data.transforms.train': 'none', 'train.epochs': 3, 'train.channels_last': False, 'train.plots': False}
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visiontrain.config import Leaf, keys, parse_override

TRUST_CODE_HELP = ("let the run's own files (its config.yaml, a checkpoint's sidecar, a --config YAML inside a run "
                   "folder) name code: import the dataset they name as module:Class or file.py:Class, unpickle "
                   "with their model.trust_pickle. Without it such a run is refused in one line (restating --data "
                   "SPEC or --trust-pickle yourself also works); only for runs you made yourself [default: off]")


_BOOL_WORDS = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}


class _Toggle(argparse.Action):
    """``--flag`` (on), ``--no-flag`` (off), or ``--flag on|off|true|false|yes|no|1|0``."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        positive = option_strings[0]
        negative = "--no-" + positive.removeprefix("--")
        super().__init__([positive, negative], dest, nargs="?", metavar="on|off", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if option_string is not None and option_string.startswith("--no-"):
            if values is not None:
                parser.error(f"{option_string} takes no value")
            setattr(namespace, self.dest, False)
            return
        if values is None:
            setattr(namespace, self.dest, True)
            return
        word = str(values).strip().lower()
        if word not in _BOOL_WORDS:
            parser.error(f"argument {option_string}: expected on or off, got {values!r}")
        setattr(namespace, self.dest, _BOOL_WORDS[word])


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text or not text.partition("=")[0].strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return parse_override(text)


def _yaml_value(text: str) -> Any:
    return parse_override(f"value={text}")[1]  # "auto" stays text, "[1, 2.5]" becomes a list


def _dest(key: str) -> str:
    return "cfg." + key


def flag_help(leaf: Leaf) -> str:
    """The key's help, with its choices, range and default as ``visiontrain train --help`` shows them."""
    text = leaf.knob.help
    if leaf.choices and not all(c in text for c in leaf.choices):
        text += f" (one of: {', '.join(leaf.choices)})"
    elif leaf.knob.low is not None or leaf.knob.high is not None:
        text += f" ({leaf.knob.range_text()})"
    if "[default:" not in text:
        shown = default_text(leaf)
        if shown:
            text += f" [default: {shown}]"
    return text.replace("%", "%%")  # argparse formats help with %


def default_text(leaf: Leaf) -> str:
    value = leaf.default
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == [] or value == {}:
        return ""
    return str(value)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config key, in a group per section (``data``, ``model``, ``optim``, ``train``, run)."""
    groups: dict[str, Any] = {}
    for leaf in keys():
        section = leaf.key.split(".")[0] if "." in leaf.key else "run"
        group = groups.get(section) or groups.setdefault(section, parser.add_argument_group(f"{section} keys"))
        kwargs: dict[str, Any] = {"dest": _dest(leaf.key), "default": None, "help": flag_help(leaf)}
        kind = leaf.kind
        if kind == "bool":
            group.add_argument(leaf.flag, action=_Toggle, **kwargs)
            continue
        if kind == "mapping":
            kwargs.update(type=_key_value, action="append", metavar="KEY=VALUE")
        elif kind == "yaml":
            kwargs.update(type=_yaml_value)
        elif kind.startswith("list["):
            kwargs.update(type={"int": int, "float": float}.get(kind[5:-1], str), nargs="+")
        else:
            kwargs.update(type={"int": int, "float": float}.get(kind, str))
        if leaf.knob.const is not None:  # the flag alone means this value
            kwargs.update(nargs="?", const=leaf.knob.const)
        kwargs.setdefault("metavar", _metavar(leaf))
        group.add_argument(leaf.flag, **kwargs)
        for flag, entry, text in leaf.knob.shortcuts:
            group.add_argument(flag, dest=_dest(f"{leaf.key}.{entry}"), default=None, help=text.replace("%", "%%"))


def _metavar(leaf: Leaf) -> str:
    if leaf.knob.metavar:
        return leaf.knob.metavar
    if leaf.choices:
        return "{" + ",".join(leaf.choices) + "}"
    kind = leaf.kind.removeprefix("list[").removesuffix("]")
    return {"int": "N", "float": "X", "yaml": "VALUE"}.get(kind, leaf.name.upper())


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted config keys the flags given on the command line set (mappings: one key per KEY=VALUE)."""
    overrides: dict[str, Any] = {}
    for name, value in vars(args).items():
        if not name.startswith("cfg.") or value is None:
            continue
        key = name.removeprefix("cfg.")
        if isinstance(value, list) and value and isinstance(value[0], tuple):  # KEY=VALUE pairs of a mapping
            overrides.update({f"{key}.{k}": v for k, v in value})
        else:
            overrides[key] = value
    return overrides


# -- the knob table of docs/training.md ------------------------------------------------------------------------

BEGIN, END = "<!-- knobs:begin (made by `python -m visiontrain.cli.flags docs/training.md`) -->", "<!-- knobs:end -->"


def knob_table() -> str:
    """Markdown: every config key with its flag, flat YAML name, default and help, by section."""
    rows = ["| key | flag | default | what |", "| --- | --- | --- | --- |"]
    for leaf in keys():
        flags = " ".join(f"`{f}`" for f in (leaf.flag, *(s[0] for s in leaf.knob.shortcuts)))
        if leaf.kind == "bool":
            flags = f"`{leaf.flag}`, `--no-{leaf.flag[2:]}`"
        shown = default_text(leaf)
        what = leaf.knob.help.replace("|", "\\|")
        if leaf.choices and not all(c in what for c in leaf.choices):
            what += f" (one of: {', '.join(leaf.choices)})"
        if leaf.knob.low is not None or leaf.knob.high is not None:
            what += f"; {leaf.knob.range_text()}"
        rows.append(f"| `{leaf.key}` | {flags} | {f'`{shown}`' if shown else ''} | {what} |")
    return "\n".join(rows)


def rewrite_docs(path: Path) -> bool:
    """Put :func:`knob_table` between the markers of ``path``; True when the file changed."""
    text = path.read_text(encoding="utf-8")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    new = f"{head}{BEGIN}\n{knob_table()}\n{END}{tail}"
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    changed = rewrite_docs(Path(sys.argv[1]))
    print(f"{sys.argv[1]}: {'rewritten' if changed else 'already current'}")
