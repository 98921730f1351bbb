"""What can stop a DataLoader besides one bad file: a worker process killed, or an item that never returns.

A worker killed from outside (the kernel's OOM killer, most often) makes torch raise a ``RuntimeError``
about a worker that "exited unexpectedly"; :func:`loader_errors` turns it into one line pointing at
``--workers 0``. An item that hangs (a stalled network mount, a user Dataset waiting forever) is cut by
:func:`item_deadline` — a ``SIGALRM`` timer around each read, in whichever process reads it — and becomes a
bad-image error naming the file, under the ``bad_images`` policy like any other unreadable file.

Limits: the timer is a signal, so it fires only in a process's main thread (always true in DataLoader
workers; with ``workers=0`` only when training runs in the main thread), and it interrupts Python code
and blocking system calls but not a C extension that never returns to the interpreter. For workers,
DataLoader's own ``timeout`` is the backstop for that case (:func:`batch_timeout`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from visiontrain.errors import DataError

DEFAULT_ITEM_TIMEOUT_S = 300.0  # seconds one file/item may take to read; a decode takes milliseconds


class _Expired(BaseException):
    """Raised by the timer; a BaseException so that a user Dataset's ``except Exception`` cannot swallow it."""


@contextmanager
def item_deadline(seconds: float, name: str) -> Iterator[None]:
    """Raise :class:`DataError` naming ``name`` if the block runs longer than ``seconds`` (0: no limit).

    >>> with item_deadline(5.0, "cat.jpg"):
    ...     pass
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expired(_signum: int, _frame: object) -> None:
        raise _Expired

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Expired:
        raise DataError(f"{name}: reading it took longer than {seconds:g} s (data.item_timeout_s), a hung file "
                        "system or Dataset?; check it, or raise the limit with --set data.item_timeout_s=N "
                        "(0 = wait forever)") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def batch_timeout(item_timeout_s: float, batch_size: int, workers: int) -> float:
    """DataLoader's ``timeout`` (seconds to wait for one batch from the workers; 0 = forever): long enough
    for a whole batch of items each just under the per-item limit, so it only fires where that limit cannot."""
    if workers == 0 or item_timeout_s <= 0:
        return 0.0
    return item_timeout_s * (batch_size + 1)


def worker_error(exc: BaseException) -> DataError | None:
    """The one-line error for torch's "DataLoader worker ... killed by signal / exited unexpectedly" or its
    "DataLoader timed out"; None for anything else."""
    text = str(exc) if isinstance(exc, RuntimeError) else ""
    first = text.strip().splitlines()[0][:160] if text.strip() else ""
    if "DataLoader worker" in text and ("exited unexpectedly" in text or "killed by signal" in text):
        return DataError(f"a data loading worker process died ({first}); the system may have run out of memory — "
                         "rerun with --workers 0 (or fewer --workers, a smaller --batch-size)")
    if "DataLoader timed out" in text:
        return DataError(f"no batch arrived from the data loading workers in time ({first}): a worker is stuck "
                         "where the per-item timeout cannot interrupt it; rerun with --workers 0 to see which file")
    return None


@contextmanager
def loader_errors(transfer: bool = True) -> Iterator[None]:
    """Turn torch's errors about dead or silent DataLoader workers into one-line :class:`DataError` s.

    torch reports a dead worker from its SIGCHLD handler, so the error can surface anywhere in the main thread —
    around a whole training too, not only the loop over batches. ``transfer``: the block reads batches, where a
    worker dying mid-transfer shows up as a reset connection or an early end of the stream.
    """
    try:
        yield
    except RuntimeError as exc:
        problem = worker_error(exc)
        if problem is None:
            raise
        raise problem from None
    except (ConnectionError, EOFError) as exc:
        if not transfer:
            raise
        raise DataError(f"a data loading worker process died while sending a batch ({type(exc).__name__}); the "
                        "system may have run out of memory — rerun with --workers 0 (or fewer --workers, a smaller "
                        "--batch-size)") from None
