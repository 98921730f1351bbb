"""The evaluation report: numbers checked against a hand computation, files written, the CLI's --report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from visiontrain.use.report import classification_metrics, reliability_bins, write_report

CLASSES = ["a", "b", "c"]
# Seven images; no confidence sits on a bin edge (multiples of 1/15), so the binning is unambiguous.
PROBS = torch.tensor([
    [0.72, 0.18, 0.10],  # a → a, right, 0.72
    [0.28, 0.62, 0.10],  # a → b, wrong, 0.62
    [0.10, 0.82, 0.08],  # b → b, right, 0.82
    [0.04, 0.92, 0.04],  # b → b, right, 0.92
    [0.52, 0.10, 0.38],  # c → a, wrong, 0.52
    [0.20, 0.08, 0.72],  # c → c, right, 0.72
    [0.10, 0.13, 0.77],  # c → c, right, 0.77
])
TARGETS = torch.tensor([0, 0, 1, 1, 2, 2, 2])


def test_metrics_match_a_hand_computation() -> None:
    m = classification_metrics(PROBS, TARGETS, CLASSES)
    # confusion (rows true): a [1 1 0], b [0 2 0], c [1 0 2]
    by_class = {r["class"]: r for r in m["per_class"]}
    expected = {"a": (1 / 2, 1 / 2, 1 / 2, 2), "b": (2 / 3, 1.0, 0.8, 2), "c": (1.0, 2 / 3, 0.8, 3)}
    for name, (precision, recall, f1, support) in expected.items():
        r = by_class[name]
        assert (r["precision"], r["recall"], r["f1"]) == pytest.approx((precision, recall, f1), abs=1e-6)
        assert r["support"] == support
    assert m["count"] == 7
    assert m["accuracy"] == pytest.approx(5 / 7, abs=1e-6)
    assert m["top5"] == 1.0  # three classes: every true class is in the top 3
    assert m["macro"] == pytest.approx({"precision": (0.5 + 2 / 3 + 1) / 3, "recall": (0.5 + 1 + 2 / 3) / 3,
                                        "f1": (0.5 + 0.8 + 0.8) / 3}, abs=1e-6)
    # weighted by support (2, 2, 3): recall equals accuracy, as it must
    assert m["weighted"] == pytest.approx({"precision": (2 * 0.5 + 2 * 2 / 3 + 3 * 1) / 7, "recall": 5 / 7,
                                           "f1": (2 * 0.5 + 2 * 0.8 + 3 * 0.8) / 7}, abs=1e-6)
    # ECE: sum over bins of |accuracy - confidence| weighted by the bin's share of images
    gaps = [1 - 0.72, 0.62, 1 - 0.82, 1 - 0.92, 0.52, 1 - 0.72, 1 - 0.77]
    cal = m["calibration"]
    assert cal["ece"] == pytest.approx(sum(gaps) / 7, abs=1e-6)
    assert cal["mean_confidence"] == pytest.approx((0.72 + 0.62 + 0.82 + 0.92 + 0.52 + 0.72 + 0.77) / 7, abs=1e-6)
    filled = {round(b["lower"] * 15): (b["count"], b["accuracy"], b["confidence"]) for b in cal["bins"] if b["count"]}
    assert filled == {7: (1, 0.0, pytest.approx(0.52)), 9: (1, 0.0, pytest.approx(0.62)),
                      10: (2, 1.0, pytest.approx(0.72)), 11: (1, 1.0, pytest.approx(0.77)),
                      12: (1, 1.0, pytest.approx(0.82)), 13: (1, 1.0, pytest.approx(0.92))}
    from_bins = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in cal["bins"] if b["count"]) / 7
    assert from_bins == pytest.approx(cal["ece"], abs=1e-6)  # the diagram shows what the number says


def test_a_class_never_seen_nor_predicted_leaves_the_macro_average() -> None:
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]])
    m = classification_metrics(probs, torch.tensor([0, 1]), CLASSES)
    assert m["per_class"][2]["support"] == 0
    assert m["macro"]["f1"] == pytest.approx(1.0)  # the mean over a and b, not (1 + 1 + 0) / 3


def test_confidence_one_lands_in_the_top_bin() -> None:
    bins = reliability_bins(torch.tensor([1.0, 0.0]), torch.tensor([True, False]), 10)
    assert bins[-1]["count"] == 1 and bins[0]["count"] == 1


def test_write_report_files(tmp_path: Path) -> None:
    confusion = [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    result = {"checkpoint": "ck.json", "data": "toy", "split": "test", "tta": "none", "loss": 0.5,
              "classes": CLASSES, "confusion": confusion, "probabilities": PROBS, "targets": TARGETS,
              "mistakes": {"images": images, "true": [0, 2], "pred": [1, 0], "confidence": [0.62, 0.52]}}
    report = write_report(result, tmp_path / "rep")
    folder = tmp_path / "rep"
    for name in ("confusion.png", "confusion_counts.png", "reliability.png", "mistakes.png"):
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and image.width > 100
    saved = json.loads((folder / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["confusion"] == confusion and saved["mistakes"][0] == {"true": "a", "pred": "b", "confidence": 0.62}
    text = (folder / "report.md").read_text()
    assert "| top-1 accuracy | 71.43% |" in text
    assert "| c | 100.00% | 66.67% | 80.00% | 3 |" in text
    assert "![reliability diagram](reliability.png)" in text and "| a | b | 62.00% |" in text


def test_evaluate_report_cli_on_a_trained_run(tmp_path: Path, synthetic_run, main_cli) -> None:
    out = tmp_path / "report"
    r = main_cli("evaluate", synthetic_run.dir, "--report", out, "--tta", "flip", "--json")
    assert r.code == 0, r.err
    printed = json.loads(r.out)
    saved = json.loads((out / "report.json").read_text())
    assert printed == saved and saved["tta"] == "flip"
    confusion = torch.tensor(saved["confusion"], dtype=torch.float64)
    assert int(confusion.sum()) == saved["count"] == sum(c["support"] for c in saved["per_class"])
    # every per-class figure follows from the confusion matrix the report itself shows
    for i, row in enumerate(saved["per_class"]):
        tp = confusion[i, i].item()
        predicted, actual = confusion[:, i].sum().item(), confusion[i].sum().item()
        assert row["precision"] == pytest.approx(tp / predicted if predicted else 0.0, abs=1e-5)
        assert row["recall"] == pytest.approx(tp / actual, abs=1e-5)
    assert saved["accuracy"] == pytest.approx(confusion.diag().sum().item() / saved["count"], abs=1e-5)
    assert 0 <= saved["calibration"]["ece"] <= 1
    assert {"confusion.png", "confusion_counts.png", "reliability.png", "report.md"} <= {
        p.name for p in out.iterdir()}
    text = main_cli("evaluate", synthetic_run.dir, "--report", tmp_path / "again")
    assert text.code == 0 and "macro    precision" in text.out and "report.md" in text.out


@pytest.mark.parametrize("given", ["run", "checkpoints/best.json"])
def test_a_bare_report_goes_into_the_run_folder(given: str, tmp_path: Path, synthetic_run, main_cli) -> None:
    run = Path(shutil.copytree(synthetic_run.dir, tmp_path / "run"))
    r = main_cli("evaluate", run if given == "run" else run / given, "--split", "val", "--report")
    assert r.code == 0, r.err
    assert f"report: {run / 'report' / 'report.md'}" in r.out
    assert json.loads((run / "report" / "report.json").read_text())["split"] == "val"


def test_unknown_tta_is_a_one_line_error(synthetic_run, main_cli, one_line_error) -> None:
    one_line_error(main_cli("evaluate", synthetic_run.dir, "--tta", "rotate"), "rotate", "five-crop")
