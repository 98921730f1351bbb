"""Multi-label end to end: the metrics against a hand computation, the tuned thresholds, the losses (BCE with
``pos_weight: auto``, the asymmetric loss), MixUp/CutMix of label vectors, the thresholds a checkpoint saves
deciding predict's labels, the ONNX export giving PyTorch's labels, exact resume, two processes (slow) and a
learnable synthetic set reaching mAP >= 0.95 (slow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

import visiontrain
from visiontrain.config import TrainConfig
from visiontrain.engine.losses import AsymmetricLoss, build_loss, label_weights, pos_weights
from visiontrain.engine.metrics import multilabel_scores, tune_thresholds
from visiontrain.engine.resume import read_resume
from visiontrain.engine.setup import mix_multilabel
from visiontrain.errors import ConfigError
from visiontrain.use.export.runtime import load_model

# Four images, three labels; label 2 is on no image (its AP is undefined: left out of the macro mean).
SCORES = torch.tensor([[0.9, 0.3, 0.1], [0.8, 0.6, 0.2], [0.4, 0.7, 0.3], [0.2, 0.1, 0.6]])
TARGETS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


def test_metrics_equal_a_hand_computation() -> None:
    r = multilabel_scores(SCORES, TARGETS, thresholds=[0.5, 0.65, 0.5])
    # AP of label 0: ranked 0.9 (hit), 0.8 (miss), 0.4 (hit) → (1/1 + 2/3) / 2; label 1: 0.7, 0.6 both hits → 1
    assert r["ap_per_label"][0] == pytest.approx(5 / 6, abs=1e-4) and r["ap_per_label"][1] == 1.0
    assert r["ap_per_label"][2] != r["ap_per_label"][2]  # NaN: no image has label 2
    assert r["map"] == pytest.approx((5 / 6 + 1) / 2, abs=1e-6)
    # micro AP over the 12 pairs, ranked .9+ .8 .7+ (.6+ .6) .4+ …: precision 1, 2/3, 3/5, 4/6 at recall ¼ … 1
    ap = (1 + 2 / 3 + 3 / 5 + 4 / 6) / 4
    assert r["map_micro"] == pytest.approx(ap, abs=1e-6)
    # Decided at (0.5, 0.65, 0.5): [1,0,0] [1,0,0] [0,1,0] [0,0,1] against the targets
    tp, fp, fn = 2, 2, 2  # label 0: images 1 (tp), 2 (fp), 3 missed; label 1: image 3 tp, image 2 missed; 2: fp
    assert r["precision"] == pytest.approx(tp / (tp + fp)) and r["recall"] == pytest.approx(tp / (tp + fn))
    assert r["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert r["exact_match"] == pytest.approx(1 / 4)  # only image 1 is right on every label
    assert r["hamming_loss"] == pytest.approx(4 / 12)
    assert r["support"] == [2, 2, 0] and r["thresholds"] == [0.5, 0.65, 0.5]


def test_thresholds_are_tuned_for_the_best_f1() -> None:
    # label 0: keep .9 .8 .4 (F1 0.8), halfway to .2; label 1: keep .7 .6, halfway to .3; label 2: no positive
    assert tune_thresholds(SCORES, TARGETS) == [0.3, 0.45, 0.5]
    assert tune_thresholds(SCORES, TARGETS, "fixed") == [0.5] * 3
    (one,) = set(tune_thresholds(SCORES, TARGETS, "global"))
    flat = multilabel_scores(SCORES, TARGETS, [one] * 3)
    assert all(flat["f1"] >= multilabel_scores(SCORES, TARGETS, [t] * 3)["f1"] for t in (0.15, 0.35, 0.5, 0.65))


def test_bce_is_multilabel_and_pos_weight_auto_counts_negatives_over_positives() -> None:
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    weight = pos_weights(TrainConfig(pos_weight="auto"), labels, 2)
    assert weight.tolist() == pytest.approx([1.0, 3.0])  # clamped to at least 1: a common label is not weakened
    assert isinstance(build_loss(TrainConfig(), "multilabel", None), nn.BCEWithLogitsLoss)
    with pytest.raises(ConfigError, match="loss 'bce' is for multilabel but the data is a classification"):
        build_loss(TrainConfig(loss="bce"), "classification", None)
    with pytest.raises(ConfigError, match="pos_weight is for multi-label data"):
        label_weights(TrainConfig(pos_weight="auto"), "classification", torch.tensor([0, 1]), 2)
    with pytest.raises(ConfigError, match="a multi-label run weighs each label's positives with --pos-weight"):
        label_weights(TrainConfig(class_weights="auto"), "multilabel", labels, 2)


def test_asymmetric_loss_without_focusing_or_clipping_is_bce() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.3], [-0.5, 1.5, -2.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    plain = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0)(logits, targets)
    torch.testing.assert_close(plain, nn.functional.binary_cross_entropy_with_logits(logits, targets))
    assert float(AsymmetricLoss()(logits, targets)) < float(plain)  # easy negatives weigh less


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, 0.0), (0.0, 1.0)])
def test_mixup_and_cutmix_mix_label_vectors_with_the_pixels_weight(mixup: float, cutmix: float) -> None:
    torch.manual_seed(0)
    images = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    mixed, targets = mix_multilabel(images, labels, mixup, cutmix)
    kept = 1 - float(mixed[0].mean())  # image 0 is zeros: the share of it still zero is the weight it keeps
    torch.testing.assert_close(targets[0], labels[0] * kept + labels[1] * (1 - kept))
    assert 0 < kept < 1


def _config(out: Path, name: str) -> dict[str, Any]:
    return {"data": {"name": "synthetic_multilabel", "args": {"train": 96, "val": 32, "test": 32, "size": 16}},
            "epochs": 2, "batch_size": 16, "lr": 0.01, "mixup_alpha": 0.4, "cutmix_alpha": 1.0, "ema_decay": 0.9,
            "accumulate": 2, "pos_weight": "auto", "plots": False, "deterministic": True, "device": "cpu",
            "out": str(out), "name": name}


def test_a_stopped_multilabel_run_resumes_bit_identical(tmp_path: Path, stop_at) -> None:
    """MixUp/CutMix of label vectors, EMA, accumulation and pos_weight: stopped mid-epoch, resumed, equal."""
    whole = visiontrain.train(_config(tmp_path, "whole"), quiet=True)
    stopped = visiontrain.train(_config(tmp_path, "stopped"), callbacks=[stop_at(5)], quiet=True)
    assert stopped.summary["steps"] == 5 and whole.summary["steps"] == 6  # 6 batches, 3 steps per epoch
    point, _ = read_resume(stopped.dir / "checkpoints" / "resume.safetensors")
    assert len(point["thresholds"]) == 6  # epoch 1's, tuned on val: the resumed run's checkpoints carry them on
    resumed = visiontrain.train(resume=stopped.dir, quiet=True)
    assert resumed.summary["final"] == whole.summary["final"] and "map" in whole.summary["final"]
    for which in ("last", "best"):
        a = safetensors.torch.load_file(whole.dir / "checkpoints" / f"{which}.safetensors")
        b = safetensors.torch.load_file(resumed.dir / "checkpoints" / f"{which}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), which
    meta = [json.loads((r.dir / "checkpoints" / "best.json").read_text()) for r in (whole, resumed)]
    assert meta[0]["thresholds"] == meta[1]["thresholds"] and len(meta[0]["thresholds"]) == 6


def test_the_run_monitors_map_and_saves_thresholds_tuned_on_val(multilabel_run: visiontrain.Run) -> None:
    best = multilabel_run.summary["best"]
    assert best["monitor"] == "val/map" and {"map", "map_micro", "f1", "exact_match", "hamming_loss"} <= set(best)
    meta = json.loads((multilabel_run.dir / "checkpoints" / "best.json").read_text())
    val = visiontrain.evaluate(multilabel_run.dir, split="val", outputs=True)
    assert meta["task"] == "multilabel" and meta["thresholds"] == tune_thresholds(val["probabilities"],
                                                                                   val["targets"])
    assert val["thresholds"] == meta["thresholds"] and val["map"] == pytest.approx(best["map"], abs=1e-6)


def _copy_with_thresholds(run: visiontrain.Run, folder: Path, thresholds: list[float]) -> Path:
    folder.mkdir()
    shutil.copy(run.dir / "checkpoints" / "best.safetensors", folder / "best.safetensors")
    meta = json.loads((run.dir / "checkpoints" / "best.json").read_text())
    (folder / "best.json").write_text(json.dumps({**meta, "thresholds": thresholds}))
    return folder / "best.json"


def test_the_saved_thresholds_decide_which_labels_predict_lists(multilabel_run: visiontrain.Run,
                                                                 tmp_path: Path) -> None:
    images = sorted((multilabel_run.dir / "samples").iterdir())
    saved = visiontrain.predict(multilabel_run.dir, images)
    meta = json.loads((multilabel_run.dir / "checkpoints" / "best.json").read_text())
    for answer in saved:
        assert all(p["probability"] >= p["threshold"] == meta["thresholds"][p["index"]] for p in answer["predictions"])
    everything = visiontrain.predict(_copy_with_thresholds(multilabel_run, tmp_path / "low", [0.0] * 6), images)
    assert all(len(a["predictions"]) == 6 for a in everything)
    nothing = visiontrain.predict(_copy_with_thresholds(multilabel_run, tmp_path / "high", [1.0] * 6), images)
    assert all(a["predictions"] == [] for a in nothing)
    # the probabilities are the model's whatever the thresholds: only the list over them changed
    scores = {p["label"]: p["probability"] for p in everything[0]["predictions"]}
    assert all(scores[p["label"]] == p["probability"] for p in saved[0]["predictions"])


def test_the_onnx_export_carries_the_thresholds_and_gives_the_same_labels(multilabel_run: visiontrain.Run,
                                                                          tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = visiontrain.export(multilabel_run.dir, "onnx", tmp_path / "model.onnx").path
    meta = json.loads((multilabel_run.dir / "checkpoints" / "best.json").read_text())
    loaded = load_model(out)
    assert loaded.meta["thresholds"] == meta["thresholds"] and loaded.meta["task"] == "multilabel"
    images = sorted((multilabel_run.dir / "samples").iterdir())
    torch_labels = [[p["label"] for p in a["predictions"]] for a in visiontrain.predict(multilabel_run.dir, images)]
    onnx_answers = visiontrain.predict(out, images)
    assert [[p["label"] for p in a["predictions"]] for a in onnx_answers] == torch_labels
    assert any(torch_labels)


def test_serve_model_info_names_the_thresholds(multilabel_run: visiontrain.Run) -> None:
    pytest.importorskip("fastapi")
    from visiontrain.use.serve import build_app, running_server
    from visiontrain.use.serve.client import call

    with running_server(build_app(multilabel_run.dir)) as url:
        status, info, _ = call(url, "GET", "/model")
    assert status == 200 and info["task"] == "multilabel"
    assert info["thresholds"] == json.loads((multilabel_run.dir / "checkpoints" / "best.json").read_text())[
        "thresholds"]


@pytest.mark.slow
def test_a_small_cnn_learns_the_synthetic_multilabel_set_to_map_095(tmp_path: Path) -> None:
    """The closing note's number: `visiontrain train --data synthetic_multilabel --epochs 3 --lr 0.01
    --batch-size 32 --set data.args.train=1000 --set data.args.val=200` then `visiontrain evaluate RUN`."""
    run = visiontrain.train({"data": {"name": "synthetic_multilabel", "args": {"train": 1000, "val": 200,
                                                                                "test": 400}},
                             "epochs": 3, "lr": 0.01, "batch_size": 32, "plots": False, "out": str(tmp_path),
                             "name": "learn"}, quiet=True)
    assert run.summary["test"]["map"] >= 0.95, run.summary["test"]
    assert visiontrain.evaluate(run.dir)["map"] == pytest.approx(run.summary["test"]["map"], abs=1e-6)


@pytest.mark.slow
def test_two_processes_give_the_exact_global_multilabel_figures(tmp_path: Path) -> None:
    """torchrun, gloo: every process scores its shard of val; the gathered scores give one process's mAP.
    lenet5 (as tests/engine/test_distributed.py): it has no BatchNorm, whose running statistics each process
    keeps from its own shard of the last training batch unless --sync-bn."""
    args = ["-m", "visiontrain", "train", "--model", "lenet5", "--data", "synthetic_multilabel",
            "--set", "data.args.train=128",
            "--set", "data.args.val=50", "--set", "data.args.test=20", "--epochs", "1", "--batch-size", "32",
            "--plots", "off", "--quiet", "--out", str(tmp_path)]
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
           "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          *args, "--name", "two"], capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    run = tmp_path / "two"
    summary = json.loads((run / "summary.json").read_text())
    again = visiontrain.evaluate(run, split="val")  # one process, the same best checkpoint, the whole split
    assert again["count"] == 50
    assert summary["best"]["map"] == pytest.approx(again["map"], abs=1e-6)
    meta = json.loads((run / "checkpoints" / "best.json").read_text())
    val = visiontrain.evaluate(run, split="val", outputs=True)
    assert meta["thresholds"] == tune_thresholds(val["probabilities"], val["targets"])


def test_the_asymmetric_loss_trains_from_the_cli(tmp_path: Path, main_cli) -> None:
    result = main_cli("train", "--data", "synthetic_multilabel", "--data-arg", "train=64", "--data-arg", "val=16",
                      "--data-arg", "test=16", "--data-arg", "size=16", "--epochs", "1", "--loss", "asl",
                      "--pos-weight", "auto", "--plots", "off", "--quiet", "--out", tmp_path, "--name", "asl")
    assert result.code == 0, result.err
    summary = json.loads((tmp_path / "asl" / "summary.json").read_text())
    assert summary["best"]["monitor"] == "val/map" and summary["test"]["map"] > 0
    assert json.loads((tmp_path / "asl" / "checkpoints" / "best.json").read_text())["config"]["train"]["loss"] == "asl"


def test_test_time_augmentation_is_refused_for_a_multilabel_model(multilabel_run: visiontrain.Run, main_cli,
                                                                   one_line_error) -> None:
    """TTA averages softmax probabilities: it would silently give a multi-label model one-class scores."""
    image = sorted((multilabel_run.dir / "samples").iterdir())[0]
    for args in (["predict", multilabel_run.dir, image], ["evaluate", multilabel_run.dir, "--split", "val"]):
        one_line_error(main_cli(*args, "--tta", "flip"), "a multi-label model predicts without it")


def test_training_draws_the_pr_curves_and_the_map_curve(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = {**_config(tmp_path, "pictures"), "plots": True, "epochs": 1, "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
              "ema_decay": None, "accumulate": 1}
    run = visiontrain.train(config, quiet=True)
    assert {"pr_curves.png", "map.png", "loss.png"} <= {p.name for p in (run.dir / "plots").iterdir()}
    events = EventAccumulator(str(run.dir), size_guidance={"images": 0})
    events.Reload()
    assert "val/pr_curves" in events.Tags()["images"] and "val/map" in events.Tags()["scalars"]
