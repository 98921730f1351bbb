"""``visiontrain tune``: hyperparameter search on Optuna, each trial an ordinary visiontrain run.

The search space is YAML, one config key per line (any key ``train`` takes: a flag's name or a dotted key)::

    lr: {log_uniform: [1.0e-4, 1.0e-1]}
    weight_decay: {uniform: [0.0, 0.1]}
    batch_size: {int: [16, 128]}          # also {log_int: [16, 256]}
    model: {choice: [small_cnn, fast_cnn]}

The objective is the run's monitored metric (``--monitor``, e.g. ``val/accuracy``: its best epoch), maximized or
minimized as the monitor says; the sampler is TPE (or random); the pruner (median by default) reads every
epoch's value of that metric and stops a trial that falls behind the others at the same epoch — the trial's run
folder then holds a run stopped early, as ``--early-stop`` would leave it.

The study lives in Optuna's storage — an RDB: ``sqlite:///<runs root>/tune.db`` by default, PostgreSQL or MySQL
for many machines — so any number of ``visiontrain tune`` processes started with the same ``--storage`` and
``--study`` share it: Optuna numbers the trials in the database, each number is run once, and together they run
``--trials`` trials (those that did not fail). Each process writes what it sees of the whole study at its end
into ``<runs root>/<study>/``: the trial runs (``trial-0000`` …), ``trials.csv``, ``best.yaml`` (the best
trial's config: ``visiontrain train --config best.yaml`` repeats it) and Optuna's plots as PNG (none with
``--plots off``).
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visiontrain.config import RunConfig, canonical_key, read_yaml
from visiontrain.engine.callbacks import Callback, StopTraining
from visiontrain.engine.state import Monitor, TrainState
from visiontrain.errors import ConfigError
from visiontrain.fileio import atomic_write_json, atomic_write_text
from visiontrain.optional import require_all
from visiontrain.text import slug
from visiontrain.trainer.folders import as_config
from visiontrain.trainer.training import train

KINDS = ("log_uniform", "uniform", "int", "log_int", "choice")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
SETTINGS = "tune.json"  # what `tune --resume` needs, in the study folder


@dataclass(frozen=True)
class Param:
    """One searched key: ``kind`` one of :data:`KINDS`, ``values`` its [low, high] or its choices."""

    name: str  # as the space file spells it (Optuna's param name)
    key: str  # the dotted config key
    kind: str
    values: list[Any]

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, self.values)
        low, high = self.values
        if self.kind in ("int", "log_int"):
            return trial.suggest_int(self.name, int(low), int(high), log=self.kind == "log_int")
        return trial.suggest_float(self.name, float(low), float(high), log=self.kind == "log_uniform")


def _number(value: Any, where: str) -> float:
    try:  # YAML 1.1 reads 1e-4 (no dot) as text
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    return number


def parse_space(raw: dict[str, Any], base: RunConfig, where: str = "search space") -> list[Param]:
    """The searched keys of a space mapping, each checked against the config schema (its low, high and every
    choice must be a value the key takes) before any trial runs.

    >>> [p.kind for p in parse_space({"lr": {"log_uniform": [1e-4, 0.1]}, "model": {"choice": ["small_cnn"]}},
    ...                              RunConfig())]
    ['log_uniform', 'choice']
    """
    if not raw:
        raise ConfigError(f"{where} is empty; give one key per line, e.g. lr: {{log_uniform: [1.0e-4, 1.0e-1]}}")
    params = []
    for name, spec in raw.items():
        key = canonical_key(str(name), where)
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in KINDS):
            raise ConfigError(f"{where}: {name} must be one of {', '.join(f'{{{k}: [...]}}' for k in KINDS)}, "
                              f"got {spec!r}")
        kind, values = next(iter(spec.items()))
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: {name}: {kind} takes a list, e.g. {{{kind}: [1, 10]}}")
        if kind != "choice":
            if len(values) != 2:
                raise ConfigError(f"{where}: {name}: {kind} takes [low, high], got {values!r}")
            low, high = (_number(v, f"{where}: {name}") for v in values)
            if not low < high:
                raise ConfigError(f"{where}: {name}: low {low:g} must be below high {high:g}")
            if kind.startswith("log") and low <= 0:
                raise ConfigError(f"{where}: {name}: {kind} needs a positive low, got {low:g}")
            values = [int(low), int(high)] if kind.endswith("int") else [low, high]
        elif any(isinstance(v, dict | list) for v in values):
            raise ConfigError(f"{where}: {name}: a choice is a list of plain values (numbers, text, true/false)")
        for value in values:  # every value must be one the key takes: found now, not in trial 17
            base.override({key: value}, where=f"{where}: {name}")
        params.append(Param(str(name), key, kind, list(values)))
    return params


def read_space(path: str | Path, base: RunConfig) -> list[Param]:
    return parse_space(read_yaml(path), base, where=str(path))


class Pruning(Callback):
    """Reports the monitored metric of every epoch to the Optuna trial; stops the run when the pruner says so."""

    order = "control"

    def __init__(self, trial: Any, direction: str) -> None:
        self.trial, self.direction = trial, direction
        self.pruned_at: int | None = None

    def on_fit_start(self, state: TrainState) -> None:
        mode = "max" if self.direction == "maximize" else "min"
        if state.monitor.mode != mode:
            raise ConfigError(f"the study {self.direction}s, but this run's monitor {state.monitor.key} is better "
                              f"when {'lower' if state.monitor.mode == 'min' else 'higher'}; set --monitor "
                              "explicitly (e.g. --monitor val/loss) for a new --study")

    def on_epoch_end(self, state: TrainState) -> None:
        value = state.epoch_metrics.get(state.monitor.key)
        if not isinstance(value, float) or not math.isfinite(value):
            return
        self.trial.report(value, state.epoch)
        if self.trial.should_prune():
            self.pruned_at = state.epoch
            raise StopTraining(f"pruned by optuna after epoch {state.epoch}")


@dataclass
class TuneResult:
    """A study's outcome as this process saw it at its end."""

    folder: Path
    study: str
    storage: str
    direction: str
    monitor: str
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    files: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False


def default_study(cfg: RunConfig) -> str:
    return f"tune-{slug(cfg.data.name)}-{slug(cfg.model.name)}"


def default_storage(cfg: RunConfig) -> str:
    return f"sqlite:///{(Path(cfg.out) / 'tune.db').resolve()}"


def direction_of(cfg: RunConfig) -> str:
    key = cfg.train.monitor if cfg.train.monitor != "auto" else "val/accuracy"
    return "maximize" if Monitor.of(key).mode == "max" else "minimize"


def tune(config: RunConfig | dict | str | Path | None, space: list[Param] | dict[str, Any] | str | Path, *,
         trials: int = 20, timeout: float | None = None, study: str | None = None, storage: str | None = None,
         sampler: str = "tpe", pruner: str = "median", seed: int | None = None,
         on_trial: Callable[[dict[str, Any]], None] | None = None) -> TuneResult:
    """Search ``space`` around the base ``config``: see the module docstring. ``trials`` counts the study's trials
    (every process sharing it together; failed ones are not counted), ``timeout`` (seconds) ends this process's
    share — a trial running then finishes first. ``on_trial`` gets each row of the table as a trial ends.

    >>> result = visiontrain.tune({"data": "synthetic", "epochs": 2}, {"lr": {"log_uniform": [1e-4, 1e-1]}},
    ...                           trials=8)  # doctest: +SKIP
    >>> result.best["value"], result.files["best"]  # doctest: +SKIP
    (1.0, 'runs/tune-synthetic-small_cnn/best.yaml')
    """
    require_all(["optuna", "sqlalchemy"], "optuna", "visiontrain tune")
    import optuna

    base = as_config(config)
    params = (space if isinstance(space, list) else parse_space(space, base) if isinstance(space, dict)
              else read_space(space, base))
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    if sampler not in SAMPLERS or pruner not in PRUNERS:
        raise ConfigError(f"--sampler is one of {', '.join(SAMPLERS)}; --pruner one of {', '.join(PRUNERS)}")
    name = study or default_study(base)
    if slug(name) != name:
        raise ConfigError(f"--study {name!r}: use letters, digits, - and _ only (it names a folder), e.g. "
                          f"{slug(name)}")
    url = storage or default_storage(base)
    folder = Path(base.out) / name
    folder.mkdir(parents=True, exist_ok=True)
    direction = direction_of(base)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # visiontrain prints one line per trial and its errors
    the_study = _open_study(optuna, url, name, direction, sampler, pruner, seed, params, base)
    atomic_write_json(folder / SETTINGS, {"study": name, "storage": url, "config": base.to_dict(),
                                          "space": {p.name: {p.kind: p.values} for p in params}, "trials": trials,
                                          "sampler": sampler, "pruner": pruner, "seed": seed})
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING,
               optuna.trial.TrialState.WAITING)
    started, interrupted = time.monotonic(), False

    def objective(trial: Any) -> float:
        earlier = [t for t in the_study.get_trials(deepcopy=False, states=counted) if t.number < trial.number]
        if len(earlier) >= trials:  # another process took the last trial meanwhile: this one is not run
            trial.set_user_attr("skipped", True)
            raise _Skip
        return _run_trial(trial, base, params, folder, direction)

    def done(study_: Any, trial: Any) -> None:
        if not trial.user_attrs.get("skipped") and on_trial is not None:
            on_trial(_row(trial, the_study.direction))
        if _counted(study_, counted) >= trials or (timeout is not None and time.monotonic() - started >= timeout):
            study_.stop()

    try:
        if _counted(the_study, counted) < trials:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                the_study.optimize(objective, timeout=timeout, callbacks=[done], catch=(_Skip,))
    except KeyboardInterrupt:  # Ctrl-C: the trial running is marked failed; the study so far is written out
        interrupted = True
    result = _write_outputs(the_study, folder, name, url, base)
    result.interrupted = interrupted
    return result


class _Skip(Exception):
    """A trial numbered past the study's budget (another process took the last one): recorded as failed, not run."""


def _counted(study: Any, states: tuple[Any, ...]) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False, states=states) if not t.user_attrs.get("skipped"))


def _open_study(optuna: Any, url: str, name: str, direction: str, sampler: str, pruner: str, seed: int | None,
                params: list[Param], base: RunConfig) -> Any:
    """Create the study, or join it when another process (or an earlier `tune`) made it with the same search."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
            break
        except Exception as exc:  # a bad URL, a missing driver, a database that refuses: SQLAlchemy says which
            # Workers started together race to create the tables; the loser finds them made when it tries again.
            if attempt == 4 or type(exc).__name__ not in ("IntegrityError", "OperationalError"):
                raise ConfigError(f"--storage {url}: {' '.join(str(exc).split())[:300]}") from None
            time.sleep(1 + attempt)
    samplers = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
                "random": lambda: optuna.samplers.RandomSampler(seed=seed)}
    pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
               "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=base.train.epochs),
               "none": optuna.pruners.NopPruner}
    study = optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True,
                                sampler=samplers[sampler](), pruner=pruners[pruner]())
    searched = {p.name: {p.kind: p.values} for p in params}
    held = study.user_attrs.get("space")
    if held is None:
        study.set_user_attr("space", searched)
        study.set_user_attr("monitor", base.train.monitor)
    elif held != searched:
        raise ConfigError(f"study {name!r} in {url} searches another space ({held}); continue it with the same "
                          "space (visiontrain tune --resume FOLDER reads it back) or start a new one with --study")
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study {name!r} in {url} {study.direction.name.lower()}s its objective and this "
                          f"monitor ({base.train.monitor}) wants to {direction} it; use another --study")
    return study


def _run_trial(trial: Any, base: RunConfig, params: list[Param], folder: Path, direction: str) -> float:
    import optuna

    values = {p.key: p.suggest(trial) for p in params}
    cfg = base.override({**values, "out": str(folder), "name": f"trial-{trial.number:04d}"}, where="the search")
    pruning = Pruning(trial, direction)
    run = train(cfg, callbacks=[pruning], quiet=True)
    trial.set_user_attr("run_dir", str(run.dir))
    trial.set_user_attr("epochs", run.summary["epochs_completed"])
    trial.set_user_attr("wall_time_s", run.summary["wall_time_s"])
    if "interrupted" in (run.summary.get("stop_reason") or ""):
        raise KeyboardInterrupt  # Ctrl-C in the trial's training: Optuna marks it failed, the study stops
    best = run.summary.get("best") or {}
    if pruning.pruned_at is not None:
        raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")
    if not isinstance(best.get("value"), float) or not math.isfinite(best["value"]):
        raise ConfigError(f"trial {trial.number}: the run {run.dir} has no finite {base.train.monitor} value")
    return float(best["value"])


def _row(trial: Any, direction: Any) -> dict[str, Any]:
    value = trial.value if trial.values else None
    if value is None and trial.intermediate_values:  # a pruned trial: its best reported value, for the table
        reported = list(trial.intermediate_values.values())
        value = max(reported) if direction.name == "MAXIMIZE" else min(reported)
    duration = (trial.datetime_complete - trial.datetime_start).total_seconds() \
        if trial.datetime_complete and trial.datetime_start else None
    return {"trial": trial.number, "state": trial.state.name.lower(), "value": value,
            **{f"param:{k}": v for k, v in trial.params.items()}, "epochs": trial.user_attrs.get("epochs"),
            "time_s": round(duration, 1) if duration is not None else None, "run": trial.user_attrs.get("run_dir")}


def _write_outputs(study: Any, folder: Path, name: str, url: str, base: RunConfig) -> TuneResult:
    """trials.csv, best.yaml and the plots, from the whole study as the storage holds it now."""
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("skipped")]
    rows = [_row(t, study.direction) for t in trials]
    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["trial", "state", "value"]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files = {"table": str(atomic_write_text(folder / "trials.csv", out.getvalue()))}
    best = _best(study)
    if best is not None:
        files["best"] = str(_write_best(best, folder, name, base))
    monitor = base.train.monitor if base.train.monitor != "auto" else "val/accuracy"
    if base.train.plots:  # --plots off: no pictures, the study's neither (its importance loads scikit-learn: ~4 s)
        files.update(_plots(study, folder, monitor))
    return TuneResult(folder, name, url, study.direction.name.lower(), monitor, rows, best, files)


def _best(study: Any) -> dict[str, Any] | None:
    try:
        trial = study.best_trial
    except ValueError:  # no completed trial yet
        return None
    return {"number": trial.number, "value": trial.value, "params": dict(trial.params),
            "run_dir": trial.user_attrs.get("run_dir")}


def _write_best(best: dict[str, Any], folder: Path, name: str, base: RunConfig) -> Path:
    """The best trial's resolved config (its run's config.yaml), under the base's runs root and with no name."""
    run_dir = Path(best["run_dir"])
    config = read_yaml(run_dir / "config.yaml")
    config.update({"out": base.out, "name": None})
    head = (f"# best trial of study {name}: trial {best['number']}, value {best['value']!r} ({run_dir})\n"
            f"# repeat it with: visiontrain train --config {folder / 'best.yaml'}\n")
    return atomic_write_text(folder / "best.yaml", head + yaml.safe_dump(config, sort_keys=False))


def _plots(study: Any, folder: Path, monitor: str) -> dict[str, str]:
    """Optuna's own matplotlib plots: the optimization history, the parameters' importance, every trial's
    per-epoch values (where the pruned ones stopped)."""
    import optuna
    from matplotlib import pyplot

    from visiontrain.watch import plots  # matplotlib: loaded when a picture is drawn

    vis = optuna.visualization.matplotlib
    drawn = {}
    finished = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    makers = {"history": vis.plot_optimization_history, "importance": vis.plot_param_importances,
              "intermediate": vis.plot_intermediate_values}
    for key, maker in makers.items():
        if key == "importance" and len(finished) < 2:
            continue  # importance needs at least two finished trials
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
            try:
                axes = maker(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # too few trials of some kind
                print(f"note: Optuna's {key} plot skipped ({exc})", file=sys.stderr)
                continue
        figure = getattr(axes, "figure", None) or axes.flat[0].figure
        if key in ("history", "intermediate"):  # say what was measured, and over what
            axes.set_ylabel(monitor)
            axes.set_xlabel("trial" if key == "history" else "epoch")
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        path = folder / "plots" / f"{key}.png"
        path.parent.mkdir(exist_ok=True)
        plots.save_png(figure, path)
        pyplot.close(figure)  # Optuna draws through pyplot, which keeps every figure until closed
        drawn[key] = str(path)
    return drawn
