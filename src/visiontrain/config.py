"""The run configuration: typed, validated once at the edge, saved with every run.

A config is nested frozen dataclasses. It comes from defaults, then a YAML file, then dotted overrides
(``train.epochs=3``) — the CLI's flags are such overrides. Unknown keys and wrong types are errors that
name the key, so a typo never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visiontrain import limits
from visiontrain.errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    name: str = "mnist"  # a registered dataset (`visiontrain datasets`) or a folder-per-class path
    dir: str = "data"  # where datasets are cached / downloaded
    batch_size: int = 128  # images per training step
    eval_batch_size: int = 1000  # images per evaluation step (no gradients, so larger is fine)
    workers: int = 0  # DataLoader worker processes for file datasets (0 = in the main process)
    val_split: float = 0.1  # fraction of train held out (stratified, seeded) when a source has no val split
    image_size: int | None = None  # square input side in pixels; None = the model's or the dataset's own
    args: dict[str, Any] = field(default_factory=dict)  # dataset-specific arguments
    transforms: dict[str, Any] = field(default_factory=dict)  # {train: preset or [specs], eval: [specs]}; {} = auto
    normalize: str = "auto"  # auto (the data's statistics) | dataset (computed) | imagenet | none ([0, 1] only)
    bad_images: str = "error"  # error: stop before training, naming the file | skip: train on the rest
    max_pixels: int = 64 * 2**20  # larger declared image sizes are refused as decompression bombs
    download: bool = True  # allow downloading a registered dataset whose files are missing in `dir`
    cache: str = "auto"  # auto | memory | off: decode an image folder once into memory (uint8) and train from there
    cache_mb: int = 2048  # the in-memory budget for `cache: auto`, in MiB
    split_file: str | None = None  # a split.json from an earlier run: reuse its train/val split
    item_timeout_s: float = 300.0  # seconds one file/item may take to read before it counts as bad; 0 = no limit
    follow_symlinks: bool = False  # follow folder symlinks in a data folder (never out of it, nor into another class)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "small_cnn"  # a registered model (`visiontrain models`) or a torchvision classifier
    args: dict[str, Any] = field(default_factory=dict)  # builder arguments, e.g. {dropout: 0.3}
    # fine-tuning (docs/models.md); the defaults train the model from scratch as it is
    pretrained: str | None = None  # torchvision weights name (DEFAULT, IMAGENET1K_V1) or a weights file/run
    head: list[int] | None = None  # hidden widths of a new head, e.g. [128]: features→128→classes
    in_channels: int | None = None  # channels the model reads; None = its own (RGB nets get gray repeated)
    freeze: list[str] = field(default_factory=list)  # globs on parameter names to freeze, e.g. ["features.*"]
    freeze_backbone: bool = False  # train only the classification head
    unfreeze_at: int | None = None  # epoch (1-based) from which the frozen layers train too
    backbone_lr_scale: float = 1.0  # learning-rate multiplier for everything but the head
    init_from: str | None = None  # partially initialise from a weights file or a run (report in the run)
    init_match: str = "name"  # how init_from pairs tensors: name | order
    rename: list[str] = field(default_factory=list)  # init_from key renames OLD=NEW (re:PATTERN=REPL)
    strict: bool = False  # init_from must fill every tensor and use every tensor of the file
    trust_pickle: bool = False  # let pretrained/init_from unpickle a whole-model .pth: runs the file's code


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"  # sgd | adam | adamw | rmsprop
    lr: float = 0.003  # peak learning rate
    weight_decay: float = 0.0  # applied to weights only: never to biases or norm layers
    momentum: float = 0.9  # SGD/RMSprop momentum
    nesterov: bool = False  # SGD Nesterov momentum
    schedule: str = "onecycle"  # none | step | multistep | cosine | onecycle | plateau
    warmup_epochs: float = 0.0  # linear warm-up (fractions allowed) in front of the schedule
    step_size: int = 1  # epochs between decays (step)
    milestones: list[int] = field(default_factory=list)  # epochs at which to decay (multistep)
    gamma: float = 0.1  # decay factor (step, multistep, plateau)
    plateau_patience: int = 2  # epochs without improvement before plateau decays


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2
    device: str = "auto"  # auto (cuda → mps → cpu) | cpu | cuda | cuda:N | mps
    seed: int = 0
    deterministic: bool = False  # torch deterministic algorithms (bit-identical reruns on the GPU too)
    log_every: int = 100  # log the training loss every N steps (the seeds' choice)
    threads: int | None = None  # torch CPU threads; None = torch's default
    loss: str = "auto"  # auto (by task) | cross_entropy | bce (multi-label) | mse | l1 | smooth_l1 (regression)
    label_smoothing: float = 0.0
    class_weights: str | list[float] | None = None  # "auto" (inverse class frequency) or one weight per class
    precision: str = "32"  # 32 | bf16 | fp16 (autocast; fp16 adds a GradScaler) | auto (engine/precision.py)
    channels_last: bool = True  # NHWC memory format (faster convolutions on CPUs and tensor cores)
    compile: bool = False  # torch.compile the model
    accumulate: int = 1  # batches per optimizer step (gradient accumulation)
    clip_grad_norm: float | None = None  # clip the global gradient norm to this value
    ema_decay: float | None = None  # keep an exponential moving average of the weights (e.g. 0.999)
    mixup_alpha: float = 0.0  # MixUp strength (0 = off)
    cutmix_alpha: float = 0.0  # CutMix strength (0 = off)
    monitor: str = "auto"  # metric that picks the best checkpoint: auto (val/accuracy), or e.g. val/loss
    early_stop_patience: int | None = None  # stop after N epochs without improvement of `monitor`
    keep_last: int = 0  # also keep this many per-epoch checkpoints (epoch-0003.*) besides last/best
    checkpoint_every: int = 0  # also checkpoint (for resume) every N optimizer steps; 0 = per epoch only
    batch_size_per_device: int | None = None  # with several processes: global batch = this x processes
    scale_lr: bool = False  # with several processes: multiply the learning rate by the process count
    sync_bn: bool = False  # with several processes: BatchNorm statistics over the global batch
    dist_timeout_s: float = 600.0  # a rank that stops answering for this long ends the job (no hang)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs"  # the runs root
    name: str | None = None  # run folder name; None = <data>-<model>-<time>
    recipe: str | None = None  # a preset (`visiontrain recipes`) filled in under every key set explicitly

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
        recipe = next((v for k, v in overrides.items() if _canonical(k, where) == "recipe"), None)
        if recipe is not None and recipe != self.recipe:
            model = next((v for k, v in overrides.items() if _canonical(k, where) == "model.name"), None)
            for dotted, value in _recipe_settings(recipe, model, where).items():
                _set_dotted(merged, dotted, value, where)
        for dotted, value in overrides.items():
            _set_dotted(merged, _canonical(dotted, where), value, where)
        return load_config(merged, where=where)


# Flat keys accepted at the top of a YAML file: the same names as the CLI flags.
ALIASES: dict[str, str] = {
    "data": "data.name",
    "data_dir": "data.dir",
    "batch_size": "data.batch_size",
    "workers": "data.workers",
    "val_split": "data.val_split",
    "image_size": "data.image_size",
    "transforms": "data.transforms",
    "normalize": "data.normalize",
    "bad_images": "data.bad_images",
    "max_pixels": "data.max_pixels",
    "follow_symlinks": "data.follow_symlinks",
    "data_args": "data.args",
    "model": "model.name",
    "optimizer": "optim.name",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "schedule": "optim.schedule",
    "epochs": "train.epochs",
    "device": "train.device",
    "seed": "train.seed",
    "log_every": "train.log_every",
    "precision": "train.precision",
    "accumulate": "train.accumulate",
    "loss": "train.loss",
    "warmup_epochs": "optim.warmup_epochs",
    "deterministic": "train.deterministic",
    **{k: f"model.{k}" for k in ("pretrained", "head", "in_channels", "freeze", "freeze_backbone", "unfreeze_at",
                                 "backbone_lr_scale", "init_from", "init_match", "rename", "strict",
                                 "trust_pickle")},
}


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
        if key in _SECTIONS and isinstance(value, dict):
            for sub, sub_value in value.items():
                _set_dotted(nested, f"{key}.{sub}", sub_value, where)
        else:
            _set_dotted(nested, _canonical(key, where), value, where)
    cfg = _build(RunConfig, _with_recipe(nested, where), where, prefix="")
    _check_ranges(cfg, where)
    return cfg


def _with_recipe(nested: dict[str, Any], where: str) -> dict[str, Any]:
    """``nested`` with the recipe it names filled in underneath its explicit keys (see visiontrain.recipes)."""
    name = nested.get("recipe")
    if name is None:
        return nested
    model = nested.get("model", {}).get("name")
    base: dict[str, Any] = {}
    for dotted, value in _recipe_settings(name, model, where).items():
        _set_dotted(base, dotted, value, where)
    return _merge_under(base, nested)


def _recipe_settings(name: Any, model: Any, where: str) -> dict[str, Any]:
    from visiontrain.recipes import resolve  # (recipes imports nothing from here; lazy keeps the import cheap)

    if not isinstance(name, str):
        raise ConfigError(f"{where}: recipe must be a recipe name such as fast, got {name!r}")
    settings = resolve(name)
    if model is not None and model != settings.get("model.name"):  # its model arguments fit its own model only
        settings = {k: v for k, v in settings.items() if not k.startswith("model.args")}
    return settings


def _merge_under(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, section by section: a key set in ``top`` replaces ``base``'s value whole (a mapping
    such as ``model.args`` too, so a saved config.yaml always rebuilds exactly what it says)."""
    out = dict(base)
    for key, value in top.items():
        section = key in _SECTIONS and isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = {**out[key], **value} if section else value
    return out


def _check_ranges(cfg: RunConfig, where: str) -> None:
    checks = [
        (cfg.data.batch_size >= 1, "data.batch_size must be at least 1"),
        (cfg.data.eval_batch_size >= 1, "data.eval_batch_size must be at least 1"),
        (0 <= cfg.data.workers <= limits.MAX_WORKERS, f"data.workers must be 0 to {limits.MAX_WORKERS} (more than "
         f"{limits.WORKERS_PER_CORE} per CPU core are capped at run time)"),
        (0.0 <= cfg.data.val_split < 1.0, "data.val_split must be in [0, 1)"),
        (cfg.data.image_size is None or 8 <= cfg.data.image_size <= limits.MAX_IMAGE_SIZE,
         f"data.image_size must be 8 to {limits.MAX_IMAGE_SIZE} pixels"),
        (bool(cfg.data.name.strip()), "data.name must name a dataset, a folder or a manifest, not be empty (for "
         "the current folder, say '.')"),
        (cfg.data.normalize in ("auto", "dataset", "imagenet", "none"),
         "data.normalize must be auto, dataset, imagenet or none"),
        (cfg.data.bad_images in ("error", "skip"), "data.bad_images must be error or skip"),
        (cfg.data.max_pixels >= 1, "data.max_pixels must be at least 1"),
        (cfg.data.cache in ("auto", "memory", "off"), "data.cache must be auto, memory or off"),
        (cfg.data.cache_mb >= 0, "data.cache_mb must be 0 or more"),
        (0 <= cfg.data.item_timeout_s <= 604_800, "data.item_timeout_s must be 0 (no limit) to 604800 seconds"),
        (cfg.optim.lr > 0, "optim.lr must be positive"),
        (cfg.optim.weight_decay >= 0, "optim.weight_decay must be 0 or more"),
        (1 <= cfg.train.epochs <= limits.MAX_EPOCHS, f"train.epochs must be 1 to {limits.MAX_EPOCHS:,}"),
        (0 <= cfg.train.seed <= limits.MAX_SEED, f"train.seed must be 0 to {limits.MAX_SEED} (2**32 - 1)"),
        (cfg.train.log_every >= 1, "train.log_every must be at least 1"),
        (cfg.train.threads is None or 1 <= cfg.train.threads <= limits.MAX_THREADS,
         f"train.threads must be 1 to {limits.MAX_THREADS}"),
        (cfg.train.accumulate >= 1, "train.accumulate must be at least 1"),
        (0.0 <= cfg.train.label_smoothing < 1.0, "train.label_smoothing must be in [0, 1)"),
        (cfg.train.clip_grad_norm is None or cfg.train.clip_grad_norm > 0, "train.clip_grad_norm must be positive"),
        (cfg.train.ema_decay is None or 0.0 < cfg.train.ema_decay < 1.0, "train.ema_decay must be in (0, 1)"),
        (cfg.train.mixup_alpha >= 0 and cfg.train.cutmix_alpha >= 0, "mixup/cutmix alpha must be 0 or more"),
        (cfg.train.early_stop_patience is None or cfg.train.early_stop_patience >= 1,
         "train.early_stop_patience must be at least 1"),
        (cfg.train.keep_last >= 0 and cfg.train.checkpoint_every >= 0,
         "train.keep_last and train.checkpoint_every must be 0 or more"),
        (cfg.optim.warmup_epochs >= 0, "optim.warmup_epochs must be 0 or more"),
        (cfg.optim.step_size >= 1, "optim.step_size must be at least 1"),
        (0.0 < cfg.optim.gamma <= 1.0, "optim.gamma must be in (0, 1]"),
        (cfg.name is None or _one_component(cfg.name), f"name must be one folder name under --out, got "
         f"{cfg.name!r}: no / or \\, not empty, . or .. (to write elsewhere, set --out)"),
        *_model_checks(cfg.model),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{where}: {message}")


def _model_checks(m: ModelConfig) -> list[tuple[bool, str]]:
    return [
        (m.head is None or all(1 <= w <= limits.MAX_HEAD_WIDTH for w in m.head),
         f"model.head widths must be 1 to {limits.MAX_HEAD_WIDTH:,}"),
        (m.in_channels in (None, 1, 3), "model.in_channels must be 1 or 3"),
        (m.backbone_lr_scale > 0, "model.backbone_lr_scale must be positive (to stop training it, freeze it)"),
        (m.unfreeze_at is None or m.unfreeze_at >= 2, "model.unfreeze_at must be an epoch number of at least 2"),
        (m.unfreeze_at is None or bool(m.freeze or m.freeze_backbone),
         "model.unfreeze_at needs something frozen: add --freeze-backbone or --freeze PATTERN"),
        (m.init_match in ("name", "order"), "model.init_match must be name or order"),
        (bool(m.init_from) or not (m.rename or m.strict or m.init_match != "name"),
         "model.rename, model.strict and model.init_match apply to model.init_from; set --init-from"),
    ]


def _one_component(name: str) -> bool:
    """A run name is one folder under ``--out``: ``../../x`` or ``/tmp/x`` would write elsewhere."""
    return (bool(name.strip()) and name not in (".", "..") and not any(c in name for c in "/\\\0")
            and Path(name).name == name and not Path(name).is_absolute())


_SECTIONS = {"data", "model", "optim", "train"}


def canonical_key(key: str, where: str = "override") -> str:
    """The dotted key a flat alias or dashed name stands for: ``data`` → ``data.name``, ``trust-pickle`` →
    ``model.trust_pickle``; an unknown key is a ConfigError."""
    return _canonical(key, where)


def _canonical(key: str, where: str) -> str:
    key = key.replace("-", "_")
    if key in ALIASES:
        return ALIASES[key]
    if "." in key or key in {f.name for f in dataclasses.fields(RunConfig)}:
        return key
    raise ConfigError(f"{where}: unknown key {key!r}; use one of {', '.join(sorted(ALIASES))} "
                      "or a section key such as train.epochs")


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
            raise ConfigError(f"{where}: unknown key {prefix + str(key)!r} in {section}; "
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
            values[f.name] = _coerce(value, hint, key, where)
    return cls(**values)


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    """Check a leaf value against its type; accept ints for floats and strings for numbers from flags."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is dict and isinstance(value, dict):
            return dict(value)
        if origin is list and isinstance(value, list | tuple):
            (item_type,) = typing.get_args(option) or (typing.Any,)
            if item_type is typing.Any:
                return list(value)
            return [_coerce(v, item_type, f"{key}[{i}]", where) for i, v in enumerate(value)]
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > _MAX_INT:  # no setting needs more; torch and the OS overflow on such numbers
                raise ConfigError(f"{where}: {key} is out of range, got {value!r}")
            return value
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return _finite(value, key, where)
        if origin is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return _finite(value, key, where)  # YAML 1.1 reads `1e-3` (no dot) as a string; a float to everyone else
        if origin is str and isinstance(value, str):
            return value
    wanted = " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{where}: {key} must be {wanted}, got {value!r}")


_MAX_INT = 2**62


def _finite(value: int | float | str, key: str, where: str) -> float:
    """inf and nan are not settings (``--lr inf`` trained to NaN and exited 0); neither is 1e400."""
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}")
    return number


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
