"""``visiontrain runs``: every run under a runs root with its status and best metrics;
``visiontrain tensorboard``: TensorBoard on that root."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from visiontrain.errors import VisiontrainError
from visiontrain.limits import MAX_JSON_BYTES, parse_json, read_capped


def list_runs(root: str | Path = "runs") -> list[dict[str, Any]]:
    """One row per run folder (one with a config.yaml), newest first."""
    base = Path(root)
    if not base.is_dir():
        raise VisiontrainError(f"runs folder {base} does not exist; train first or pass the --out you used")
    rows = []
    for run in sorted((p for p in base.iterdir() if (p / "config.yaml").is_file()),
                      key=lambda p: p.stat().st_mtime, reverse=True):
        rows.append(_row(run))
    return rows


def _row(run: Path) -> dict[str, Any]:
    summary = _read_json(run / "summary.json")
    last = _read_json(run / "checkpoints" / "last.json")
    row: dict[str, Any] = {"run": run.name, "path": str(run)}
    if summary:  # read from files: any field may be missing or of another type
        best, test = _section(summary, "best"), _section(summary, "test")
        row.update({
            "status": "stopped" if summary.get("stopped_early") else "done",
            "epochs": summary.get("epochs_completed"),
            "model": _section(summary, "model").get("name"),
            "data": _section(summary, "data").get("name"),
            "best": _pct(best.get("accuracy")), "best_epoch": best.get("epoch"),
            "test": _pct(test.get("accuracy")),
            "time_s": summary.get("wall_time_s"),
        })
    elif last:
        row.update({"status": "incomplete (resume with --resume)", "epochs": last.get("epoch"),
                    "model": _section(last, "model").get("name")})
    else:
        row["status"] = "no checkpoint yet"
    return row


def _section(record: dict[str, Any], key: str) -> dict[str, Any]:
    value = record.get(key)
    return value if isinstance(value, dict) else {}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = parse_json(read_capped(path, MAX_JSON_BYTES, "a run's JSON file"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pct(value: float | None) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, int | float) else ""


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
    from visiontrain.use.report import print_table

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
