"""``visiontrain runs``: every run under a runs root with its status and best metrics;
``visiontrain tensorboard``: TensorBoard on that root."""

from __future__ import annotations

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
