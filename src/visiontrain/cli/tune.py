"""``visiontrain tune``: hyperparameter search on Optuna (visiontrain.trainer.search); the base config comes from
the same flags as ``train``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from visiontrain.cli.flags import TRUST_CODE_HELP, add_config_flags
from visiontrain.cli.output import print_table
from visiontrain.cli.train import config_from_args
from visiontrain.errors import ConfigError
from visiontrain.limits import MAX_SIDECAR_BYTES, parse_json, read_capped


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    tune = sub.add_parser("tune", help="hyperparameter search on Optuna: each trial a run, the best as a config",
                          usage="visiontrain tune --space SPACE.yaml [--config FILE] [FLAG ...] [--trials N] "
                          "[--study NAME] [--storage URL] | --resume FOLDER",
                          description="Search hyperparameters with Optuna (TPE, a median pruner): each trial is an "
                          "ordinary run under <out>/<study>/; the study lives in --storage, so several processes "
                          "or machines started with the same --storage and --study share it. Writes trials.csv, "
                          "best.yaml (visiontrain train --config best.yaml repeats the best trial) and plots/.")
    tune.add_argument("--space", metavar="YAML", help="the search space: one config key per line, e.g. "
                      "lr: {log_uniform: [1.0e-4, 1.0e-1]} or model: {choice: [small_cnn, fast_cnn]}; kinds: "
                      "log_uniform, uniform, int, log_int, choice")
    tune.add_argument("--config", help="YAML config file of the base run; flags given here override its values")
    tune.add_argument("--trials", type=int, default=None, help="trials of the study, all processes sharing it "
                      "together (failed ones not counted) [default: 20]")
    tune.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="stop starting trials after "
                      "this long (the one running finishes)")
    tune.add_argument("--study", help="the study's name, also its folder under --out [default: tune-<data>-<model>]")
    tune.add_argument("--storage", metavar="URL", help="Optuna's storage: sqlite:///path.db, postgresql://…, "
                      "mysql://… [default: sqlite:///<out>/tune.db]")
    tune.add_argument("--sampler", choices=("tpe", "random"), default=None, help="[default: tpe]")
    tune.add_argument("--pruner", choices=("median", "hyperband", "none"), default=None,
                      help="stops trials whose per-epoch monitored metric falls behind [default: median]")
    tune.add_argument("--sampler-seed", type=int, default=None, metavar="N",
                      help="seed of the sampler (one process: the same trials again) [default: random]")
    tune.add_argument("--resume", metavar="FOLDER", help="continue the study of this folder (<out>/<study>) with "
                         "its own space, config and storage; --trials and --timeout may change")
    tune.add_argument("--json", action="store_true", help="print the result as JSON")
    add_config_flags(tune)
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    tune.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    return {"tune": _tune}


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """What to run: from the flags, or from the study folder's tune.json for --resume."""
    from visiontrain.trainer.search import SETTINGS

    if args.resume:
        if args.space or args.config:
            raise ConfigError("--resume reads the study's own space and config; drop --space and --config")
        path = Path(args.resume) / SETTINGS
        if not path.is_file():
            raise ConfigError(f"{args.resume} is not a study folder of visiontrain tune (no {SETTINGS}); pass "
                              "<out>/<study>")
        try:
            saved = parse_json(read_capped(path, MAX_SIDECAR_BYTES, "a study's tune.json"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: not a readable tune.json ({exc}); start a new study with --study") from None
        _refuse_code(saved, path, bool(getattr(args, "trust_code", False)))
        given = {k: getattr(args, k) for k in ("trials", "timeout") if getattr(args, k) is not None}
        return {**saved, "seed": saved.get("seed"), "timeout": None, **given}
    if not args.space:
        raise ConfigError("visiontrain tune needs --space SPACE.yaml (e.g. lr: {log_uniform: [1.0e-4, 1.0e-1]}), "
                          "or --resume FOLDER to continue a study")
    args.resume = None  # config_from_args reads it as train's --resume
    return {"config": config_from_args(args), "space": args.space, "trials": args.trials or 20,
            "timeout": args.timeout, "study": args.study, "storage": args.storage, "sampler": args.sampler or "tpe",
            "pruner": args.pruner or "median", "seed": args.sampler_seed}


def _refuse_code(saved: dict[str, Any], path: Path, trust_code: bool) -> None:
    """tune.json is a file like a run's config.yaml: it never decides what code runs (config/trust.py) — not in
    the base config, nor in a searched choice."""
    from visiontrain.config import load_config
    from visiontrain.config.trust import check_file_values

    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise ConfigError(f"{path} is not a tune.json written by visiontrain tune")
    base = load_config(saved["config"], where=str(path))
    check_file_values(base, path, trust_code=trust_code)
    for name, spec in (saved.get("space") or {}).items():
        for value in next(iter(spec.values()), []) if isinstance(spec, dict) and "choice" in spec else []:
            check_file_values(base.override({name: value}, where=str(path)), path, trust_code=trust_code)


def _tune(args: argparse.Namespace) -> int:
    from visiontrain.trainer.search import tune

    s = _settings(args)
    result = tune(s["config"], s["space"], trials=s["trials"], timeout=s["timeout"], study=s["study"],
                  storage=s["storage"], sampler=s["sampler"], pruner=s["pruner"], seed=s["seed"],
                  on_trial=None if args.json else _print_trial)
    if args.json:
        print(json.dumps({"study": result.study, "storage": result.storage, "folder": str(result.folder),
                          "direction": result.direction, "monitor": result.monitor, "best": result.best,
                          "trials": result.rows, "files": result.files, "interrupted": result.interrupted},
                         indent=2, default=str))
    else:
        _print_result(result)
    return 130 if result.interrupted else 0


def _print_trial(row: dict[str, Any]) -> None:
    params = " ".join(f"{k.removeprefix('param:')}={_short(v)}" for k, v in row.items() if k.startswith("param:"))
    value = f"{row['value']:.4g}" if isinstance(row.get("value"), float) else "-"
    print(f"trial {row['trial']}: {row['state']}, value {value} ({params}; {row.get('epochs')} epochs, "
          f"{row.get('time_s')} s)", flush=True)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_result(result: Any) -> None:
    rows = [{k.removeprefix("param:"): _short(v) if v is not None else "" for k, v in row.items() if k != "run"}
            for row in result.rows]
    if rows:
        print()
        print_table(rows, list(dict.fromkeys(k for row in rows for k in row)))
    states = [row["state"] for row in result.rows]
    print(f"\nstudy {result.study} ({result.direction} {result.monitor}): {states.count('complete')} complete, "
          f"{states.count('pruned')} pruned, {states.count('fail')} failed")
    if result.best:
        b = result.best
        params = ", ".join(f"{k}={_short(v)}" for k, v in b["params"].items())
        print(f"best: trial {b['number']}, {result.monitor} {b['value']:.4g} ({params}); run {b['run_dir']}")
        print(f"repeat it:    visiontrain train --config {shlex.quote(result.files['best'])}")
    print(f"table:        {result.files['table']}")
    for key in ("history", "importance", "intermediate"):
        if key in result.files:
            print(f"plot:         {result.files[key]}")
    if result.interrupted:
        print(f"interrupted; continue with: visiontrain tune --resume {shlex.quote(str(result.folder))}",
              file=sys.stderr)
