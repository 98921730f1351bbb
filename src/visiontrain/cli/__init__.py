"""The ``visiontrain`` command: the only place that parses argv. Thin: build a config, call the API, print.

One module per command group (:mod:`.train`, :mod:`.tune`, :mod:`.use`, :mod:`.data`, :mod:`.models`, :mod:`.runs`,
:mod:`.recipes`), the flags made from the config schema (:mod:`.flags`), and what is printed (:mod:`.output`).
"""

from __future__ import annotations

import argparse
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from visiontrain.cli import data, models, recipes, runs, train, tune, use
from visiontrain.cli.hints import unrecognized_message
from visiontrain.cli.train import config_from_args
from visiontrain.errors import VisiontrainError
from visiontrain.fileio import storage_error
from visiontrain.text import printable


class _Parser(argparse.ArgumentParser):
    """argparse's own errors (bad flag, bad value) as ONE line and exit code 2, like every other user error;
    argparse would print the whole usage first, which for ``train`` is 30 lines."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"visiontrain: error: {printable(message)}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="visiontrain", description="Train, evaluate and use image "
                                     "classifiers: the complete PyTorch training routine as one command.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in COMMAND_GROUPS:
        COMMANDS.update(group.register(sub))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if "--debug" in extras:  # also after the command (`visiontrain train … --debug`), where people type it
        extras = [e for e in extras if e != "--debug"]
        args.debug = True
    if extras:  # argparse's error, with the flag visiontrain uses where the arguments are a peer's (cli/hints.py)
        command = _command_parser(parser, args)
        command.error(unrecognized_message(extras, {f for a in command._actions for f in a.option_strings}))
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
        from visiontrain.data.guard import worker_error  # the data package loads torchvision: only when needed

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


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub-)sub-parser of the command that ran: `visiontrain data info` → the parser of `data info`."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = subs and getattr(args, subs[0].dest or "", None)
        if not chosen or chosen not in subs[0].choices:
            return parser
        parser = subs[0].choices[chosen]


def _thread_errors(args: threading.ExceptHookArgs) -> None:
    """A writer thread's full disk (TensorBoard's) is re-raised in the main thread and reported there, once."""
    if storage_error(args.exc_value) is None:
        threading.__excepthook__(args)


# Each command module has ``register(subparsers) -> {name: handler}``; a handler takes the parsed args and
# returns the exit code. The modules import what their commands run only when they run (a quick --help).
COMMAND_GROUPS = [train, tune, use, data, models, runs, recipes]
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


__all__ = ["COMMANDS", "build_parser", "config_from_args", "main"]


if __name__ == "__main__":
    sys.exit(main())
