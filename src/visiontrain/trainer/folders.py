"""A run's folder and its config: made once (never overwriting another run), read back for ``--resume``, cleared
when a run killed before its first resume point starts again."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from visiontrain.config import RunConfig, load_config
from visiontrain.config.trust import read_config_file
from visiontrain.errors import CheckpointError, ConfigError, VisiontrainError
from visiontrain.faults import fault_point
from visiontrain.fileio import atomic_write_yaml, remove_stale_temps
from visiontrain.text import slug


def as_config(config: RunConfig | dict | str | Path | None, *, trust_code: bool = False) -> RunConfig:
    """A RunConfig from what the API was given; a YAML path inside a run folder may not name code (see
    :mod:`visiontrain.config.trust`) unless ``trust_code``."""
    if config is None:
        return RunConfig()
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, str | Path):
        return load_config(read_config_file(config, trust_code=trust_code), where=str(config))
    if isinstance(config, dict):
        return load_config(config)
    raise ConfigError(f"config must be a RunConfig, a mapping or a YAML path, not {type(config).__name__}")


def make_run_dir(cfg: RunConfig) -> Path:
    """A new folder under ``cfg.out``; an existing name gets a -2, -3 … suffix, never overwritten."""
    name = cfg.name or f"{slug(cfg.data.name)}-{slug(cfg.model.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    root = Path(cfg.out)
    candidate, n = root / name, 1
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            n += 1
            candidate = root / f"{name}-{n}"
        except OSError as exc:
            raise VisiontrainError(f"cannot create run folder {candidate}: {exc.strerror or exc}; "
                                   "choose another --out") from None


def set_aside(cfg: RunConfig) -> Path | None:
    """For ``--overwrite``: move the existing run folder ``<out>/<name>`` aside (one atomic rename) so the new
    run gets the name; returns where it went (deleted once the new run has started), or None if there was none.

    Only a visiontrain run folder (with its ``config.yaml``) is ever replaced: a typo in ``--name`` or ``--out``
    must not delete someone's data.
    """
    target = Path(cfg.out) / (cfg.name or "")
    if not cfg.name or not target.exists():
        return None
    if not (target / "config.yaml").is_file():
        raise ConfigError(f"--overwrite: {target} is not a visiontrain run folder (no config.yaml), so it is not "
                          "replaced; choose another --name or --out")
    aside = target.with_name(f".{target.name}.replaced-{os.getpid()}")
    try:
        os.replace(target, aside)
    except OSError as exc:
        raise VisiontrainError(f"--overwrite: cannot move {target} aside ({exc.strerror or exc}); check the "
                               "folder's permissions or choose another --name") from None
    return aside


def saved_config(run_dir: str | Path, *, trust_code: bool = False, given: Iterable[str] = ()) -> RunConfig:
    """The resolved config a run was started with (its ``config.yaml``). It may not name code to import or a
    file to unpickle unless ``trust_code`` or the user restates that key (``given``: keys set on the command line)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.yaml); pass runs/<name>")
    return load_config(read_config_file(path, trust_code=trust_code, given=given, run_file=True), where=str(path))


def start_run_dir(cfg: RunConfig, overwrite: bool) -> Path:
    """Create the run folder and its config.yaml; with ``overwrite``, the old folder goes only after that."""
    aside = set_aside(cfg) if overwrite else None
    try:
        folder = make_run_dir(cfg)
        atomic_write_yaml(folder / "config.yaml", cfg.to_dict())
        fault_point("after-config")  # the earliest moment `--resume` can pick the run up again
    except BaseException:
        if aside is not None and not (Path(cfg.out) / str(cfg.name)).exists():
            os.replace(aside, Path(cfg.out) / str(cfg.name))  # the new run never started: put the old one back
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return folder


# What a run writes into checkpoints/ before its first resume point: ``best`` and ``keep_last`` copies, written at
# the end of the first epoch just before the resume point (engine/saver.py).
_EARLY_CHECKPOINT = re.compile(r"(best|epoch-\d+)\.(json|safetensors)")


def clear_for_restart(folder: Path, main: bool = True) -> None:
    """Make ready a run folder that was stopped after its config.yaml and before its first resume point.

    Nothing of it can be continued, and everything it wrote a fresh start writes again from the same config and
    seed — so it starts again, in its own folder, as if it had never run: what the stopped process logged
    (metrics.jsonl, results.csv, TensorBoard events) and checkpointed (best, epoch copies) goes first, so no step
    is logged twice. A folder with ``last`` or ``summary.json`` but no resume point lost it some other way (deleted by
    hand?): that is refused, and nothing is touched.
    """
    done = [name for name in ("checkpoints/last.json", "summary.json") if (folder / name).exists()]
    if done:
        raise CheckpointError(f"{folder} has {done[0]} but no checkpoints/resume.safetensors, so it cannot continue "
                              "exactly; start a new run (--init-from RUN starts from its weights)")
    if main:
        stale = [folder / "metrics.jsonl", folder / "results.csv", *folder.glob("events.out.tfevents.*"),
                 *(p for p in (folder / "checkpoints").glob("*") if _EARLY_CHECKPOINT.fullmatch(p.name))]
        for path in stale:
            path.unlink(missing_ok=True)
        remove_stale_temps(folder)  # what the killed process was writing
        print(f"resuming {folder}: it stopped before its first resume point, so it starts again from the beginning "
              "(same config and seed)", file=sys.stderr, flush=True)
