"""``--track mlflow``, read back with the real MLflow client: the params are the resolved config, every scalar
TensorBoard got is a metric with its step (values equal metrics.jsonl's), the tags, the artifacts, the run id in
summary.json, and a resumed run that continues the same MLflow run with no step twice.

The default tier uses MLflow's plain file store (quick); the slow tier starts a real ``mlflow server`` with a
SQLite backend on 127.0.0.1 and kills a run mid-epoch (a real SIGKILL) before resuming it against the server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import visiontrain

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

DATA = {"name": "synthetic", "args": {"train": 48, "val": 16, "test": 16, "size": 16}}
# --plots off: no pictures and no evaluation report (the slow tier checks those), so the default tier stays quick
CONFIG = {"data": DATA, "batch_size": 16, "epochs": 1, "log_every": 1, "seed": 0, "schedule": "none",
          "plots": False}


def _git_repo(folder: Path) -> str:
    """``folder`` as a git repository with one commit; returns the commit."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *args], cwd=folder, env=env, check=True, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                          check=True).stdout.strip()


def _records(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    parsed = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {kind: [r for r in parsed if r["kind"] == kind] for kind in ("step", "epoch")}


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A run tracked into a file store, 1 epoch, then resumed to 2 epochs (in this process, from a git repo)."""
    root = tmp_path_factory.mktemp("tracked")
    commit = _git_repo(root)
    uri = f"file:{root / 'mlruns'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        mp.chdir(root)
        config = {**CONFIG, "track": ["mlflow"], "track_uri": uri, "out": str(root / "runs"), "name": "r"}
        first = visiontrain.train(config, quiet=True)
        client = MlflowClient(uri)
        before = client.get_run(first.summary["tracking"]["mlflow"]["run_id"])
        second = visiontrain.train({**config, "epochs": 2}, resume=first.dir, quiet=True)
    yield {"first": first, "run": second, "client": client, "commit": commit, "before": before,
           "run_id": second.summary["tracking"]["mlflow"]["run_id"]}


def test_the_run_id_in_summary_json_is_one_mlflow_run_continued_by_the_resume(tracked: dict[str, Any]) -> None:
    saved = json.loads((tracked["run"].dir / "summary.json").read_text())
    assert saved["tracking"]["mlflow"]["run_id"] == tracked["run_id"] == tracked["before"].info.run_id
    run = tracked["client"].get_run(tracked["run_id"])
    assert run.info.status == "FINISHED"
    assert len(tracked["client"].search_runs([run.info.experiment_id])) == 1


def test_params_are_the_resolved_config_and_a_value_the_resume_changed_is_a_tag(tracked: dict[str, Any]) -> None:
    run = tracked["client"].get_run(tracked["run_id"])
    cfg = tracked["run"].config
    params = run.data.params
    assert params["optim.lr"] == str(cfg.optim.lr) and params["model.name"] == cfg.model.name
    assert params["data.args.train"] == "48" and params["train.track"] == "[\"mlflow\"]"
    assert params["train.epochs"] == "1"  # MLflow never changes a param: the first value stays ...
    assert run.data.tags["resume.train.epochs"] == "2"  # ... and what the resume changed is said beside it
    assert len(params) >= 60


def test_tags_name_the_data_the_model_and_the_git_commit(tracked: dict[str, Any]) -> None:
    tags = tracked["client"].get_run(tracked["run_id"]).data.tags
    assert tags["data"] == "synthetic" and tags["model"] == "small_cnn" and tags["task"] == "classification"
    assert tags["git.commit"] == tags["mlflow.source.git.commit"] == tracked["commit"]
    assert tags["mlflow.runName"] == "r"
    best = tracked["run"].summary["best"]
    assert (tags["best.monitor"], tags["best.epoch"], tags["best.value"]) == ("val/accuracy", str(best["epoch"]),
                                                                              str(best["value"]))


def test_metric_histories_equal_metrics_jsonl_with_no_step_twice(tracked: dict[str, Any]) -> None:
    client, run_id = tracked["client"], tracked["run_id"]
    records = _records(tracked["run"].dir)
    assert [r["step"] for r in records["step"]] == [1, 2, 3, 4, 5, 6]
    assert _history(client, run_id, "train/loss") == [(r["step"], r["train/loss"]) for r in records["step"]]
    assert _history(client, run_id, "train/lr") == [(r["step"], r["lr"]) for r in records["step"]]
    for key in ("val/accuracy", "val/loss", "val/top5", "train/accuracy"):
        assert _history(client, run_id, key) == [(r["step"], r[key]) for r in records["epoch"]], key
    assert _history(client, run_id, "train/epoch_loss") == [(r["step"], r["train/loss"]) for r in records["epoch"]]
    for key in client.get_run(run_id).data.metrics:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)


def test_every_scalar_tensorboard_got_is_an_mlflow_metric_at_the_same_steps(tracked: dict[str, Any]) -> None:
    acc = EventAccumulator(str(tracked["run"].dir), size_guidance={"scalars": 0})
    acc.Reload()
    client, run_id = tracked["client"], tracked["run_id"]
    tags = {t for t in acc.Tags()["scalars"] if not t.startswith("hparams/")}  # TensorBoard's HParams copies
    assert tags == set(client.get_run(run_id).data.metrics)
    for tag in tags:
        board = sorted((e.step, e.value) for e in acc.Scalars(tag))
        tracked_points = _history(client, run_id, tag)
        assert [s for s, _ in tracked_points] == [s for s, _ in board], tag
        assert [v for _, v in tracked_points] == pytest.approx([v for _, v in board], rel=1e-6), tag


def test_artifacts_are_the_best_checkpoint_and_the_run_files(tracked: dict[str, Any]) -> None:
    files = _artifacts(tracked["client"], tracked["run_id"])
    assert {"checkpoints/best.safetensors", "checkpoints/best.json", "config.yaml", "summary.json",
            "results.csv"} <= files
    assert not any(f.startswith(("plots/", "report/")) for f in files)  # --plots off: no pictures, no report
    local = Path(tracked["client"].download_artifacts(tracked["run_id"], "checkpoints/best.safetensors"))
    assert local.read_bytes() == (tracked["run"].dir / "checkpoints" / "best.safetensors").read_bytes()


def test_a_missing_mlflow_is_one_line_naming_the_extra(main_cli, one_line_error, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    result = main_cli("train", "--data", "synthetic", "--track", "mlflow", "--out", tmp_path)
    one_line_error(result, "pip install 'visiontrain[mlflow]'")
    assert not list(tmp_path.iterdir())  # refused before a run folder was made


def test_a_tracking_server_that_cannot_be_reached_is_one_line_before_training(
        main_cli, one_line_error, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # no minutes of retrying in a test
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    result = main_cli("train", "--data", "synthetic", "--data-arg", "train=16", "--data-arg", "val=8",
                      "--data-arg", "size=16", "--track", "mlflow", "--track-uri", f"http://127.0.0.1:{_free_port()}",
                      "--out", tmp_path, "--name", "r", "--quiet")
    one_line_error(result, "--track mlflow:", "127.0.0.1")
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # not one step trained


def test_an_unknown_tracker_is_refused_in_one_line(main_cli, one_line_error) -> None:
    one_line_error(main_cli("train", "--track", "wandb"), "train.track", "mlflow")


# -- the slow tier: a real `mlflow server` (SQLite backend) and a run killed mid-epoch ---------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 with a SQLite backend and proxied artifacts; its URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=(root / "server.log").open("w"),
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (root / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own process group: the server and its workers
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _vt(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "visiontrain", "train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_and_resumed_is_one_server_run_without_a_step_twice(mlflow_server: str,
                                                                                     tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VISIONTRAIN_FAULT"}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", MLFLOW_TRACKING_URI=mlflow_server)
    args = ["--data", "synthetic", "--data-arg", "train=64", "--data-arg", "val=16", "--data-arg", "test=16",
            "--data-arg", "size=16", "--batch-size", "16", "--epochs", "2", "--log-every", "1",
            "--checkpoint-every", "2", "--track", "mlflow", "--track-experiment", "killed", "--out", "runs",
            "--name", "k", "--quiet"]
    killed = _vt(args, tmp_path, {**env, "VISIONTRAIN_FAULT": "step:3"})  # after step 3 was logged; resume at 2
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = _vt(["--resume", "runs/k", "--quiet"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "runs" / "k"
    summary = json.loads((run_dir / "summary.json").read_text())
    client = MlflowClient(mlflow_server)
    run_id = summary["tracking"]["mlflow"]["run_id"]
    experiment = client.get_experiment_by_name("killed")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]
    records = _records(run_dir)
    assert [r["step"] for r in records["step"]] == list(range(1, 9))
    # step 3's point is the killed process's, sent once: a deterministic resume recomputes the same value
    assert _history(client, run_id, "train/loss") == [(r["step"], r["train/loss"]) for r in records["step"]]
    for key in ("val/accuracy", "val/loss", "train/accuracy"):
        assert _history(client, run_id, key) == [(r["step"], r[key]) for r in records["epoch"]], key
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.checkpoint_every"] == "2"
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)
    files = _artifacts(client, run_id)
    assert {"checkpoints/best.safetensors", "checkpoints/best.json", "config.yaml", "summary.json", "results.csv",
            "plots/loss.png", "plots/accuracy.png", "plots/confusion_matrix.png", "report/report.md",
            "report/report.json", "report/reliability.png"} <= files
    local = Path(client.download_artifacts(run_id, "report/report.json"))
    assert local.read_bytes() == (run_dir / "report" / "report.json").read_bytes()


@pytest.mark.slow
def test_under_torchrun_only_rank_zero_logs_one_mlflow_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for this process's client too
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "VISIONTRAIN_FAULT")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", MLFLOW_ALLOW_FILE_STORE="true")
    uri = f"file:{tmp_path / 'mlruns'}"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "visiontrain", "train", "--data", "synthetic", "--data-arg", "train=64",
                           "--data-arg", "val=16", "--data-arg", "size=16", "--batch-size", "16", "--epochs", "2",
                           "--plots", "off", "--track", "mlflow", "--track-uri", uri, "--out", "runs", "--name", "ddp",
                           "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("visiontrain")
    runs = client.search_runs([experiment.experiment_id])
    summary = json.loads((tmp_path / "runs" / "ddp" / "summary.json").read_text())
    assert [r.info.run_id for r in runs] == [summary["tracking"]["mlflow"]["run_id"]]  # one run, not one per rank
    records = _records(tmp_path / "runs" / "ddp")
    run_id = runs[0].info.run_id
    assert _history(client, run_id, "val/accuracy") == [(r["step"], r["val/accuracy"]) for r in records["epoch"]]
    assert _history(client, run_id, "train/loss") == [(r["step"], r["train/loss"]) for r in records["step"]]
