"""``visiontrain runs``: every run under a runs root with its status and best metrics (visiontrain.use.runs);
``visiontrain tensorboard``: TensorBoard on that root."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from visiontrain.cli.output import print_table
from visiontrain.errors import VisiontrainError
from visiontrain.use.runs import list_runs


def register(sub: argparse._SubParsersAction) -> dict[str, Any]:
    runs = sub.add_parser("runs", help="list runs with their status and best metrics")
    runs.add_argument("root", nargs="?", default="runs", help="runs folder [default: runs]")
    runs.add_argument("--json", action="store_true", help="print as JSON")
    tb = sub.add_parser("tensorboard", help="start TensorBoard on a runs folder")
    tb.add_argument("root", nargs="?", default="runs", help="runs folder [default: runs]")
    tb.add_argument("--port", type=int, default=6006, help="port [default: 6006]")
    tb.add_argument("--host", default="127.0.0.1", help="address to bind [default: 127.0.0.1]")
    return {"runs": _runs_command, "tensorboard": _tensorboard_command}


def _runs_command(args: argparse.Namespace) -> int:
    rows = list_runs(args.root)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no runs in {args.root}")
    else:
        print_table(rows, ["run", "status", "epochs", "model", "data", "best", "best_epoch", "test", "time_s"])
    return 0


class _Stopped(Exception):
    """A stop signal reached the wrapper: raised out of the wait so that the child is stopped too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopSignals:
    """Catches SIGINT/SIGTERM/SIGHUP from the moment before the child is started until it has been stopped.

    A signal that arrives while ``subprocess.Popen`` is still starting the child (the child exists, but the wrapper
    does not hold it yet) is only recorded, and raised once the child is held: raising inside ``Popen`` would leave
    the child running, orphaned, with its port open. Once armed, a signal raises at once and ends the wait."""

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.armed = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if s is not None:
                self._previous[s] = signal.signal(s, self._on_signal)
        return self

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.pending.append(signum)
        if self.armed:
            raise _Stopped(signum)

    def arm(self) -> None:
        """From now on a signal raises; one that came before raises here."""
        self.armed = True
        if self.pending:
            raise _Stopped(self.pending[0])

    def __exit__(self, *_exc: object) -> None:
        self.armed = False
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _tensorboard_command(args: argparse.Namespace) -> int:
    if not Path(args.root).is_dir():
        raise VisiontrainError(f"runs folder {args.root} does not exist; train first or pass the --out you used")
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(args.root), "--host", args.host,
               "--port", str(args.port)]
    print(f"TensorBoard on http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    # A signal to the wrapper alone (a service manager's SIGTERM, `kill`, a closed terminal, Ctrl-C) must not leave
    # TensorBoard running with its port open: it ends the wait, and the child is stopped on the way out.
    child: subprocess.Popen | None = None
    with _StopSignals() as signals:
        try:
            child = subprocess.Popen(command)
            signals.arm()
            return child.wait()
        except _Stopped as stopped:
            return 0 if stopped.signum == signal.SIGINT else 128 + stopped.signum
        finally:
            signals.armed = False
            if child is not None:
                _stop(child)


def _stop(child: subprocess.Popen) -> None:
    """Terminate ``child`` if it still runs; kill it if it has not ended within 10 s."""
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
