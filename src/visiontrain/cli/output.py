"""Human-readable output for the CLI: the end of a training run, evaluations, predictions, tables."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from visiontrain.text import describe, percent, printable


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Rows as aligned columns; every cell escaped (a class name or run name from a file may hold an escape
    sequence that would otherwise act on the terminal)."""
    cells = [[printable(str(r.get(c, ""))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def print_train_result(run: Any) -> None:
    s = run.summary
    best = s.get("best") or {}
    lines = [f"done in {s['wall_time_s']:.1f} s: {s['epochs_completed']} epochs on {s['device']}"]
    run_dir = Path(s["run_dir"])
    if s.get("stop_reason"):
        lines[0] += f" (stopped: {s['stop_reason']})"
        if "interrupted" in s["stop_reason"]:
            lines.append(f"resume with: visiontrain train --resume {shlex.quote(str(run_dir))}")
    last = best.get("monitor") == "last"  # no validation split: the last epoch, not a best one
    if best:
        lines.append(f"{'last' if last else 'best'} {best.get('split', 'val')}: {describe(best)} "
                     f"(epoch {best['epoch']}{', no validation split' if last else ''})")
    if "test" in s and not (last and best.get("split") == "test"):
        lines.append(f"test:     {describe(s['test'])} (best checkpoint)")
    lines += [
        f"run folder:   {run_dir}",
        f"checkpoints:  {run_dir / 'checkpoints'}/best.safetensors (+ .json), last.safetensors",
        f"watch it:     tensorboard --logdir {shlex.quote(str(run_dir.parent))}",
    ]
    for name, where in s.get("tracking", {}).items():
        lines.append(f"tracked:      {name} run {where.get('run_id')} in {where.get('tracking_uri')}")
    samples = sorted(p for p in (run_dir / "samples").glob("*") if p.is_file())  # copies keep their .jpg etc.
    target = shlex.quote(str(samples[0])) if samples else "IMAGE.png"
    lines.append(f"try it:       visiontrain predict {shlex.quote(str(run_dir))} {target}")
    print("\n".join(lines))


def print_evaluation(r: dict[str, Any]) -> None:
    print(printable(f"{r['checkpoint']} on {r['data']} [{r['split']}], {r['count']:,} images"))
    if r.get("task") == "regression":
        print(f"mse {r['mse']:.6g}   mae {r['mae']:.6g}   rmse {r['rmse']:.6g}")
        return
    if r.get("task") == "multilabel":
        _print_multilabel(r)
        return
    print(f"accuracy {percent(r['accuracy'])}   top5 {percent(r['top5'])}   loss {r['loss']:.4f}")
    classes, confusion = r["classes"], r["confusion"]
    print("\nper-class accuracy:")
    print_table([{"class": c, "accuracy": percent(a) if a == a else "n/a", "support": sum(row)}
                 for c, a, row in zip(classes, r["per_class_accuracy"], confusion, strict=True)],
                ["class", "accuracy", "support"])
    if len(classes) > 20:
        print(f"\nconfusion matrix: {len(classes)} classes, too wide to show; see --json")
        return
    names = [printable(c)[:8] for c in classes]
    width = max(6, *(len(n) for n in names), *(len(str(v)) for row in confusion for v in row))
    print("\nconfusion matrix (rows: true class, columns: predicted):")
    print(" " * (width + 1) + " ".join(n.rjust(width) for n in names))
    for name, row in zip(names, confusion, strict=True):
        print(name.rjust(width) + " " + " ".join(str(v).rjust(width) for v in row))


def _print_multilabel(r: dict[str, Any]) -> None:
    print(f"mAP {percent(r['map'])} (micro {percent(r['map_micro'])})   F1 {percent(r['f1'])}   precision "
          f"{percent(r['precision'])}   recall {percent(r['recall'])}")
    print(f"exact match {percent(r['exact_match'])}   Hamming loss {r['hamming_loss']:.4f}   loss {r['loss']:.4f}")
    print("\nper label (at its threshold):")
    columns = zip(r["classes"], r["ap_per_label"], r["precision_per_label"], r["recall_per_label"],
                  r["f1_per_label"], r["thresholds"], r["support"], strict=True)
    print_table([{"label": c, "ap": percent(ap) if ap == ap else "n/a", "precision": percent(p), "recall": percent(rc),
                  "f1": percent(f), "threshold": f"{t:.3f}", "support": n} for c, ap, p, rc, f, t, n in columns],
                ["label", "ap", "precision", "recall", "f1", "threshold", "support"])


def print_predictions(results: list[dict[str, Any]]) -> None:
    for r in results:  # paths and class names come from files: escaped (printable)
        path = printable(r["path"])
        if "error" in r:
            print(f"{path}: unreadable ({printable(r['error'])})")
            continue
        top = r["predictions"]
        if not top:  # multi-label: no label reached its threshold
            print(f"{path}: no label over its threshold")
            continue
        if "threshold" in top[0]:  # multi-label: every label over its threshold
            print(f"{path}: " + ", ".join(f"{printable(p['label'])} {percent(p['probability'])}" for p in top))
            continue
        if "value" in top[0]:
            print(f"{path}: {top[0]['value']:.6g}")
            continue
        rest = ", ".join(f"{printable(p['label'])} {percent(p['probability'])}" for p in top[1:])
        print(f"{path}: {printable(top[0]['label'])} ({percent(top[0]['probability'])})"
              + (f"  [{rest}]" if rest else ""))
