"""The `visiontrain` command end to end, as real processes: train → evaluate → predict on the synthetic set,
the run folder a training leaves, reproducibility from its config.yaml, and the listing/help commands."""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
import yaml

from visiontrain.config import RunConfig
from visiontrain.engine.timing import is_timing

SMALL = ["--set", "data.args.train=400", "--set", "data.args.val=100", "--set", "data.args.test=100"]
EPOCHS, BATCH, LOG_EVERY, TRAIN_N = 3, 32, 4, 400
STEPS_PER_EPOCH = -(-TRAIN_N // BATCH)  # 13: the last batch has 16 images


@dataclass
class E2E:
    cwd: Path
    run_dir: Path  # relative to cwd, as printed
    out: str
    err: str
    after: dict[str, Any]  # CliResult of each command run on the finished run, by name
    printed_predict: list[str]  # the `try it:` line's argv

    @property
    def summary(self) -> dict:
        return json.loads((self.cwd / self.run_dir / "summary.json").read_text())


def _line(text: str, prefix: str) -> str:
    found = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(found) == 1, (prefix, text)
    return found[0]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory, cli, commands) -> E2E:
    cwd = tmp_path_factory.mktemp("cli")
    r = cli("train", "--data", "synthetic", "--epochs", EPOCHS, "--batch-size", BATCH, "--out", "runs",
            "--name", "e2e", "--set", f"train.log_every={LOG_EVERY}", *SMALL, cwd=cwd)
    assert r.code == 0, r.err
    printed = shlex.split(_line(r.out, "try it:").removeprefix("try it:"))
    script = Path(sys.executable).parent / "visiontrain"  # the installed console script, run as printed
    vt = [sys.executable, "-m", "visiontrain"]
    # Everything that only reads the finished run goes at once: the machine has more than one core.
    after = commands({
        "printed": [script, *printed[1:]] if script.exists() else [*vt, *printed[1:]],
        "again": [*vt, "train", "--config", "runs/e2e/config.yaml", "--name", "again", "--quiet"],
        "evaluate": [*vt, "evaluate", "runs/e2e", "--json"],
        "predict": [*vt, "predict", "runs/e2e", "runs/e2e/samples", "--top-k", "2", "--json"],
    }, cwd=cwd)
    return E2E(cwd, Path("runs/e2e"), r.out, r.err, after, printed)


def test_train_prints_the_closing_lines(e2e: E2E) -> None:
    s = e2e.summary
    best, test = s["best"], s["test"]
    assert _line(e2e.out, "done in ").endswith(f"{EPOCHS} epochs on cpu")
    assert _line(e2e.out, "best val: ") == (f"best val: accuracy {100 * best['accuracy']:.2f}%, top5 "
                                            f"{100 * best['top5']:.2f}%, loss {best['loss']:.4f} "
                                            f"(epoch {best['epoch']})")
    assert f"accuracy {100 * test['accuracy']:.2f}%" in _line(e2e.out, "test: ")
    assert _line(e2e.out, "run folder:").split()[-1] == "runs/e2e"
    assert _line(e2e.out, "watch it:").split(maxsplit=2)[-1] == "tensorboard --logdir runs"
    # progress goes to stderr, one line per epoch, never to stdout
    assert len([line for line in e2e.err.splitlines() if line.startswith("epoch ") and ": train loss" in line]) == 3
    assert "Traceback" not in e2e.err


def test_printed_predict_line_works_as_printed(e2e: E2E) -> None:
    argv = e2e.printed_predict
    assert argv[:3] == ["visiontrain", "predict", "runs/e2e"] and len(argv) == 4
    sample = Path(argv[3])
    assert (e2e.cwd / sample).is_file()
    r = e2e.after["printed"]
    assert r.code == 0, r.err
    first = r.out.splitlines()[0]
    assert first.startswith(f"{sample}: ")
    label = first.split(": ", 1)[1].split(" ")[0]
    assert label in e2e.summary["data"]["classes"]
    assert label == sample.stem.rsplit("_", 1)[-1]  # the sample's true class; the model is ~99% right


def test_run_folder_contents(e2e: E2E) -> None:
    run = e2e.cwd / e2e.run_dir
    for name in ("best.safetensors", "best.json", "last.safetensors", "last.json"):
        assert (run / "checkpoints" / name).stat().st_size > 0
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert sorted(p.suffix for p in (run / "samples").iterdir()) == [".png"] * 4
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    blob = (run / "checkpoints" / "best.safetensors").read_bytes()
    assert best["weights"]["sha256"] == hashlib.sha256(blob).hexdigest()
    assert best["classes"] == ["circle", "square", "triangle", "cross"]
    assert best["model"]["name"] == "small_cnn"
    assert not list(run.rglob("*.tmp"))  # atomic writes leave no temp files


def test_metrics_jsonl_has_step_and_epoch_records(e2e: E2E) -> None:
    lines = (e2e.cwd / e2e.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # one JSON object per line
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(steps) + len(epochs) == len(records)
    total = EPOCHS * STEPS_PER_EPOCH
    assert [r["step"] for r in steps] == list(range(LOG_EVERY, total + 1, LOG_EVERY))
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert [r["step"] for r in epochs] == [STEPS_PER_EPOCH * e for e in (1, 2, 3)]
    for r in steps:
        assert r["train/loss"] > 0 and r["lr"] > 0
        assert (r["step"] - 1) // STEPS_PER_EPOCH + 1 == r["epoch"]
    s = e2e.summary
    assert epochs[-1]["val/accuracy"] == s["final"]["accuracy"]
    assert epochs[-1]["val/loss"] == s["final"]["loss"]
    assert epochs[-1]["train/accuracy"] == s["train"]["accuracy"]
    assert max(r["val/accuracy"] for r in epochs) == s["best"]["accuracy"]


def test_summary_json(e2e: E2E) -> None:
    s = e2e.summary
    assert s["epochs_completed"] == EPOCHS
    assert s["steps"] == EPOCHS * STEPS_PER_EPOCH
    assert s["device"] == "cpu"
    assert s["wall_time_s"] > 0
    assert s["stopped_early"] is False
    for part in ("final", "best", "test"):
        assert set(s[part]) >= {"accuracy", "loss", "top5"}, part
        assert 0 <= s[part]["accuracy"] <= 1 and s[part]["loss"] > 0 and s[part]["top5"] == 1.0
    assert 1 <= s["best"]["epoch"] <= EPOCHS and s["best"]["split"] == "val"
    assert s["best"]["accuracy"] >= 0.9  # the shapes are learnable: this is a real training run
    assert s["data"]["counts"] == {"train": 400, "val": 100, "test": 100}
    assert s["model"] == {"name": "small_cnn", "parameters": s["model"]["parameters"]}
    assert s["model"]["parameters"] > 1000
    assert {"python", "torch", "visiontrain", "numpy"} <= set(s["versions"])


def test_config_yaml_is_fully_resolved_and_reproduces_the_run(e2e: E2E) -> None:
    saved = yaml.safe_load((e2e.cwd / e2e.run_dir / "config.yaml").read_text())
    defaults = RunConfig().to_dict()
    assert saved.keys() == defaults.keys()
    for section in ("data", "model", "optim", "train"):
        assert saved[section].keys() == defaults[section].keys(), section
    assert saved["train"]["epochs"] == EPOCHS and saved["data"]["batch_size"] == BATCH
    assert saved["data"]["args"] == {"train": 400, "val": 100, "test": 100}
    assert saved["train"]["log_every"] == LOG_EVERY and saved["name"] == "e2e"

    r = e2e.after["again"]  # train --config runs/e2e/config.yaml --name again
    assert r.code == 0, r.err
    again = json.loads((e2e.cwd / "runs/again/summary.json").read_text())
    first = e2e.summary
    # Seeded CPU runs are deterministic: the same numbers, and bit-identical weights.
    for part in ("final", "best", "test", "train"):
        keep = {k: v for k, v in first[part].items() if not is_timing(k)}
        assert {k: again[part][k] for k in keep} == keep, part
    # the tensors are bit-identical (the files differ only in their headers: run name, creation time)
    tensors = [safetensors.torch.load_file(e2e.cwd / f"runs/{n}/checkpoints/best.safetensors")
               for n in ("e2e", "again")]
    assert tensors[0].keys() == tensors[1].keys()
    for key, value in tensors[0].items():
        assert value.dtype == tensors[1][key].dtype and torch.equal(value, tensors[1][key]), key


def test_evaluate_json_equals_summary_and_hand_count(e2e: E2E) -> None:
    r = e2e.after["evaluate"]
    assert r.code == 0, r.err
    result = json.loads(r.out)
    test = e2e.summary["test"]
    assert (result["accuracy"], result["loss"], result["top5"]) == (test["accuracy"], test["loss"], test["top5"])
    confusion = result["confusion"]
    total = sum(map(sum, confusion))
    assert total == result["count"] == 100
    assert result["accuracy"] == sum(confusion[i][i] for i in range(4)) / total
    assert [sum(row) for row in confusion] == [25, 25, 25, 25]  # make_shapes balances the classes
    assert result["per_class_accuracy"] == [confusion[i][i] / 25 for i in range(4)]
    assert result["split"] == "test" and result["classes"] == e2e.summary["data"]["classes"]


def test_predict_json_schema_and_top_k(e2e: E2E) -> None:
    samples = e2e.run_dir / "samples"
    r = e2e.after["predict"]  # predict runs/e2e runs/e2e/samples --top-k 2 --json
    assert r.code == 0, r.err
    results = json.loads(r.out)
    assert len(results) == 4
    classes = e2e.summary["data"]["classes"]
    for item in results:
        assert set(item) == {"path", "predictions"}
        assert Path(item["path"]).parent == samples
        preds = item["predictions"]
        assert len(preds) == 2
        for p in preds:
            assert set(p) == {"label", "index", "probability"}
            assert classes[p["index"]] == p["label"]
            assert 0 <= p["probability"] <= 1
        probs = [p["probability"] for p in preds]
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) <= 1 + 1e-5
        assert preds[0]["label"] == Path(item["path"]).stem.rsplit("_", 1)[-1]


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_before_or_after_the_command(where: str, tmp_path: Path, main_cli) -> None:
    train = ["train", "--data", "synthetic", "--model", "small_cn", "--out", tmp_path / "runs"]
    r = main_cli(*(["--debug", *train] if where == "before" else [*train, "--debug"]))
    assert r.code == 2
    assert "Traceback (most recent call last)" in r.err and "ModelError" in r.err
    assert r.err.rstrip().splitlines()[-1].startswith("visiontrain: error: unknown model 'small_cn'")


def test_a_real_process_errs_in_one_line(tmp_path: Path, commands, one_line_error) -> None:
    vt = [sys.executable, "-m", "visiontrain"]
    r = commands({
        "plain": [*vt, "train", "--data", "synthetic", "--model", "small_cn", "--out", tmp_path / "runs"],
        "debug": [*vt, "--debug", "train", "--data", "synthetic", "--model", "small_cn", "--out", tmp_path / "runs"],
        "help": [*vt, "--help"],
    }, cwd=tmp_path)
    one_line_error(r["plain"], "unknown model 'small_cn'", "did you mean small_cnn")
    assert r["plain"].out == ""
    debug = r["debug"]
    assert debug.code == 2
    assert "Traceback (most recent call last)" in debug.err and "ModelError" in debug.err
    assert debug.err.rstrip().splitlines()[-1].startswith("visiontrain: error: unknown model 'small_cn'")
    assert not (tmp_path / "runs").exists()  # nothing was created for a run that could not start
    assert r["help"].code == 0
    for command in ("train", "evaluate", "predict", "models", "datasets"):
        assert command in r["help"].out


TRAIN_FLAGS = ["--data", "--data-dir", "--model", "--epochs", "--batch-size", "--lr", "--optimizer", "--device",
               "--seed", "--out", "--name", "--workers", "--config"]


def test_help_documents_every_flag(main_cli) -> None:
    r = main_cli("train", "--help")
    assert r.code == 0
    for flag in TRAIN_FLAGS:
        assert f"{flag} " in r.out, flag
    assert "--set" in r.out and "KEY=VALUE" in r.out
    no_args = main_cli()
    assert no_args.code == 0 and "COMMAND" in no_args.out


def test_models_lists_every_builtin_with_parameter_counts(main_cli) -> None:
    import visiontrain

    r = main_cli("models", "--json")
    assert r.code == 0
    rows = json.loads(r.out)
    assert [row["name"] for row in rows] == visiontrain.list_models()
    for row in rows:
        assert int(row["parameters"].replace(",", "")) > 0
        assert row["description"]
    table = main_cli("models")
    assert table.code == 0
    assert table.out.splitlines()[0].split()[:2] == ["NAME", "PARAMETERS"]
    for row in rows:
        assert any(line.split()[:2] == [row["name"], row["parameters"]] for line in table.out.splitlines())


def test_datasets_lists_the_registered_datasets(main_cli) -> None:
    import visiontrain

    r = main_cli("datasets", "--json")
    assert r.code == 0
    names = [row["name"] for row in json.loads(r.out)]
    assert names == [*visiontrain.list_datasets(), "PATH"]
    assert {"mnist", "synthetic"} <= set(names)
    assert "synthetic" in main_cli("datasets").out
