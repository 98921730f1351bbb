"""MLflow as a :class:`~visiontrain.watch.tracking.Tracker`, through ``MlflowClient`` (no global active run, so a
run in a notebook or a ``visiontrain tune`` worker never mixes with another).

The store: ``--track-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<runs root>/mlflow.db`` with the
artifacts beside it in ``<runs root>/mlartifacts`` (MLflow 3 keeps its plain file store for those who opt in with
``MLFLOW_ALLOW_FILE_STORE=true``; a ``file:`` URI works then).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from visiontrain.errors import ConfigError
from visiontrain.optional import require
from visiontrain.watch.tracking import Tracker

MAX_PARAM = 6000  # MLflow's limit on a param value; a longer one (a long list) is cut, the config.yaml has it all
BATCH = 1000  # metrics per log_batch call (MLflow takes at most 1000)


def tracking_uri(given: str | None, runs_root: Path) -> str:
    """The store a run goes to: the flag, the environment, or a SQLite file under the runs root."""
    return given or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(runs_root / 'mlflow.db').resolve()}"


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, uri: str | None, experiment: str, runs_root: Path) -> None:
        require("mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(uri, runs_root)
        self.runs_root = runs_root
        if self.uri.startswith("sqlite:///"):
            runs_root.mkdir(parents=True, exist_ok=True)
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
        except Exception as exc:  # MLflow's own message names the problem; one line, not its traceback
            raise ConfigError(f"--track mlflow: cannot open the tracking store {self.uri}: "
                              f"{' '.join(str(exc).split())[:300]}") from None
        self.experiment = experiment
        self.run_id = ""
        self.experiment_id = ""

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        local = self.uri.startswith("sqlite:///") and not os.environ.get("MLFLOW_TRACKING_URI")
        # A local SQLite store keeps its artifacts beside it (MLflow would use ./mlruns of wherever it runs).
        location = (self.runs_root / "mlartifacts").resolve().as_uri() if local else None
        try:
            return self.client.create_experiment(self.experiment, artifact_location=location)
        except Exception:  # another process (a tune worker) created it meanwhile
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def start(self, run_id: str | None, run_name: str, tags: dict[str, str]) -> str:
        if run_id:
            try:
                run = self.client.get_run(run_id)
            except Exception:
                run = None
            if run is not None:  # the same run, reopened; it was RUNNING, FAILED or KILLED
                self.run_id, self.experiment_id = run_id, run.info.experiment_id
                self.client.update_run(run_id, status="RUNNING")
                self.set_tags(tags)
                return run_id
        self.experiment_id = self._experiment_id()
        self.run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id
        return self.run_id

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        held = self.client.get_run(self.run_id).data.params
        new = {k: v[:MAX_PARAM] for k, v in params.items() if k not in held}
        # MLflow never changes a logged param; a value a resume changed (--epochs 10) is kept as a tag
        changed = {k: v for k, v in params.items() if k in held and held[k] != v[:MAX_PARAM]}
        items = [Param(k, v) for k, v in new.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        for key, value in changed.items():
            self.client.set_tag(self.run_id, f"resume.{key}", value[:MAX_PARAM])

    def last_steps(self) -> dict[str, int]:
        keys = self.client.get_run(self.run_id).data.metrics
        return {k: max((m.step for m in self.client.get_metric_history(self.run_id, k)), default=-1) for k in keys}

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, metrics=items[i:i + BATCH])

    def log_files(self, files: dict[str, list[Path]]) -> None:
        for folder, paths in files.items():
            for path in paths:
                self.client.log_artifact(self.run_id, str(path), artifact_path=folder or None)

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)

    def describe(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "experiment_id": self.experiment_id, "experiment": self.experiment,
                "tracking_uri": self.uri}
