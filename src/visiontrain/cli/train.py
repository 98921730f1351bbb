"""``visiontrain train`` and ``visiontrain lr-find``: their flags are the config schema's (:mod:`.flags`); the
config is built from defaults ← YAML file ← flags ← ``--set`` and handed to the trainer."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from visiontrain import host
from visiontrain.cli.flags import TRUST_CODE_HELP, add_config_flags, flag_overrides
from visiontrain.cli.output import print_train_result
from visiontrain.config import RunConfig, load_config, parse_override
from visiontrain.config.trust import read_config_file
from visiontrain.errors import ConfigError
from visiontrain.fileio import user_path


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    train = sub.add_parser("train", help="train a model (no arguments: a small CNN on MNIST)",
                           usage="visiontrain train [--config FILE | --resume RUN] [FLAG ...] [--set KEY=VALUE ...]",
                           description="Train a model. With no arguments: a small CNN on MNIST, offline.")
    train.add_argument("--config", help="YAML config file; flags given here override its values")
    train.add_argument("--resume", metavar="RUN", help="continue a stopped or killed run from its last "
                       "checkpoint (its config.yaml; flags given here override it, e.g. --epochs)")
    add_config_flags(train)
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key, e.g. --set model.args.width=32 (repeatable)")
    train.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    train.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same --name "
                       "(only a visiontrain run; removed once the new run has started) [default: add a -2 suffix]")
    train.add_argument("--quiet", action="store_true", help="no progress output, only the final lines")
    train.add_argument("--gpus", type=int, default=None, metavar="N",
                       help="train on N GPUs of this machine: relaunches the command under torchrun (DDP)")
    train.add_argument("--lr-find", action="store_true", help="run the learning-rate range test first and train "
                       "with its suggested rate")

    finder = sub.add_parser("lr-find", help="learning-rate range test: a plot and a suggested --lr",
                            usage="visiontrain lr-find [--config FILE] [FLAG ...] [--steps N] [--set KEY=VALUE ...]",
                            description="Learning-rate range test on the model and data given by the same flags "
                            "as `train`; writes lr_find.png and prints the suggested rate.")
    finder.add_argument("--config", help="YAML config file; flags given here override its values")
    add_config_flags(finder)
    finder.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    finder.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    finder.add_argument("--steps", type=int, default=100, help="steps of the sweep [default: 100]")
    finder.add_argument("--start-lr", type=float, default=1e-6, help="first rate [default: 1e-6]")
    finder.add_argument("--end-lr", type=float, default=1.0, help="last rate [default: 1]")

    return {"train": _train, "lr-find": _lr_find}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults ← YAML file ← flags ← --set overrides. A run's config.yaml (``--resume``, or a ``--config`` inside
    a run folder) may not name code unless ``--trust-code`` or the flags restate it (visiontrain.config.trust)."""
    overrides = flag_overrides(args)
    for item in args.set:
        key, value = parse_override(item)
        overrides[key] = value
    trust = bool(getattr(args, "trust_code", False))
    if getattr(args, "resume", None):
        from visiontrain.trainer.folders import saved_config

        cfg = saved_config(args.resume, trust_code=trust, given=overrides)
    else:
        raw = read_config_file(args.config, trust_code=trust, given=overrides) if args.config else {}
        recipe = getattr(args, "cfg.recipe", None)
        if recipe:  # under the YAML's keys and the flags, not over them (config.run._with_recipe)
            raw = {**raw, "recipe": recipe}
        cfg = load_config(raw, where=args.config or "config")
        if "data.dir" in overrides and "data.name" not in overrides and cfg.data.name == RunConfig().data.name:
            _refuse_dataset_as_cache(overrides["data.dir"])
    return cfg.override(overrides, where="command line") if overrides else cfg


def _refuse_dataset_as_cache(data_dir: str) -> None:
    """--data-dir is the download cache of registered datasets; people pass their own dataset there and would get
    MNIST (downloaded into it, even). A folder of class folders there, with no dataset named, is refused."""
    from visiontrain.data.folders import class_folders_in  # the data package loads torchvision: only here

    found = class_folders_in(user_path(data_dir))
    if found:
        raise ConfigError(f"--data-dir {data_dir} holds class folders ({', '.join(f + '/' for f in found)}): to "
                          f"train on them use --data {data_dir} (--data-dir is only the download cache of "
                          f"registered datasets: for mnist cached there, say --data mnist --data-dir {data_dir})")


def wait_before_torch(threads: object) -> None:
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads it: with ``threads: auto`` on a shared host, ask for
    passive waiting before the first ``import torch`` (:func:`visiontrain.host.wait_passively`)."""
    if threads == "auto" and "OMP_NUM_THREADS" not in os.environ:
        host.wait_passively(host.auto_threads())


def _threads_flag(args: argparse.Namespace) -> object:
    """``--threads`` as given, else the default: reading a run's config (--resume) or checking --data-dir may load
    torch, so the wait policy is decided from the flags before the config is read."""
    return flag_overrides(args).get("train.threads", RunConfig().train.threads)


def _train(args: argparse.Namespace) -> int:
    if args.resume and args.config:
        raise ConfigError("--resume uses the run's own config.yaml; drop --config (flags still override it)")
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in its own folder; drop --overwrite")
    if args.gpus:  # relaunch this very command under torchrun, one process per GPU
        from visiontrain.engine.distributed import launch

        return launch(args.gpus, _without_gpus(sys.argv[1:]))
    wait_before_torch(_threads_flag(args))
    cfg = config_from_args(args)
    from visiontrain.trainer.training import train

    if args.lr_find:
        cfg = cfg.override({"optim.lr": _suggested_lr(cfg, steps=100, start=1e-6, end=1.0)})
    run = train(cfg, resume=args.resume, quiet=args.quiet, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun the first process speaks for the job
        print_train_result(run)
    return 0


def _without_gpus(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--gpus":
            skip = True
        elif not arg.startswith("--gpus="):
            out.append(arg)
    return out


def _suggested_lr(cfg: RunConfig, steps: int, start: float, end: float) -> float:
    from visiontrain.trainer.training import find_lr

    result = find_lr(cfg, steps=steps, start_lr=start, end_lr=end)
    if result["suggestion"] is None:
        raise ConfigError(f"the learning-rate range test diverged too early to suggest a rate (see "
                          f"{result['folder']}/lr_find.png); lower --start-lr or set --lr by hand")
    print(f"lr-find: suggested learning rate {result['suggestion']:.3g} (min loss at {result['min_loss_lr']:.3g}); "
          f"plot: {result['folder']}/lr_find.png")
    return float(result["suggestion"])


def _lr_find(args: argparse.Namespace) -> int:
    args.resume = None
    wait_before_torch(_threads_flag(args))
    _suggested_lr(config_from_args(args), args.steps, args.start_lr, args.end_lr)
    return 0


