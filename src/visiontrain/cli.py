"""The ``visiontrain`` command: the only place that parses argv. Thin: build a config, call the API, print."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import threading
import traceback
import unicodedata
from collections.abc import Sequence
from typing import NoReturn

from visiontrain.cli_flags import add_config_flags, flag_overrides
from visiontrain.config import RunConfig, load_config, parse_override
from visiontrain.data.guard import worker_error
from visiontrain.errors import ConfigError, VisiontrainError
from visiontrain.fileio import storage_error
from visiontrain.trust import read_config_file

TRUST_CODE_HELP = ("let the run's own files (its config.yaml, a checkpoint's sidecar, a --config YAML inside a run "
                   "folder) name code: import the dataset they name as module:Class or file.py:Class, unpickle "
                   "with their model.trust_pickle. Without it such a run is refused in one line (restating --data "
                   "SPEC or --trust-pickle yourself also works); only for runs you made yourself [default: off]")


class _Parser(argparse.ArgumentParser):
    """argparse's own errors (bad flag, bad value) as ONE line and exit code 2, like every other user error;
    argparse would print the whole usage first, which for ``train`` is 30 lines."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"visiontrain: error: {printable(message)}; see `{self.prog} --help`\n")


def printable(text: str) -> str:
    """``text`` as one line that is safe on a terminal: control characters (a newline in a file name, an escape
    sequence in a flag value or a class name) are shown escaped, as ``\\x1b``, instead of acting; so are lone
    surrogates (undecodable bytes of a file name), which would stop a print to stdout."""
    return "".join(ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in _CONTROL else ch
                   for ch in text)


_CONTROL = frozenset({"Cc", "Zl", "Zp", "Cs"})


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="visiontrain", description="Train, evaluate and use image "
                                     "classifiers: the complete PyTorch training routine as one command.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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

    ev = sub.add_parser("evaluate", help="loss, top-1/top-5, per-class accuracy and confusion matrix")
    ev.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    ev.add_argument("--data", help="dataset or folder to evaluate on [default: the run's own]")
    ev.add_argument("--data-dir", help="dataset cache folder [default: the run's own]")
    ev.add_argument("--split", default="test", help="split to evaluate: train, val or test [default: test]")
    ev.add_argument("--batch-size", type=int, help="images per evaluation step")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or mps [default: auto]")
    ev.add_argument("--json", action="store_true", help="print the full result as JSON")
    ev.add_argument("--report", metavar="DIR", help="write a report there: per-class precision/recall/F1, "
                    "confusion matrices, calibration (ECE, reliability diagram), confident mistakes; Markdown + JSON")
    ev.add_argument("--tta", default="none", help="test-time augmentation: none, flip, five-crop [default: none]")
    ev.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)

    pr = sub.add_parser("predict", help="classify image files, folders, globs or @list files")
    pr.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run folder, checkpoint, or an export "
                    "(.onnx through onnxruntime, .torchscript.pt, .pt2)")
    pr.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="files, folders (recursive), globs, "
                    "or @list.txt (one path per line)")
    pr.add_argument("--top-k", type=int, default=5, help="how many classes to show per image [default: 5]")
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda or mps [default: auto]")
    pr.add_argument("--json", action="store_true", help="print results as JSON")
    pr.add_argument("--csv", metavar="FILE", help="write the results to a CSV file")
    pr.add_argument("--batch-size", type=int, default=64, help="images per forward pass [default: 64]")
    pr.add_argument("--tta", default="none", help="test-time augmentation: none, flip, five-crop [default: none]")
    pr.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar on stderr [default: when stderr is a terminal]")
    pr.add_argument("--trust-code", action="store_true", help="load a .pt2 export: torch.export.load runs code "
                    "from the file, so only for a file you exported yourself")

    datasets = sub.add_parser("datasets", help="list the registered datasets")
    datasets.add_argument("--json", action="store_true", help="print as JSON")
    for module in COMMAND_GROUPS:
        COMMANDS.update(importlib.import_module(module).register(sub))
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults ← YAML file ← flags ← --set overrides. A run's config.yaml (``--resume``, or a ``--config`` inside
    a run folder) may not name code unless ``--trust-code`` or the flags restate it (visiontrain.trust)."""
    overrides = flag_overrides(args)
    for item in args.set:
        key, value = parse_override(item)
        overrides[key] = value
    trust = bool(getattr(args, "trust_code", False))
    if getattr(args, "resume", None):
        from visiontrain.runner import saved_config

        cfg = saved_config(args.resume, trust_code=trust, given=overrides)
    else:
        raw = read_config_file(args.config, trust_code=trust, given=overrides) if args.config else {}
        recipe = getattr(args, "cfg.recipe", None)
        if recipe:  # under the YAML's keys and the flags, not over them (config.run._with_recipe)
            raw = {**raw, "recipe": recipe}
        cfg = load_config(raw, where=args.config or "config")
    return cfg.override(overrides, where="command line") if overrides else cfg


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    threading.excepthook = _thread_errors
    try:
        return COMMANDS[args.command](args)
    except VisiontrainError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"visiontrain: error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except (OSError, RuntimeError) as exc:  # a full disk met outside visiontrain's own writes, a worker killed
        problem = storage_error(exc) or worker_error(exc)
        if problem is None:
            raise
        if args.debug:
            traceback.print_exc()
        print(f"visiontrain: error: {printable(str(problem))}", file=sys.stderr)
        return problem.exit_code
    except KeyboardInterrupt:
        print("visiontrain: interrupted", file=sys.stderr)
        return 130


def _thread_errors(args: threading.ExceptHookArgs) -> None:
    """A writer thread's full disk (TensorBoard's) is re-raised in the main thread and reported there, once."""
    if storage_error(args.exc_value) is None:
        threading.__excepthook__(args)


def _train(args: argparse.Namespace) -> int:
    from visiontrain.runner import train
    from visiontrain.use.report import print_train_result

    if args.resume and args.config:
        raise ConfigError("--resume uses the run's own config.yaml; drop --config (flags still override it)")
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in its own folder; drop --overwrite")
    if args.gpus:  # relaunch this very command under torchrun, one process per GPU
        from visiontrain.engine.distributed import launch

        return launch(args.gpus, _without_gpus(sys.argv[1:]))
    cfg = config_from_args(args)
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
    from visiontrain.runner import find_lr

    result = find_lr(cfg, steps=steps, start_lr=start, end_lr=end)
    if result["suggestion"] is None:
        raise ConfigError(f"the learning-rate range test diverged too early to suggest a rate (see "
                          f"{result['folder']}/lr_find.png); lower --start-lr or set --lr by hand")
    print(f"lr-find: suggested learning rate {result['suggestion']:.3g} (min loss at {result['min_loss_lr']:.3g}); "
          f"plot: {result['folder']}/lr_find.png")
    return float(result["suggestion"])


def _lr_find(args: argparse.Namespace) -> int:
    args.resume = None
    _suggested_lr(config_from_args(args), args.steps, args.start_lr, args.end_lr)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from visiontrain.use.commands import evaluate_command

    return evaluate_command(args)


def _predict(args: argparse.Namespace) -> int:
    from visiontrain.use.commands import predict_command

    return predict_command(args)


def _datasets(args: argparse.Namespace) -> int:
    from visiontrain.data import DESCRIPTIONS
    from visiontrain.use.report import print_table

    rows = [{"name": k, "description": v} for k, v in sorted(DESCRIPTIONS.items())]
    rows.append({"name": "PATH", "description": "a folder with one sub-folder per class (ImageFolder layout), "
                 "optionally split into train/ val/ test/"})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, ["name", "description"])
    return 0


# Command groups that live beside their code. Each module has ``register(subparsers) -> {name: handler}``
# where a handler takes the parsed args and returns the exit code.
COMMAND_GROUPS: list[str] = ["visiontrain.config.recipes", "visiontrain.use.runs", "visiontrain.models.commands",
                             "visiontrain.data.commands", "visiontrain.use.commands"]

COMMANDS = {"train": _train, "lr-find": _lr_find, "evaluate": _evaluate, "predict": _predict,
            "datasets": _datasets}


if __name__ == "__main__":
    sys.exit(main())
