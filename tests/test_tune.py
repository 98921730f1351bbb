"""``visiontrain tune``: a search on the synthetic set beats a bad default learning rate, the median pruner stops
bad trials early, the trials table, the plots, a best.yaml that repeats the best trial exactly (CPU,
--deterministic); in the slow tier, two worker processes sharing one SQLite study, and Ctrl-C then
``tune --resume``."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

import visiontrain
from visiontrain.config import RunConfig
from visiontrain.errors import ConfigError
from visiontrain.trainer.search import parse_space

optuna = pytest.importorskip("optuna")

DATA = ["--data", "synthetic", "--data-arg", "train=96", "--data-arg", "val=32", "--data-arg", "test=16",
        "--data-arg", "size=16"]
BASE = {"data": {"name": "synthetic", "args": {"train": 160, "val": 64, "test": 16, "size": 16}}, "batch_size": 16,
        "epochs": 3, "plots": False, "deterministic": True, "device": "cpu", "lr": 1e-5}  # 1e-5: a bad default
SPACE = {"lr": {"log_uniform": [1e-4, 1e-1]}}


# The search of the checks: 6 trials of 3 epochs (about 10 s), so in the slow tier; the default tier runs
# a 2-trial search of 1 epoch (test_a_tiny_search_writes_the_table_and_the_best_config).
@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("tune")
    base = {**BASE, "out": str(out), "plots": True}  # the trials' pictures and the study's plots
    default = visiontrain.train({**base, "name": "default"}, quiet=True)
    seen: list[dict[str, Any]] = []
    result = visiontrain.tune(base, SPACE, trials=6, seed=0, on_trial=seen.append)
    return {"result": result, "default": default, "seen": seen, "out": out}


@pytest.mark.slow
def test_the_search_finds_a_better_learning_rate_than_the_bad_default(search: dict[str, Any]) -> None:
    result, default = search["result"], search["default"]
    assert result.direction == "maximize" and result.monitor == "val/accuracy"
    assert result.best["value"] > default.summary["best"]["value"] + 0.1  # measured: 0.72 vs 0.47
    assert result.best["params"]["lr"] > 1e-4


@pytest.mark.slow
def test_the_pruner_stops_bad_trials_early_from_their_epoch_values(search: dict[str, Any]) -> None:
    rows = search["result"].rows
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert pruned, rows
    assert all(r["epochs"] < BASE["epochs"] for r in pruned)
    for row in pruned:  # an ordinary run folder, stopped early with the reason
        summary = Path(row["run"]) / "summary.json"
        assert "pruned by optuna" in summary.read_text()


@pytest.mark.slow
def test_the_trials_table_lists_every_trial_once(search: dict[str, Any]) -> None:
    result = search["result"]
    with open(result.files["table"], newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [int(r["trial"]) for r in table] == list(range(6))
    assert {r["state"] for r in table} <= {"complete", "pruned"}
    assert [r["trial"] for r in search["seen"]] == list(range(6))  # one line per trial as it ended
    assert all(Path(r["run"]).is_dir() and r["run"].endswith(f"trial-{int(r['trial']):04d}") for r in table)


@pytest.mark.slow
def test_optunas_plots_are_written_as_png(search: dict[str, Any]) -> None:
    for key in ("history", "importance", "intermediate"):
        with Image.open(search["result"].files[key]) as image:
            assert image.format == "PNG" and image.size[0] > 400, key


@pytest.mark.slow
def test_best_yaml_repeats_the_best_trial_exactly(search: dict[str, Any]) -> None:
    result = search["result"]
    again = visiontrain.train(result.files["best"], quiet=True)
    assert again.summary["best"]["value"] == result.best["value"]
    assert again.config.optim.lr == result.best["params"]["lr"]
    assert again.dir.parent == search["out"]  # under the runs root, with a name of its own


def test_a_tiny_search_writes_the_table_and_the_best_config(tmp_path: Path) -> None:
    base = {**BASE, "data": {"name": "synthetic", "args": {"train": 32, "val": 16, "test": 16, "size": 16}},
            "epochs": 1, "out": str(tmp_path)}
    result = visiontrain.tune(base, SPACE, trials=2, seed=0, study="tiny")
    assert [r["state"] for r in result.rows] == ["complete", "complete"]
    assert result.storage == f"sqlite:///{tmp_path / 'tune.db'}" and result.folder == tmp_path / "tiny"
    assert (tmp_path / "tiny" / "trials.csv").read_text().startswith("trial,state,value,param:lr,")
    best = RunConfig.from_dict(yaml.safe_load(Path(result.files["best"]).read_text()))
    assert best.optim.lr == result.best["params"]["lr"] and best.name is None
    assert set(result.files) == {"table", "best"}  # --plots off: not Optuna's plots either
    assert not (tmp_path / "tiny" / "plots").exists()


@pytest.mark.parametrize(("space", "fragment"), [
    ({}, "is empty"),
    ({"lr": {"log_uniform": [0, 1]}}, "positive low"),
    ({"lr": {"uniform": [1, 0.5]}}, "must be below"),
    ({"lr": [1, 2]}, "must be one of"),
    ({"lrr": {"uniform": [0.1, 0.2]}}, "did you mean lr"),
    ({"optimizer": {"choice": ["adam", "adamm"]}}, "'adamm' is not one of"),
    ({"epochs": {"int": [0, 3]}}, "train.epochs must be 1 to"),
])
def test_a_bad_search_space_is_refused_before_any_trial(space: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        parse_space(space, RunConfig())


def test_tune_without_a_space_is_one_line(main_cli, one_line_error) -> None:
    one_line_error(main_cli("tune", "--data", "synthetic"), "--space")


@pytest.mark.parametrize("text", ['{"config": ', "[1, 2]", ""])
def test_a_damaged_tune_json_is_one_line(text: str, tmp_path: Path, main_cli, one_line_error) -> None:
    (tmp_path / "tune.json").write_text(text)
    one_line_error(main_cli("tune", "--resume", tmp_path), "tune.json")


# -- the slow tier: real processes ------------------------------------------------------------------------------

_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _tune(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "visiontrain", "tune", *map(str, args)]


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study_and_run_n_trials_in_all(commands, tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text("lr: {log_uniform: [1.0e-4, 1.0e-1]}\n")
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    argv = _tune("--space", "space.yaml", *DATA, "--batch-size", "16", "--epochs", "2", "--plots", "off",
                 "--trials", "8", "--study", "shared", "--storage", storage)
    results = commands({"a": argv, "b": argv}, cwd=tmp_path, timeout=600)
    for name, r in results.items():
        assert r.code == 0, (name, r.err)
    study = optuna.load_study(study_name="shared", storage=storage)
    ran = [t for t in study.trials if not t.user_attrs.get("skipped")]
    numbers = [t.number for t in ran]
    assert len(ran) == 8 and len(set(numbers)) == 8, numbers
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in ran)
    assert sorted(p.name for p in (tmp_path / "runs" / "shared").glob("trial-*")) == \
        [f"trial-{n:04d}" for n in sorted(numbers)]
    # both workers took trials, and each wrote the same best config, from the whole study
    assert all("trial " in r.out for r in results.values())
    best = (tmp_path / "runs" / "shared" / "best.yaml").read_text()
    assert f"trial {study.best_trial.number}," in best


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_tune_resume_finishes_the_study(tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text("lr: {log_uniform: [1.0e-4, 1.0e-1]}\n")
    argv = _tune("--space", "space.yaml", *DATA, "--data-arg", "train=800", "--batch-size", "16", "--epochs", "3",
                 "--plots", "off", "--trials", "4", "--study", "s", "--pruner", "none")
    proc = subprocess.Popen(argv, cwd=tmp_path, env=_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = tmp_path / "runs" / "s"
    deadline = time.monotonic() + 300
    while not (folder / "trial-0001" / "metrics.jsonl").exists():  # the second trial is training
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted; continue with: visiontrain tune --resume runs/s" in err
    with open(folder / "trials.csv", newline="") as fh:
        states = [r["state"] for r in csv.DictReader(fh)]
    assert states == ["complete", "fail"], (states, out)
    done = subprocess.run(_tune("--resume", folder), cwd=tmp_path, env=_ENV, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    with open(folder / "trials.csv", newline="") as fh:
        states = [r["state"] for r in csv.DictReader(fh)]
    assert states == ["complete", "fail", "complete", "complete", "complete"], states
