"""``visiontrain evaluate RUN --report DIR``: the metrics and pictures a person reads before trusting a model.

From every image's probabilities and true class: top-1/top-5, per-class precision/recall/F1 with support,
their macro and support-weighted averages (torchmetrics), the confusion matrix as counts and row-normalized,
the expected calibration error with a reliability diagram, and the most confident mistakes as an image grid.
Written as ``report.md`` (for people) and ``report.json`` (for programs) beside the PNG files, together
(:func:`~visiontrain.fileio.replace_together`): ``report.json`` is the mark of a whole report — deleted first,
renamed in last — so a folder with a ``report.json`` holds one report's files, never a mix of two; a folder
without one is a report a killed process did not finish (the next run rewrites it and deletes its temps).

>>> import visiontrain
>>> r = visiontrain.evaluate("runs/demo", outputs=True, mistakes=16)
>>> report = write_report(r, "report/")
>>> report["macro"]["f1"] > 0.9, Path("report/report.md").is_file(), Path("report/reliability.png").is_file()
(True, True, True)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from visiontrain.fileio import remove_dead_temps, replace_together
from visiontrain.use.explain import overlay

N_BINS = 15  # calibration bins over [0, 1], the usual choice (Guo et al. 2017)
REGRESSION_FILES = {"predictions": "predictions.png", "markdown": "report.md", "json": "report.json"}
MULTILABEL_FILES = {"pr_curves": "pr_curves.png", "cooccurrence": "cooccurrence.png", "markdown": "report.md",
                    "json": "report.json"}
FILES = {"confusion": "confusion.png", "confusion_counts": "confusion_counts.png",
         "reliability": "reliability.png", "mistakes": "mistakes.png", "mistakes_gradcam": "mistakes_gradcam.png",
         "markdown": "report.md", "json": "report.json"}


def classification_metrics(probabilities: torch.Tensor, targets: torch.Tensor, classes: Sequence[str],
                           n_bins: int = N_BINS) -> dict[str, Any]:
    """Metrics of probabilities [N, K] against true indices [N] (torchmetrics does the counting).

    ``macro`` is the plain mean over classes that occur in the targets or the predictions; ``weighted``
    weighs each class by its support (its number of true images).
    """
    import torchmetrics.functional.classification as tm  # deferred: importing it takes a moment
    k = len(classes)
    probs, target = probabilities.double(), targets.long()
    per = {name: [_f(v) for v in fn(probs, target, k, average=None).tolist()] for name, fn in (
        ("precision", tm.multiclass_precision), ("recall", tm.multiclass_recall), ("f1", tm.multiclass_f1_score))}
    support = torch.bincount(target, minlength=k).tolist()
    averages = {avg: {name: _f(fn(probs, target, k, average=avg)) for name, fn in (
        ("precision", tm.multiclass_precision), ("recall", tm.multiclass_recall),
        ("f1", tm.multiclass_f1_score))} for avg in ("macro", "weighted")}
    confidence, predicted = probs.max(dim=1)
    return {
        "count": len(target),
        "accuracy": _f(tm.multiclass_accuracy(probs, target, k, average="micro")),
        "top5": _f(tm.multiclass_accuracy(probs, target, k, average="micro", top_k=min(5, k))),
        **averages,
        "per_class": [{"class": c, "precision": per["precision"][i], "recall": per["recall"][i],
                       "f1": per["f1"][i], "support": support[i]} for i, c in enumerate(classes)],
        "calibration": {
            "ece": _f(tm.multiclass_calibration_error(probs, target, k, n_bins=n_bins, norm="l1")),
            "n_bins": n_bins,
            "mean_confidence": _f(confidence.mean()),
            "bins": reliability_bins(confidence, predicted == target, n_bins),
        },
    }


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = N_BINS) -> list[dict[str, Any]]:
    """Per equal-width confidence bin [lower, upper): count, mean confidence, accuracy (the top bin is closed)."""
    index = (confidence.double() * n_bins).floor().long().clamp(0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        member = index == b
        count = int(member.sum())
        bins.append({"lower": b / n_bins, "upper": (b + 1) / n_bins, "count": count,
                     "confidence": _f(confidence[member].double().mean()) if count else None,
                     "accuracy": _f(correct[member].double().mean()) if count else None})
    return bins


def write_report(result: dict[str, Any], folder: str | Path, mistakes_shown: int = 32) -> dict[str, Any]:
    """Write the report of an ``evaluate(..., outputs=True, mistakes=k)`` result into ``folder``.

    Returns the JSON report (also written as ``report.json``; ``report.md`` shows the same numbers). A regression
    result gets its errors (MSE, MAE, RMSE, R², the largest error) and a predicted-against-true picture; a
    multi-label result its mAP, a per-label table (AP, precision, recall, F1 at the threshold, support), the
    precision-recall curve of every label with its threshold marked, and a true-against-predicted label picture.
    """
    from visiontrain.watch import plots  # matplotlib: loaded when a picture is drawn

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(out)  # what a killed report left behind
    if result.get("task") == "regression":
        return _write_regression_report(result, out)
    if result.get("task") == "multilabel":
        return _write_multilabel_report(result, out)
    classes = list(result["classes"])
    metrics = classification_metrics(result["probabilities"], result["targets"], classes)
    report = {key: result.get(key) for key in ("checkpoint", "data", "split", "tta", "loss")}
    report.update(metrics)
    report["confusion"] = result["confusion"]
    source = _source(result)
    pictures = {
        "confusion": plots.png_bytes(plots.confusion_figure(result["confusion"], classes, normalize=True,
                                                            source=source)),
        "confusion_counts": plots.png_bytes(plots.confusion_figure(result["confusion"], classes, normalize=False,
                                                                   source=source)),
        "reliability": plots.png_bytes(reliability_figure(metrics["calibration"])),
    }
    report["mistakes"], grid = _mistakes(result.get("mistakes"), classes, mistakes_shown, source)
    if grid is not None:
        pictures["mistakes"] = grid
    explained = _mistakes_explained(result.get("mistakes"), report["mistakes"], source)
    if explained is not None:
        pictures["mistakes_gradcam"] = explained
    report["files"] = {k: v for k, v in FILES.items() if k in pictures or k in ("markdown", "json")}
    files = {out / FILES[k]: data for k, data in pictures.items()}
    files[out / FILES["markdown"]] = markdown(report).encode("utf-8")
    files[out / FILES["json"]] = (json.dumps(report, indent=2) + "\n").encode("utf-8")  # last: the mark
    # a stale grid from an earlier report would mislead: it goes with the old report.json
    replace_together(files, remove=[out / FILES[k] for k in ("mistakes", "mistakes_gradcam") if k not in pictures])
    return report


def _source(result: dict[str, Any]) -> str:
    """'test split · checkpoint demo/checkpoints/best': what the pictures show, in one line."""
    checkpoint = Path(str(result.get("checkpoint") or "?"))
    if checkpoint.suffix == ".json":  # a checkpoint's sidecar: the pair is known by its stem (best, last …)
        checkpoint = checkpoint.with_suffix("")
    source = f"{result.get('split')} split · checkpoint {'/'.join(checkpoint.parts[-3:])}"
    return source + (f" · TTA {result['tta']}" if result.get("tta") not in (None, "none") else "")


def regression_metrics(predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """Errors of predicted values [N] against true values [N]; R² is 1 - SSE / (sum of squares about the mean)."""
    pred, true = predictions.double().flatten(), targets.double().flatten()
    error = pred - true
    spread = float(((true - true.mean()) ** 2).sum())
    mse = float((error**2).mean())
    return {"count": len(true), "mse": _f(mse), "mae": _f(error.abs().mean()), "rmse": _f(mse**0.5),
            "r2": _f(1 - float((error**2).sum()) / spread) if spread > 0 else None,
            "max_abs_error": _f(error.abs().max()), "mean_error": _f(error.mean())}


def _write_regression_report(result: dict[str, Any], out: Path) -> dict[str, Any]:
    from visiontrain.watch import plots  # matplotlib: loaded when a picture is drawn

    report = {key: result.get(key) for key in ("checkpoint", "data", "split", "task")}
    report.update(regression_metrics(result["predictions"], result["targets"]))
    report["files"] = dict(REGRESSION_FILES)
    picture = plots.png_bytes(_scatter_figure(result["predictions"], result["targets"]))
    lines = [f"# Evaluation: {report.get('data')} [{report.get('split')}] (regression)", "",
             f"- checkpoint: `{report.get('checkpoint')}`", f"- images: {report['count']:,}", "",
             "| metric | value |", "| --- | --- |"]
    lines += [f"| {name} | {report[key]:.6g} |" for key, name in (
        ("mse", "mean squared error"), ("mae", "mean absolute error"), ("rmse", "root mean squared error"),
        ("max_abs_error", "largest absolute error"), ("mean_error", "mean error (bias)")) if report[key] is not None]
    if report["r2"] is not None:
        lines.append(f"| R² | {report['r2']:.4f} |")
    lines += ["", f"![predicted against true]({REGRESSION_FILES['predictions']})"]
    replace_together({out / REGRESSION_FILES["predictions"]: picture,
                      out / REGRESSION_FILES["markdown"]: ("\n".join(lines) + "\n").encode("utf-8"),
                      out / REGRESSION_FILES["json"]: (json.dumps(report, indent=2) + "\n").encode("utf-8")},
                     remove=[out / FILES[k] for k in ("confusion", "confusion_counts", "reliability", "mistakes")])
    return report


def _write_multilabel_report(result: dict[str, Any], out: Path) -> dict[str, Any]:
    from visiontrain.watch import plots  # matplotlib: loaded when a picture is drawn

    classes, scores, targets = list(result["classes"]), result["probabilities"], result["targets"]
    keys = ("checkpoint", "data", "split", "task", "count", "loss", "map", "map_micro", "precision", "recall", "f1",
            "f1_macro", "exact_match", "hamming_loss", "thresholds")
    report = {key: result.get(key) for key in keys}
    cut = torch.tensor(result["thresholds"])
    decided = scores >= cut
    # images with true label i (rows) in which label j was predicted (columns): the diagonal is each recall
    report["cooccurrence"] = (targets.T.double() @ decided.double()).round().long().tolist()
    report["per_label"] = [{"label": c, "ap": ap, "precision": p, "recall": r, "f1": f, "threshold": t, "support": n}
                           for c, ap, p, r, f, t, n in zip(classes, result["ap_per_label"],
                                                           result["precision_per_label"], result["recall_per_label"],
                                                           result["f1_per_label"], result["thresholds"],
                                                           result["support"], strict=True)]
    report["files"] = dict(MULTILABEL_FILES)
    source = _source(result)
    pictures = {
        "pr_curves": plots.png_bytes(plots.pr_curves_figure(scores, targets, classes, result["thresholds"],
                                                            source)),
        "cooccurrence": plots.png_bytes(plots.confusion_figure(
            report["cooccurrence"], classes, title="labels predicted for each true label", source=source,
            totals=result["support"])),
    }
    lines = [f"# Evaluation: {report.get('data')} [{report.get('split')}] (multi-label)", "",
             f"- checkpoint: `{report.get('checkpoint')}`", f"- images: {report['count']:,}",
             f"- mAP {report['map']:.4f} (macro), {report['map_micro']:.4f} (micro)",
             f"- at the thresholds: precision {report['precision']:.4f}, recall {report['recall']:.4f}, "
             f"F1 {report['f1']:.4f} (micro; macro F1 {report['f1_macro']:.4f}), exact match "
             f"{report['exact_match']:.4f}, Hamming loss {report['hamming_loss']:.4f}", "",
             "| label | AP | precision | recall | F1 | threshold | support |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {_md(row['label'])} | {row['ap']:.4f} | {row['precision']:.4f} | {row['recall']:.4f} | "
              f"{row['f1']:.4f} | {row['threshold']:.3f} | {row['support']} |" for row in report["per_label"]]
    lines += ["", f"![precision-recall curves]({MULTILABEL_FILES['pr_curves']})", "",
              f"![labels predicted for each true label]({MULTILABEL_FILES['cooccurrence']})"]
    files = {out / MULTILABEL_FILES[k]: data for k, data in pictures.items()}
    files[out / MULTILABEL_FILES["markdown"]] = ("\n".join(lines) + "\n").encode("utf-8")
    files[out / MULTILABEL_FILES["json"]] = (json.dumps(report, indent=2) + "\n").encode("utf-8")  # last: the mark
    replace_together(files, remove=[out / FILES[k] for k in ("confusion", "confusion_counts", "reliability",
                                                             "mistakes")] + [out / REGRESSION_FILES["predictions"]])
    return report


def _md(text: str) -> str:
    """A label in a Markdown table cell: its pipes would end the cell."""
    return str(text).replace("|", "\\|")


def _scatter_figure(predictions: torch.Tensor, targets: torch.Tensor):
    """Predicted against true values, with the diagonal of perfect predictions."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    true, pred = targets.double().flatten().tolist(), predictions.double().flatten().tolist()
    ax.scatter(true, pred, s=12, alpha=0.7)
    low, high = min(true + pred), max(true + pred)
    ax.plot([low, high], [low, high], "k--", linewidth=1, label="perfect prediction")
    ax.set_xlabel("true value")
    ax.set_ylabel("predicted value")
    ax.set_title("predicted against true")
    ax.legend(loc="upper left")
    return fig


def _mistakes(found: dict[str, Any] | None, classes: list[str], shown: int,
              source: str) -> tuple[list[dict[str, Any]], bytes | None]:
    from visiontrain.watch import plots  # matplotlib: loaded when a picture is drawn

    if not found or not found["true"]:
        return [], None
    images = found["images"][:shown]
    if images.dim() == 5:  # multi-crop eval transforms: show the first crop of each
        images = images[:, 0]
    rows = [{"true": classes[t], "pred": classes[p], "confidence": c}
            for t, p, c in zip(found["true"], found["pred"], found["confidence"], strict=True)][:shown]
    captions = [f"{r['true'][:9]} → {r['pred'][:9]} ({r['confidence']:.2f})" for r in rows]
    return rows, plots.png_bytes(plots.image_grid_figure(images, captions, title=f"most confident mistakes ({source})"))


def _mistakes_explained(found: dict[str, Any] | None, rows: list[dict[str, Any]], source: str) -> bytes | None:
    """The mistakes again, each with its Grad-CAM map for the (wrongly) predicted class over it."""
    if not found or "heat" not in found or not rows:
        return None
    from visiontrain.watch import plots  # matplotlib: loaded when a picture is drawn

    images = found["images"][:, 0] if found["images"].dim() == 5 else found["images"]
    shown = [overlay(image.cpu(), heat) for image, heat in zip(images[:len(rows)], found["heat"], strict=False)]
    captions = [f"{r['true'][:9]} → {r['pred'][:9]} ({r['confidence']:.2f})" for r in rows]
    return plots.png_bytes(plots.image_grid_figure(torch.stack(shown), captions,
                                                   title=f"why: Grad-CAM of the predicted class ({source})"))


def reliability_figure(calibration: dict[str, Any]):
    """Accuracy against confidence per bin, the diagonal being perfect calibration; bar width shows the bin.

    Each bin's mean confidence is a red tick joined to its accuracy bar by a red line (the gap): the bar alone
    is the accuracy, never shortened or lengthened by the gap drawn over it.
    """
    from matplotlib.figure import Figure  # drawn without pyplot: the caller's backend stays as it was
    from matplotlib.ticker import MaxNLocator

    bins = [b for b in calibration["bins"] if b["count"]]
    fig = Figure(figsize=(5.5, 6))
    ax, hist = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    width = 1 / calibration["n_bins"]
    centers = [b["lower"] + width / 2 for b in bins]
    ax.bar([b["lower"] for b in bins], [b["accuracy"] for b in bins], width=width, align="edge",
           edgecolor="black", color="tab:blue", alpha=0.8, label="accuracy (fraction correct)")
    ax.vlines(centers, [b["accuracy"] for b in bins], [b["confidence"] for b in bins], color="tab:red",
              linewidth=2, label="gap to confidence")
    ax.plot(centers, [b["confidence"] for b in bins], linestyle="none", marker="_", markersize=14,
            markeredgewidth=2.5, color="tab:red", label="mean confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"reliability diagram (ECE {100 * calibration['ece']:.2f}%)")
    ax.legend(loc="upper left", fontsize=8, framealpha=0.95)  # bins of a trained model lie to the right
    hist.bar([b["lower"] for b in bins], [b["count"] for b in bins], width=width, align="edge", color="gray")
    hist.yaxis.set_major_locator(MaxNLocator(integer=True))  # image counts: whole numbers
    hist.set_xlabel("confidence (top-1 probability)")
    hist.set_ylabel("images")
    fig.tight_layout()
    return fig


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: headline, averages, per-class table, calibration, pictures."""
    pct = _pct
    lines = [f"# Evaluation: {report.get('data')} [{report.get('split')}]", "",
             f"- checkpoint: `{report.get('checkpoint')}`", f"- images: {report['count']:,}",
             f"- test-time augmentation: {report.get('tta') or 'none'}", "",
             "| metric | value |", "| --- | --- |",
             f"| top-1 accuracy | {pct(report['accuracy'])} |", f"| top-5 accuracy | {pct(report['top5'])} |"]
    if report.get("loss") is not None:
        lines.append(f"| loss (cross-entropy) | {report['loss']:.4f} |")
    for avg in ("macro", "weighted"):
        m = report[avg]
        lines.append(f"| {avg} precision / recall / F1 | {pct(m['precision'])} / {pct(m['recall'])} / "
                     f"{pct(m['f1'])} |")
    cal = report["calibration"]
    lines += [f"| expected calibration error ({cal['n_bins']} bins) | {pct(cal['ece'])} |",
              f"| mean confidence | {pct(cal['mean_confidence'])} |", "",
              "## Per class", "", "| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {_cell(r['class'])} | {pct(r['precision'])} | {pct(r['recall'])} | {pct(r['f1'])} | {r['support']} |"
              for r in report["per_class"]]
    lines += ["", "## Confusion matrix", "", f"![row-normalized]({FILES['confusion']})",
              f"![counts]({FILES['confusion_counts']})", "", "## Calibration", "",
              f"![reliability diagram]({FILES['reliability']})", "", "## Most confident mistakes", ""]
    if report["mistakes"]:
        lines += [f"![mistakes]({FILES['mistakes']})", ""]
        if "mistakes_gradcam" in report.get("files", {}):
            lines += [f"![why: Grad-CAM of the predicted class]({FILES['mistakes_gradcam']})", ""]
        lines += ["| true | predicted | confidence |", "| --- | --- | --- |"]
        lines += [f"| {_cell(m['true'])} | {_cell(m['pred'])} | {pct(m['confidence'])} |" for m in report["mistakes"]]
    else:
        lines.append("No mistakes.")
    return "\n".join(lines) + "\n"


def _f(value: float | torch.Tensor) -> float:
    # torchmetrics answers in float32: 0.86 would print as 0.8600000143; six places is what a report needs.
    return round(float(value), 6)


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")
