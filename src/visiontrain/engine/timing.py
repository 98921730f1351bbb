"""Where an epoch's time goes: waiting for the next batch vs everything else (the compute).

:class:`DataTimer` wraps the training loader and adds up the seconds spent inside its ``next()`` — two
``time.perf_counter()`` calls per batch, no device synchronisation. What is left of the epoch is ``compute``:
the forward, backward and optimizer step plus the per-step callbacks. On a CPU the split is exact. On a GPU
kernels run asynchronously: the host may sit in ``next()`` while queued kernels still run, so the wait counts
time the device was busy too, and compute shows up where the host next synchronises (a logged loss, the end
of the epoch). Read the GPU split as an upper bound on starvation.

:class:`LoaderBound` prints one line when an epoch spent most of its time waiting for data, with the flag
that helps for the loader in use.

>>> timer = DataTimer(range(3))
>>> [x for x in timer], timer.waited >= 0.0
([0, 1, 2], True)
>>> sorted(timer.split(2.0))
['compute_s', 'data_wait_frac', 'data_wait_s']
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, TextIO

from visiontrain.engine.callbacks import Callback
from visiontrain.engine.state import TrainState

LOADER_BOUND_FRAC = 0.5  # an epoch waiting for data longer than this fraction of its time is loader-bound
LOADER_BOUND_MIN_S = 0.5  # ...and for at least this long: a short wait is not worth a line
# Keys that hold wall-clock measurements (``train/epoch_time_s``, ``img_per_s``, ``data_wait_frac``, summary's
# ``time`` and ``wall_time_s``): they differ between two runs of the same seed, every other number does not.
TIMING_SUFFIXES = ("time", "time_s", "cpu_s", "per_s", "wait_s", "compute_s", "wait_frac")


def is_timing(key: str) -> bool:
    """Whether a metrics/summary key is a wall-clock measurement (left out when comparing two runs)."""
    return key.endswith(TIMING_SUFFIXES)


class DataTimer:
    """Iterate ``iterable``, counting the seconds spent getting each item (including the last, empty call)."""

    def __init__(self, iterable: Iterable) -> None:
        self.iterable, self.waited = iterable, 0.0

    def __iter__(self) -> Iterator:
        clock = time.perf_counter
        start = clock()
        iterator = iter(self.iterable)  # starting DataLoader workers is waiting too
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                self.waited += clock() - start
                return
            self.waited += clock() - start
            yield item
            start = clock()

    def split(self, elapsed: float) -> dict[str, float]:
        """``{data_wait_s, compute_s, data_wait_frac}`` for an epoch that took ``elapsed`` seconds."""
        wait = min(self.waited, elapsed)
        return {"data_wait_s": wait, "compute_s": elapsed - wait,
                "data_wait_frac": wait / elapsed if elapsed > 0 else 0.0}


def _hint(state: TrainState, loader: Any) -> str:
    """The advice that fits the loader: workers for a DataLoader, memory for files, else the augmentation."""
    data = state.config.data
    workers = getattr(loader, "workers", None)
    if workers is None:  # in-memory tensors: the wait is the batched augmentation on the main thread
        return "the in-memory loader is augmenting on the main thread; try a lighter --augment, or a GPU"
    hints = [f"--workers {max(4, 2 * workers)}"] if workers < 8 else []
    hints += ["--cache memory (decode the images once)"] if data.cache != "memory" else []
    return "try " + " or ".join(hints) if hints else "the files decode slower than the model trains"


class LoaderBound(Callback):
    """One line on ``stream`` the first time an epoch is loader-bound (the metrics record every epoch)."""

    order = "observe"

    def __init__(self, loader: Any, stream: TextIO | None = None, frac: float = LOADER_BOUND_FRAC,
                 min_s: float = LOADER_BOUND_MIN_S) -> None:
        self.loader, self.stream, self.frac, self.min_s = loader, stream, frac, min_s
        self.warned = False

    def on_epoch_end(self, state: TrainState) -> None:
        m = state.epoch_metrics
        waited, frac = m.get("train/data_wait_s", 0.0), m.get("train/data_wait_frac", 0.0)
        if self.warned or frac < self.frac or waited < self.min_s:
            return
        self.warned = True
        print(f"loader-bound: {100 * frac:.0f}% of epoch {state.epoch} ({waited:.1f} s) waiting for data; "
              f"{_hint(state, self.loader)}", file=self.stream or sys.stderr, flush=True)


class TimeTotals(Callback):
    """Training seconds summed over the run's epochs (``train_s``, ``data_wait_s``, ``compute_s``; ``train_cpu_s`` is
    the CPU-seconds of this process over the same span — user + system, all its threads, so a busy machine's
    stolen time is not in it) for
    ``summary.json``'s ``time``; kept across a resume. Evaluation, start-up and checkpoint writing between
    epochs are not in ``train_s``."""

    order = "observe"

    KEYS: ClassVar[dict[str, str]] = {"train_s": "train/epoch_time_s", "train_cpu_s": "train/epoch_cpu_s",
                                      "data_wait_s": "train/data_wait_s", "compute_s": "train/compute_s"}

    def __init__(self) -> None:
        self.totals: dict[str, float] = dict.fromkeys(self.KEYS, 0.0)

    def on_epoch_end(self, state: TrainState) -> None:
        m = state.epoch_metrics
        for total, key in self.KEYS.items():
            self.totals[total] += float(m.get(key, 0.0))

    def summary(self) -> dict[str, float]:
        out = {k: round(v, 4) for k, v in self.totals.items()}
        out["data_wait_frac"] = round(self.totals["data_wait_s"] / self.totals["train_s"], 4) if out["train_s"] else 0.0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"totals": dict(self.totals)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.totals.update({k: float(v) for k, v in state.get("totals", {}).items() if k in self.totals})
