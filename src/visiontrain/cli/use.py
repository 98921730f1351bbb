"""The commands that use a trained model: ``evaluate``, ``predict``, ``export`` and ``serve``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from visiontrain.cli.flags import TRUST_CODE_HELP
from visiontrain.cli.output import print_evaluation, print_predictions
from visiontrain.text import printable

PT2_TRUST_HELP = ("load a .pt2 export: torch.export.load runs code from the file, so only for a file you "
                   "exported yourself (ONNX and TorchScript exports need no flag); also imports the model class a "
                   "checkpoint records (see --model)")
MODEL_SPEC_HELP = ("the model class a checkpoint of your own model records, restated: my_model.py:MyNet or "
                   "mypkg.models:MyNet (imported: its code runs; a run's files never import it on their own)")
# use.tta.TTA_MODES's names (tests/use/test_tta.py keeps them equal): that module loads torch, --help must not
TTA_NAMES = ("none", "flip", "five-crop")
TTA_HELP = f"test-time augmentation: {', '.join(TTA_NAMES)} (average the probabilities of the views) [default: none]"


def register(sub: argparse._SubParsersAction) -> dict[str, Any]:
    ev = sub.add_parser("evaluate", help="loss, top-1/top-5, per-class accuracy and confusion matrix")
    ev.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    ev.add_argument("--data", help="dataset or folder to evaluate on [default: the run's own]")
    ev.add_argument("--data-dir", help="dataset cache folder [default: the run's own]")
    ev.add_argument("--split", help="split to evaluate: train, val or test [default: test when the data has "
                    "one, else val — the held-out split the run reported]")
    ev.add_argument("--batch-size", type=int, help="images per evaluation step")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or mps [default: auto]")
    ev.add_argument("--json", action="store_true", help="print the full result as JSON")
    ev.add_argument("--report", metavar="DIR", nargs="?", const="", help="write a report there [default: report/ in "
                    "the run folder]: per-class precision/recall/F1, confusion matrices, calibration (ECE, "
                    "reliability diagram), confident mistakes; Markdown + JSON")
    ev.add_argument("--tta", default="none", help="test-time augmentation: none, flip, five-crop [default: none]")
    ev.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    ev.add_argument("--model", dest="model_spec", metavar="SPEC", help=MODEL_SPEC_HELP)

    pr = sub.add_parser("predict", help="classify image files, folders, globs or @list files")
    pr.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run folder, checkpoint, or an export "
                    "(.onnx through onnxruntime, .torchscript.pt, .pt2)")
    pr.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="files, folders (recursive), globs, "
                    "or @list.txt (one path per line)")
    pr.add_argument("--top-k", type=int, default=5, help="how many classes to show per image [default: 5]")
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda or mps [default: auto]")
    pr.add_argument("--json", action="store_true", help="print results as JSON")
    pr.add_argument("--csv", metavar="FILE", help="write the results to a CSV file")
    pr.add_argument("--batch-size", type=int, default=64, help="images per forward pass [default: 64]")
    pr.add_argument("--tta", default="none", help="test-time augmentation: none, flip, five-crop [default: none]")
    pr.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar on stderr [default: when stderr is a terminal]")
    pr.add_argument("--explain", metavar="DIR", help="write a Grad-CAM overlay of each image there (the heat map "
                    "of its top class on the image, class and probability above; needs a run or checkpoint)")
    pr.add_argument("--explain-method", default="gradcam", choices=["gradcam", "occlusion"], help="with "
                    "--explain: gradcam (a run or checkpoint: gradients) or occlusion (gradient-free: hides one "
                    "square at a time; exports too, ~225 forward passes per batch) [default: gradcam]")
    pr.add_argument("--layer", metavar="NAME", help="with --explain: the module Grad-CAM reads (a name from "
                    "model.named_modules()) [default: the end of the last convolutional stage]")
    pr.add_argument("--trust-code", action="store_true", help=PT2_TRUST_HELP)
    pr.add_argument("--model", dest="model_spec", metavar="SPEC", help=MODEL_SPEC_HELP)

    ex = sub.add_parser("export", help="export a run as ONNX, TorchScript or torch.export (.pt2), verified",
                        description="Export a checkpoint with a dynamic batch size and its class names and "
                        "preprocessing in the file's metadata; the export is checked against PyTorch on sample "
                        "inputs and the largest logit difference printed.")
    ex.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    ex.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "pt2", "openvino"],
                    help="[default: onnx, which needs the onnx extra: pip install 'visiontrain[onnx]'; openvino "
                    "needs the openvino extra too; torchscript and pt2 need nothing more]")
    ex.add_argument("--with-preprocessing", action="store_true", help="onnx/openvino: put the normalization and "
                    "channel conversion in the graph: it takes uint8 pixels of the saved size and returns "
                    "probabilities")
    ex.add_argument("--layout", default="nhwc", choices=["nhwc", "nchw"], help="with --with-preprocessing: the "
                    "pixel batch's layout, N x H x W x C (what Pillow/numpy give) or N x C x H x W [default: nhwc]")
    ex.add_argument("--quantize", choices=["int8", "fp16"], help="int8: static quantization for CPUs (onnx, "
                    "openvino), calibrated on training images; fp16: half precision for GPUs (onnx); checked by "
                    "top-1 agreement and accuracy on the held-out split")
    ex.add_argument("--max-accuracy-drop", type=float, default=1.0, metavar="POINTS", help="with --quantize: "
                    "refuse the export when its accuracy is more than this many points below the model's "
                    "[default: 1]")
    ex.add_argument("--calibration-images", type=int, default=300, metavar="N", help="with --quantize int8: "
                    "training images (a seeded sample) the activation ranges are measured on [default: 300]")
    ex.add_argument("--out", help="file or folder to write [default: RUN/exports/model.<ext>]")
    ex.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed |logit difference| against "
                    "PyTorch, relative to the largest |logit| when that is above 1 [default: 0.001]")
    ex.add_argument("--opset", type=int, help="ONNX opset version [default: the exporter's]")
    ex.add_argument("--json", action="store_true", help="print the result as JSON")
    ex.add_argument("--trust-code", action="store_true", help="import the model class the checkpoint records")
    ex.add_argument("--model", dest="model_spec", metavar="SPEC", help=MODEL_SPEC_HELP)

    sv = sub.add_parser("serve", help="serve a run or an export over HTTP, with a web page",
                        description="An HTTP prediction service: POST /predict (multipart or raw image bytes), "
                        "GET /health, GET /model, OpenAPI at /docs, and a page at / to drop an image on.")
    sv.add_argument("model", metavar="RUN_OR_EXPORT", help="run folder, checkpoint, or .onnx/.torchscript.pt/.pt2")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on [default: 127.0.0.1]")
    sv.add_argument("--port", type=_bounded(int, 0, 65535), default=8000, help="port; 0 picks a free one "
                    "[default: 8000]")
    sv.add_argument("--device", default="auto", help="auto, cpu, cuda or mps [default: auto]")
    sv.add_argument("--tta", default="none", help=TTA_HELP)
    sv.add_argument("--top-k", type=_bounded(int, 1, 100), default=5, help="classes returned when a request "
                    "does not say [default: 5]")
    sv.add_argument("--max-mb", type=_bounded(float, 0, 2048, above=True), default=10.0,
                    help="largest request body, MiB [default: 10]")
    sv.add_argument("--max-pixels", type=_bounded(int, 1, 2**31), default=2**24, help="most pixels decoded for "
                    "one image; a large JPEG counts at the 1/2-1/8 scale it is decoded at [default: 16777216]")
    sv.add_argument("--timeout", type=_bounded(float, 0, 86_400, above=True), default=30.0,
                    help="seconds one prediction may take, waiting for a worker included [default: 30]")
    sv.add_argument("--threads", type=_bounded(int, 1, 256), default=4, help="images decoded and predicted at "
                    "the same time (large images get a quarter as many more) [default: 4]")
    sv.add_argument("--queue", type=_bounded(int, 0, 10_000), default=16, help="requests that may wait for a "
                    "worker; past that: 503 with Retry-After [default: 16]")
    sv.add_argument("--read-timeout", type=_bounded(float, 0, 86_400, above=True), default=30.0,
                    help="seconds a request's body may take to arrive (its headers: 10) [default: 30]")
    sv.add_argument("--max-connections", type=_bounded(int, 1, 100_000), default=128,
                    help="open connections; past that a new one gets 503 [default: 128]")
    sv.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on /predict and /model "
                    "[default: $VISIONTRAIN_SERVE_TOKEN, else none]")
    sv.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                    help="a host name clients may use besides IP addresses and localhost (repeat; * for any)")
    sv.add_argument("--cors", action="append", default=[], metavar="ORIGIN",
                    help="let pages from ORIGIN (e.g. https://app.example.com) call the API (repeat; * for any)")
    sv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    sv.add_argument("--trust-code", action="store_true", help=PT2_TRUST_HELP)
    sv.add_argument("--model", dest="model_spec", metavar="SPEC", help=MODEL_SPEC_HELP)
    return {"evaluate": evaluate_command, "predict": predict_command, "export": _export_command,
            "serve": _serve_command}


def _export_command(args: argparse.Namespace) -> int:
    from visiontrain.use.export.write import export

    r = export(args.checkpoint, args.format, args.out, tolerance=args.tolerance, opset=args.opset,
               trust_code=args.trust_code, model_spec=args.model_spec, with_preprocessing=args.with_preprocessing,
               layout=args.layout, quantize=args.quantize, max_accuracy_drop=args.max_accuracy_drop,
               calibration_images=args.calibration_images)
    if args.json:
        print(json.dumps({"path": str(r.path), "format": r.format, "max_abs_diff": r.max_abs_diff,
                          "tolerance": r.tolerance, "verification": r.verification, "metadata": r.metadata},
                         indent=2))
        return 0
    size = r.path.stat().st_size + sum(f.stat().st_size for f in [r.path.with_suffix(".bin")] if f.is_file())
    what = f"{r.metadata.get('precision', 'fp32')} {r.format}" + (", preprocessing in the graph"
                                                                 if args.with_preprocessing else "")
    print(f"exported {what}: {r.path} ({size / 2**20:.2f} MiB)")
    print(f"verified against PyTorch on batches of 1 and 5: max abs difference {r.max_abs_diff:.3g} "
          f"(allowed {r.tolerance:.3g})" + (" — of the fp32 graph it was made from" if r.verification else ""))
    if r.verification:
        v = r.verification
        print(f"checked on the {v['split']} split ({v['images']} images): top-1 agreement with fp32 "
              f"{v['top1_agreement']:.2f}%, accuracy {v['accuracy']:.2f}% (fp32 {v['accuracy_fp32']:.2f}%, drop "
              f"{v['accuracy_drop']:.2f} points, allowed {v['max_accuracy_drop']:g}); saved in its metadata")
    print(f"classes and preprocessing are in its metadata; try: visiontrain predict {r.path} IMAGE.png")
    return 0


def _serve_command(args: argparse.Namespace) -> int:
    from visiontrain.use.serve import TOKEN_ENV, serve

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    serve(args.model, args.host, args.port, device=args.device, tta=args.tta, top_k=args.top_k,
          log_level=args.log_level, token=token, allowed_hosts=tuple(args.allowed_host), cors=tuple(args.cors),
          max_bytes=max(1, int(args.max_mb * 2**20)), max_pixels=args.max_pixels, timeout_s=args.timeout,
          threads=args.threads, queue=args.queue, read_timeout_s=args.read_timeout,
          max_connections=args.max_connections, trust_code=args.trust_code, model_spec=args.model_spec)
    return 0


def _bounded(kind: type, low: float, high: float, *, above: bool = False) -> Callable[[str], Any]:
    """An argparse type: a ``kind`` number in [low, high] (``above``: low itself excluded), finite."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        finite = value is not None and (kind is int or math.isfinite(value))  # math.isfinite overflows on 10**400
        if not finite or not (low < value if above else low <= value) or value > high:
            what, span = ("an integer", f"from {low:,} to {high:,}") if kind is int else \
                ("a number", f"above {low:g} and at most {high:g}" if above else f"from {low:g} to {high:g}")
            raise argparse.ArgumentTypeError(f"expected {what} {span}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def _run_folder(path: Path) -> Path:
    """The run a checkpoint argument belongs to: a folder itself, runs/x for runs/x/checkpoints/best.json."""
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def evaluate_command(args: argparse.Namespace) -> int:
    """``visiontrain evaluate``: print (or --json) the result; ``--report DIR`` writes the full report."""
    from visiontrain.use.evaluate import evaluate

    report_dir = getattr(args, "report", None)
    if report_dir == "":  # a bare --report: beside the checkpoint's run
        report_dir = str(_run_folder(Path(args.checkpoint)) / "report")
    result = evaluate(args.checkpoint, data=args.data, split=args.split, data_dir=args.data_dir,
                      batch_size=args.batch_size, device=args.device, tta=getattr(args, "tta", "none"),
                      mistakes=32 if report_dir else 0, outputs=bool(report_dir),
                      explain_mistakes=bool(report_dir) and _has_gradcam(),
                      trust_code=bool(getattr(args, "trust_code", False)),
                      model_spec=getattr(args, "model_spec", None))
    report = None
    if report_dir:
        from visiontrain.use.report import write_report

        report = write_report(result, report_dir)
    if args.split is None:
        print(f"visiontrain: evaluating the {result['split']} split"
              + (" (the data has no test split)" if result["split"] == "val" else "") + "; --split chooses another",
              file=sys.stderr)
    plain = {k: v for k, v in result.items() if k not in ("probabilities", "predictions", "targets", "mistakes")}
    if args.json:
        print(json.dumps(report if report is not None else plain, indent=2))
        return 0
    print_evaluation(plain)
    if report is not None and report.get("task") == "regression":
        print(f"\nR² {report['r2']:.4f}   largest |error| {report['max_abs_error']:.6g}")
        print(f"report: {Path(report_dir) / 'report.md'} (+ report.json, predictions.png)")
    elif report is not None and report.get("task") == "multilabel":
        print(f"report: {Path(report_dir) / 'report.md'} (+ report.json, pr_curves.png, cooccurrence.png)")
    elif report is not None:
        m, w, cal = report["macro"], report["weighted"], report["calibration"]
        print(f"\nmacro    precision {_pct(m['precision'])}  recall {_pct(m['recall'])}  F1 {_pct(m['f1'])}")
        print(f"weighted precision {_pct(w['precision'])}  recall {_pct(w['recall'])}  F1 {_pct(w['f1'])}")
        print(f"calibration: ECE {_pct(cal['ece'])} ({cal['n_bins']} bins), mean confidence "
              f"{_pct(cal['mean_confidence'])}")
        print(f"report: {Path(report_dir) / 'report.md'} (+ report.json, confusion, reliability and mistakes PNGs)")
    return 0


def _has_gradcam() -> bool:
    """The explain extra is there: the report's mistakes then get their Grad-CAM overlays too."""
    import importlib.util

    return importlib.util.find_spec("pytorch_grad_cam") is not None


def predict_command(args: argparse.Namespace) -> int:
    """``visiontrain predict``: screen, --json or --csv FILE; unreadable files are listed on stderr."""
    from visiontrain.use.predict import predict, write_csv

    progress = getattr(args, "progress", None)
    results = predict(args.checkpoint, args.inputs, top_k=args.top_k, device=args.device,
                      batch_size=64 if getattr(args, "batch_size", None) is None else args.batch_size,
                      tta=getattr(args, "tta", "none"),
                      progress=sys.stderr.isatty() if progress is None else progress,
                      trust_code=getattr(args, "trust_code", False), model_spec=getattr(args, "model_spec", None),
                      explain=getattr(args, "explain", None), layer=getattr(args, "layer", None),
                      explain_method=getattr(args, "explain_method", "gradcam"))
    if getattr(args, "explain", None):
        done = sum("explanation" in r for r in results)
        method = "Grad-CAM" if getattr(args, "explain_method", "gradcam") == "gradcam" else "occlusion"
        print(f"wrote {done} {method} overlay(s) to {args.explain}", file=sys.stderr)
    csv_path = getattr(args, "csv", None)
    if csv_path:
        write_csv(results, csv_path)
        print(f"wrote {len(results)} rows to {csv_path}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    elif not csv_path:
        print_predictions(results)
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(printable(f"visiontrain: skipped {r['path']}: {r['error']}"), file=sys.stderr)
    return 2 if len(failed) == len(results) else 0


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"
