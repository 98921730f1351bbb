"""Experiment trackers (MLflow, and whatever follows) behind one small interface, fed by one callback.

A :class:`Tracker` opens (or reopens) a run, takes params, tags, metrics with their step and files; the
:class:`Tracking` callback gives it the resolved config, the tags and every scalar TensorBoard gets, at the same
steps (:mod:`.tensorboard`) — all but TensorBoard's ``hparams/…`` copies of the final metrics, which a resume
would have to purge (MLflow keeps every point it got); the best epoch and value are tags instead, which a resume
updates. The trainer ends it with :meth:`Tracking.finish` once ``summary.json`` and the
evaluation report exist, handing over the files worth keeping. A new tracker is one :class:`Tracker` subclass
(see :mod:`.mlflow_tracker`) and one name in the ``train.track`` choices.

Resume: the tracker's run id travels in the resume point (the callback's ``state_dict``), so a resumed run
reopens the same tracker run; points a killed process sent past its last resume point are already there, so a
step at or below the last one the tracker holds for a key is not sent again — no history holds a step twice.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from visiontrain.engine.callbacks import Callback
from visiontrain.engine.state import TrainState
from visiontrain.errors import ConfigError, VisiontrainError
from visiontrain.versions import library_versions
from visiontrain.watch.tensorboard import epoch_scalars, step_scalars


class TrackingError(ConfigError):
    """The tracker's store refused the run or could not be reached (a wrong URI, a server that is down)."""


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


class Tracker:
    """What visiontrain asks of an experiment tracker; each method is called from rank 0 only."""

    name = "tracker"

    def start(self, run_id: str | None, run_name: str, tags: dict[str, str]) -> str:
        """Open a new run (``run_id`` None) or reopen ``run_id``; returns the run's id."""
        raise NotImplementedError

    def log_params(self, params: dict[str, str]) -> None:
        raise NotImplementedError

    def set_tags(self, tags: dict[str, str]) -> None:
        raise NotImplementedError

    def last_steps(self) -> dict[str, int]:
        """The highest step the open run holds for each metric (empty for a new run)."""
        raise NotImplementedError

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_files(self, files: dict[str, list[Path]]) -> None:
        """Upload files, by the folder (artifact path) they go to."""
        raise NotImplementedError

    def end(self, status: str) -> None:
        """Close the run: ``FINISHED``, ``FAILED`` or ``KILLED``."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What ``summary.json`` says about the run in the tracker (its id, where it lives)."""
        raise NotImplementedError


def flat_params(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys and text values, as trackers store params.

    >>> flat_params({"optim": {"lr": 0.1, "milestones": [2, 4]}, "name": None})
    {'optim.lr': '0.1', 'optim.milestones': '[2, 4]', 'name': 'None'}
    """
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value if isinstance(value, str) else json.dumps(value) if value is not None \
                else "None"
    return out


def git_commit(folder: Path | None = None) -> str | None:
    """The commit checked out where training runs, when that is inside a git repository (and git exists)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) >= 40 else None


def run_tags(state: TrainState) -> dict[str, str]:
    cfg = state.config
    tags = {"data": cfg.data.name, "model": cfg.model.name, "task": state.task, "run_dir": str(state.run_dir),
            "visiontrain.version": library_versions().get("visiontrain", "")}
    commit = git_commit()
    if commit:
        tags["git.commit"] = commit
        tags["mlflow.source.git.commit"] = commit  # MLflow's UI shows this one beside the run
    return tags


class Tracking(Callback):
    """Feeds one :class:`Tracker`: params and tags at the start, TensorBoard's scalars as they are logged."""

    order = "observe"

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.run_id: str | None = None
        self._open = False
        self._sent: dict[str, int] = {}  # per key, the last step the tracker already holds
        self._lost = False  # the tracker failed mid-run: no more metrics are sent to it

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id} if self.run_id else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id") or None

    def on_fit_start(self, state: TrainState) -> None:
        reopen = self.run_id if state.resumed_from is not None else None
        try:
            self.run_id = self.tracker.start(reopen, state.run_dir.name, run_tags(state))
            self._open = True
            self._sent = self.tracker.last_steps() if reopen else {}
            self.tracker.log_params(flat_params(state.config.to_dict()))
        except VisiontrainError:
            raise
        except Exception as exc:  # the store refuses or cannot be reached: one line, before any training
            where = self.tracker.describe().get("tracking_uri", "its store")
            raise TrackingError(f"--track {self.tracker.name}: cannot log to {where} (check --track-uri and that the "
                                f"server runs): {_one_line(exc)}") from None

    def _send(self, values: dict[str, float], step: int) -> None:
        fresh = {k: float(v) for k, v in values.items() if step > self._sent.get(k, -1)}
        if not fresh or self._lost:
            return
        try:
            self.tracker.log_metrics(fresh, step)
        except Exception as exc:  # a tracking server gone mid-run (after its client's own retries) ends no training
            self._lost = True
            print(f"note: {self.tracker.name} stopped taking metrics at step {step} ({_one_line(exc)}); training "
                  "goes on, metrics.jsonl and TensorBoard have every value", file=sys.stderr, flush=True)
            return
        self._sent.update(dict.fromkeys(fresh, step))

    def on_batch_end(self, state: TrainState) -> None:
        if state.log_due():
            self._send(step_scalars(state), state.step)

    def on_epoch_end(self, state: TrainState) -> None:
        self._send(epoch_scalars(state), state.step)

    def on_fit_end(self, state: TrainState) -> None:
        if not self._open:
            return
        if state.error is not None:  # close what was opened; the run shows as failed (or killed by Ctrl-C)
            self.end("KILLED" if isinstance(state.error, KeyboardInterrupt) else "FAILED")
            return
        if state.best is not None:  # tags, not metrics: a resumed run updates them (no history to purge)
            best = state.best
            self.tracker.set_tags({"best.monitor": str(best.get("monitor")), "best.value": str(best.get("value")),
                                   "best.epoch": str(best.get("epoch"))})

    def finish(self, files: dict[str, list[Path]]) -> None:
        """Upload the run's files and close the tracker run (the trainer calls this after summary.json)."""
        if not self._open:
            return
        try:
            self.tracker.log_files({k: [p for p in v if p.is_file()] for k, v in files.items()})
        finally:
            self.end("FINISHED")

    def end(self, status: str) -> None:
        if self._open:
            self._open = False
            self.tracker.end(status)
