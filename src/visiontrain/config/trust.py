"""A file never names code: what a value read from a file may decide, and what only the user may.

visiontrain imports a user's ``Dataset`` by import spec (``mypkg.data:MyData``, ``my_data.py:MyData``) and
unpickles a whole-model ``.pth`` with ``trust_pickle``: both run code. Such values may come from the command
line, the Python API (the dict or RunConfig passed to ``visiontrain.train``/``evaluate``) or a YAML the user
wrote and gave with ``--config`` — the user speaking. They never come from a run's own files: a checkpoint's
JSON sidecar, a run's ``config.yaml``, or any YAML inside a run folder. Those are data that anyone who
handed over the run folder could have edited (the weights' SHA-256 still matches when only the JSON changed).
A value of :data:`CODE_KEYS` read from such a file is refused with one line, unless the user restates it
(``--data SPEC``, ``--trust-pickle``) or says ``--trust-code`` (API: ``trust_code=True``).

Builder arguments read from a file (``model.args``, ``data.args``) must be plain values — numbers, strings,
booleans, lists of them — and no builder argument, from anywhere, may make a builder load a file, a URL or a
class by name (:func:`check_builder_args`; timm's ``checkpoint_path`` would ``torch.load`` a file around
visiontrain's pickle checks): ``--pretrained``/``--init-from`` load weights, without unpickling.

A new way for a value to name code is one more :data:`CODE_KEYS` entry: a dataset (``data.name``) or a model
(``model.name``, ``--model my_model.py:Tudui``) as ``module:Class``, imported by :func:`import_spec`.

>>> names_code("subprocess:run"), names_code("mnist"), names_code("hf:cifar10"), names_code("shards:packed")
(True, False, False, False)
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visiontrain.config import RunConfig, canonical_key, load_config, read_yaml
from visiontrain.errors import TrustError, VisiontrainError
from visiontrain.fileio import user_path

IMPORT_SPEC = re.compile(r"^[\w./\\-]+:[A-Za-z_]\w*$")  # "mypkg.data:MyData" or "my_data.py:Mydata"
# Data names with these prefixes name data read by a library, never a module: "hf:ylecun/mnist" (data/hf.py),
# "shards:packed" (data/shards.py).
DATA_PREFIXES = ("hf:", "shards:")
TRUST_HINT = "pass --trust-code if you trust this run (API: trust_code=True)"


def names_code(name: Any) -> bool:
    """Whether a data/model name is an import spec that would be imported: it looks like ``module:Name`` and is
    not an existing path (a folder may have a colon in its name)."""
    return isinstance(name, str) and bool(IMPORT_SPEC.match(name)) and not name.startswith(DATA_PREFIXES) \
        and not user_path(name).exists()


@dataclass(frozen=True)
class CodeKey:
    """A config key whose value can make visiontrain run code: ``runs(section)`` says what would run, or None."""

    key: str  # dotted config key, e.g. "data.name"
    runs: Callable[[Mapping[str, Any]], str | None]  # the key's section (data, model) → what would run
    restate: str  # how the user says it on the command line; {value} is the file's value


def _data_import(section: Mapping[str, Any]) -> str | None:
    name = section.get("name")
    return f"names {_shown(name)}, which would be imported (running its code)" if names_code(name) else None


def _model_import(section: Mapping[str, Any]) -> str | None:
    name = section.get("name")
    return f"names {_shown(name)}, a model class which would be imported (running its code)" \
        if names_code(name) else None


def _unpickle(section: Mapping[str, Any]) -> str | None:
    files = [section.get(k) for k in ("init_from", "pretrained") if isinstance(section.get(k), str)]
    if section.get("trust_pickle") is not True or not files:
        return None
    return f"is true, which would unpickle {_shown(files[0])} in full (running any code it carries)"


CODE_KEYS: tuple[CodeKey, ...] = (
    CodeKey("data.name", _data_import, "--data {value}"),
    CodeKey("model.name", _model_import, "--model {value}"),
    CodeKey("model.trust_pickle", _unpickle, "--trust-pickle"),
)
# Builder arguments a file may give, and the longest list value each may hold.
PLAIN_ARGS: dict[str, int] = {"model.args": 1024, "data.args": 100_000}
MAX_TEXT = 4096

# Arguments of builders that take **kwargs which make them load a file or URL, or pick a loader or class:
# refused from anywhere. timm.create_model/build_model_with_cfg (timm 1.0); torchvision's get_model(weights=).
LOADER_ARGS: dict[str, frozenset[str]] = {
    "timm": frozenset({"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir",
                       "pretrained_strict", "pretrained_filter_fn", "pretrained_model_args", "model_cfg",
                       "feature_cfg", "features_only", "feature_cls", "out_indices", "kwargs_filter", "pruned"}),
    "torchvision": frozenset({"weights"}),
}
_LOADER_SUFFIX = re.compile(r"_(path|file|url|dir|fn|cls|cfg|overlay)$")
_ANY_LOADER = frozenset().union(*LOADER_ARGS.values())  # a file's model.args, checked before the model is known
_LOADER_TEXT = ("would make the model builder load a file, URL or class by name, which visiontrain does not pass "
                "on; load weights with --pretrained FILE or --init-from FILE (read without unpickling)")


def check_file_values(values: RunConfig | Mapping[str, Any], where: str | Path, *, trust_code: bool = False,
                      given: Iterable[str] = (), prefix: str = "") -> None:
    """Refuse what a file may not decide; ``values`` is config-shaped (``{"data": {...}, "model": {...}}``).

    ``given``: keys the user set on the command line (theirs, not the file's); ``prefix``: where the sections sit
    in the file, for the message (a sidecar's data config is under ``config.``).
    """
    tree = values.to_dict() if isinstance(values, RunConfig) else values
    said = {canonical_key(k, "command line") for k in given}
    for entry in () if trust_code else CODE_KEYS:
        section, _, leaf = entry.key.rpartition(".")
        part = tree.get(section)
        what = entry.runs(part) if isinstance(part, Mapping) and entry.key not in said else None
        if what is not None:
            restate = entry.restate.format(value=part.get(leaf))
            raise TrustError(f"{where}: {prefix}{entry.key} {what}; a run's files never decide what code runs — "
                             f"{TRUST_HINT}, or say it yourself: {restate}")
    for key, longest in PLAIN_ARGS.items():
        section, _, leaf = key.partition(".")
        args = tree.get(section, {}).get(leaf) if isinstance(tree.get(section), Mapping) else None
        if args is None:
            continue
        if not isinstance(args, Mapping):
            raise TrustError(f"{where}: {prefix}{key} must be a mapping of argument names to plain values")
        for name, value in args.items():
            if f"{key}.{name}" in said:
                continue
            if not _plain(value, longest):
                raise TrustError(f"{where}: {prefix}{key}.{name} = {_shown(value)} is not a plain value; builder "
                                 "arguments from a file must be numbers, strings, booleans or lists of them")
            if key == "model.args" and _loads_by_name(name, _ANY_LOADER):
                raise TrustError(f"{where}: {prefix}{key}.{name} {_LOADER_TEXT}")


def import_spec(spec: str, flag: str, error: type[VisiontrainError]) -> Any:
    """``"pkg.module:Name"`` or ``"path/file.py:Name"`` → the object (running the module's code), or one line
    (``error``, naming ``flag``) when that is impossible. Only for a spec the user gave (see the module doc)."""
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = user_path(module_name).resolve()
            if not path.is_file():
                raise error(f"{flag} {spec}: {path} does not exist")
            loaded = importlib.util.spec_from_file_location(f"visiontrain_user_{path.stem}", path)
            assert loaded is not None and loaded.loader is not None
            module = importlib.util.module_from_spec(loaded)
            sys.modules[loaded.name] = module  # workers (and pickling) find it by name
            loaded.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # `python -m`-like: modules in the current folder import
            module = importlib.import_module(module_name)
    except VisiontrainError:
        raise
    except Exception as exc:  # ImportError, SyntaxError or anything the module raises at import
        raise error(f"{flag} {spec}: cannot import {module_name}: {type(exc).__name__}: {exc}; run from the "
                    "folder that holds it, install it, or name the file (my_module.py:Name)") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise error(f"{flag} {spec}: module {module_name} has no {attr!r}") from None


def check_builder_args(model: str, source: str, args: Mapping[str, Any]) -> None:
    """Refuse builder arguments that would load a file, a URL or a class by name, wherever they come from."""
    refused = LOADER_ARGS.get(source)
    if refused is None:
        return  # visiontrain's own builders: their parameters are checked by name (factory._check_args)
    for key in args:
        if _loads_by_name(key, refused):
            raise TrustError(f"model {model!r}: argument {key!r} {_LOADER_TEXT}")


def read_config_file(path: str | Path, *, trust_code: bool = False, given: Iterable[str] = (),
                     run_file: bool = False) -> dict[str, Any]:
    """A config YAML's mapping. A user's own file may name code; one of a run (``run_file``, or inside a run
    folder) may not (:func:`check_file_values`)."""
    raw = read_yaml(path)
    if run_file or run_folder_of(path) is not None:
        check_file_values(load_config(raw, where=str(path)), path, trust_code=trust_code, given=given)
    return raw


def run_folder_of(path: str | Path) -> Path | None:
    """The visiontrain run folder a file lies in (at any depth, links resolved): a folder holding a
    ``config.yaml`` and ``checkpoints/`` or ``summary.json``; None for a file of the user's own."""
    try:
        resolved = user_path(path).resolve()
    except (OSError, RuntimeError):
        return None
    for folder in resolved.parents:
        try:
            if (folder / "config.yaml").is_file() and ((folder / "checkpoints").is_dir()
                                                       or (folder / "summary.json").is_file()):
                return folder
        except OSError:  # an unreadable folder above: not a run we can recognise
            continue
    return None


def _loads_by_name(key: Any, refused: frozenset[str]) -> bool:
    return key in refused or bool(_LOADER_SUFFIX.search(str(key)))


def _plain(value: Any, longest: int) -> bool:
    if isinstance(value, list | tuple):
        return len(value) <= longest and all(_scalar(v) for v in value)
    return _scalar(value)


def _scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= MAX_TEXT
    return value is None or isinstance(value, bool | int)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
