"""``visiontrain runs``: every run under a runs root with its status and best metrics (visiontrain.use.runs);
``visiontrain tensorboard``: TensorBoard on that root."""

from __future__ import annotations

import argparse
import json
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


def _tensorboard_command(args: argparse.Namespace) -> int:
    if not Path(args.root).is_dir():
        raise VisiontrainError(f"runs folder {args.root} does not exist; train first or pass the --out you used")
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(args.root), "--host", args.host,
               "--port", str(args.port)]
    print(f"TensorBoard on http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 0
