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
    """SIGTERM/SIGHUP reached the wrapper: raised out of the wait so that the child is stopped too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, _frame: Any) -> None:
    raise _Stopped(signum)


def _tensorboard_command(args: argparse.Namespace) -> int:
    if not Path(args.root).is_dir():
        raise VisiontrainError(f"runs folder {args.root} does not exist; train first or pass the --out you used")
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(args.root), "--host", args.host,
               "--port", str(args.port)]
    print(f"TensorBoard on http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    # A signal to the wrapper alone (a service manager's SIGTERM, `kill`, a closed terminal) must not leave
    # TensorBoard running with its port open: it ends the wait, and the child is stopped on the way out.
    stops = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, _raise_stopped) for s in stops}
    child = subprocess.Popen(command)
    try:
        return child.wait()
    except KeyboardInterrupt:
        return 0
    except _Stopped as stopped:
        return 128 + stopped.signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
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
