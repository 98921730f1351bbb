"""One call from a model config to the model that trains: ``build_model(cfg.model, inp)``.

In order: the architecture (with ``--pretrained`` weights loaded, the stem adapted to the data's
channels), the head replaced to fit the class count (and ``--head`` hidden widths), ``--init-from``
partial loading with its report, then freezing (``--freeze``, ``--freeze-backbone``), the epoch at which
the frozen tensors unfreeze (the engine's ``GradualUnfreeze`` does it) and the backbone learning-rate scale.
:func:`model_spec` is what a checkpoint records; :func:`visiontrain.models.rebuild.rebuild_model` turns it
back into the same architecture without any weights files.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from visiontrain.checkpoint.weights import WRAPPER_PREFIXES
from visiontrain.config import ModelConfig
from visiontrain.errors import ModelError
from visiontrain.fileio import atomic_write_text
from visiontrain.models.factory import ModelInput, create_model
from visiontrain.models.partial import LoadReport, load_partial
from visiontrain.models.pretrained import IMPLIED_ARGS, Pretrained, is_file_value, load_pretrained
from visiontrain.models.rebuild import read_model_weights
from visiontrain.models.surgery import check_patterns, find_head, freeze, pattern_predicate, replace_head, under


@dataclass
class BuiltModel:
    """The model to train and everything the runner wires around it."""

    model: nn.Module
    spec: dict[str, Any]  # the checkpoint's "model" entry: name, args, head
    head: str  # dotted name of the classification head
    frozen: list[str] = field(default_factory=list)  # frozen parameter names
    init_report: LoadReport | None = None
    pretrained: Pretrained | None = None
    head_replaced: bool = False
    lr_scale: Callable[[str], float] | None = None  # for build_optimizer (discriminative learning rates)
    unfreeze_at: int | None = None  # epoch (1-based) from which the frozen tensors train too

    def preprocessing(self, prep: Any) -> Any:
        """``prep`` with the pretrained weights' own normalization, when they have one."""
        p = self.pretrained
        if p is None or p.mean is None or p.std is None:
            return prep
        if prep.channels == len(p.mean):
            return dataclasses.replace(prep, mean=p.mean, std=p.std)
        mean, std = sum(p.mean) / len(p.mean), sum(p.std) / len(p.std)  # gray into an RGB net
        return dataclasses.replace(prep, mean=(mean,) * prep.channels, std=(std,) * prep.channels)

    def report(self, run_dir: Path, quiet: bool = False) -> None:
        """Print what was loaded and frozen; save ``init_report.json`` in the run folder. The init report
        is printed even when ``quiet``: what a partial load left out is a result, not progress."""
        lines: list[str] = []
        if self.pretrained is not None:
            what = f"replaced for {self._classes()} classes" if self.head_replaced else "kept"
            lines.append(f"pretrained: {self.pretrained.description}; head {self.head!r} {what}")
            atomic_write_text(run_dir / "pretrained.json", json.dumps(self.pretrained_record(), indent=2) + "\n")
        if self.init_report is not None:
            path = run_dir / "init_report.json"
            path.write_text(json.dumps(self.init_report.to_dict(), indent=2) + "\n", encoding="utf-8")
            for line in [*self.init_report.lines(), f"  full report: {path}"]:
                print(line, file=sys.stderr, flush=True)
        if self.frozen:
            lines.append(f"frozen: {len(self.frozen)} parameter tensors ({_count(self.model, self.frozen):,} "
                         f"values); training {sum(p.numel() for p in self.model.parameters() if p.requires_grad):,}")
        for line in [] if quiet else lines:
            print(line, file=sys.stderr, flush=True)

    def pretrained_record(self) -> dict[str, Any]:
        """What the run started from (``pretrained.json``): the weights, the file read, and what published weights
        say about themselves — input side, resize, interpolation, mean/std and their own class names."""
        p = self.pretrained
        if p is None:
            return {}
        return {"weights": p.description, "file": p.file, "num_classes": p.num_classes, "head_replaced":
                self.head_replaced, **(p.info.to_dict() if p.info else {})}

    def _classes(self) -> int:
        head = self.model.get_submodule(self.head)
        last = [m for m in head.modules() if isinstance(m, nn.Linear | nn.Conv2d)][-1]
        return int(getattr(last, "out_features", None) or last.out_channels)


def build_model(cfg: ModelConfig, inp: ModelInput) -> BuiltModel:
    """The model for ``inp`` as ``cfg`` describes it.

    >>> built = build_model(ModelConfig("resnet18", freeze_backbone=True), ModelInput(1, 32, 4))
    >>> built.head, built.model.fc.out_features, built.model.conv1.in_channels
    ('fc', 4, 1)
    """
    args = dict(cfg.args)
    pretrained = (load_pretrained(cfg.name, args, inp, cfg.pretrained, trust_pickle=cfg.trust_pickle,
                                  check_hash=cfg.pretrained_check_hash, offline=cfg.offline)
                  if cfg.pretrained else None)
    model = pretrained.model if pretrained else create_model(cfg.name, inp, args)
    head = find_head(model, pretrained.num_classes if pretrained else inp.num_classes)
    # pretrained weights for another class count get a fresh head; the same count keeps the trained one
    replaced = cfg.head is not None or (pretrained is not None and pretrained.num_classes != inp.num_classes)
    if replaced:
        replace_head(model, inp.num_classes, cfg.head, path=head)
    built = BuiltModel(model, model_spec(cfg, inp.channels), head, pretrained=pretrained, head_replaced=replaced)
    if cfg.init_from:
        weights = read_model_weights(cfg.init_from, trust_pickle=cfg.trust_pickle)
        if cfg.init_match == "order" and not weights.ordered:
            raise ModelError(f"--init-match order needs the tensor order of {cfg.init_from}, which a plain "
                             "safetensors file does not keep; use the original .pth (or a file written by "
                             "`visiontrain checkpoint convert`), or match by name with --rename")
        built.init_report = load_partial(model, weights.tensors, match=cfg.init_match, rules=cfg.rename,
                                         strict=cfg.strict, source=str(cfg.init_from))
    _apply_freezing(built, cfg)
    return built


def _apply_freezing(built: BuiltModel, cfg: ModelConfig) -> None:
    model, in_head = built.model, under(built.head)
    if cfg.freeze:
        check_patterns(model, cfg.freeze)
    by_pattern = pattern_predicate(cfg.freeze)
    if cfg.freeze or cfg.freeze_backbone:
        built.frozen = freeze(model, lambda n: by_pattern(n) or (cfg.freeze_backbone and not in_head(n)))
    if cfg.backbone_lr_scale != 1.0:
        scale = cfg.backbone_lr_scale
        # names may come wrapped by torch.compile (`_orig_mod.fc.weight`): the head is the same either way
        built.lr_scale = lambda name: 1.0 if in_head(_plain(name)) else scale
    if cfg.unfreeze_at is not None and built.frozen:
        built.unfreeze_at = cfg.unfreeze_at  # the trainer turns this into the engine's GradualUnfreeze


def model_spec(cfg: ModelConfig, channels: int) -> dict[str, Any]:
    """What a checkpoint records to rebuild the architecture: ``{name, args, head}``.

    ``args`` includes what pretrained weights imply (``transform_input`` for Inception/GoogLeNet).
    """
    args = dict(cfg.args)
    if cfg.pretrained and not is_file_value(cfg.pretrained):
        args.update(IMPLIED_ARGS.get(cfg.name, {}) if channels == 3 else {})
    return {"name": cfg.name, "args": args, "head": list(cfg.head) if cfg.head is not None else None}


def _plain(name: str) -> str:
    while name.startswith(WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def _count(model: nn.Module, names: list[str]) -> int:
    wanted = set(names)
    return sum(p.numel() for n, p in model.named_parameters() if n in wanted)
