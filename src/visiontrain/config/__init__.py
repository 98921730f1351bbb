"""The run configuration: one schema (:mod:`~visiontrain.config.sections`) from which the flags, the flat YAML
names, the checks and the docs' knob table are made; loading and overriding (:mod:`~visiontrain.config.run`);
recipes, the presets filled in under a user's keys (:mod:`~visiontrain.config.recipes`).

>>> cfg = load_config({"epochs": 3, "clip_grad_norm": 1.0})
>>> cfg.train.epochs, cfg.train.clip_grad_norm
(3, 1.0)
>>> load_config({"optimizer": "adamm"})
Traceback (most recent call last):
...
visiontrain.errors.ConfigError: config: optim.name 'adamm' is not one of: sgd, adam, adamw, rmsprop; did you mean adam?
"""

from visiontrain.config.knobs import Knob, Leaf, knob
from visiontrain.config.run import (
    ALIASES,
    SECTIONS,
    RunConfig,
    canonical_key,
    flat_names,
    hparam_values,
    keys,
    load_config,
    parse_override,
    read_yaml,
)
from visiontrain.config.sections import DataConfig, ModelConfig, OptimConfig, TrainConfig

__all__ = ["ALIASES", "SECTIONS", "DataConfig", "Knob", "Leaf", "ModelConfig", "OptimConfig", "RunConfig",
           "TrainConfig", "canonical_key", "flat_names", "hparam_values", "keys", "knob", "load_config",
           "parse_override", "read_yaml"]
