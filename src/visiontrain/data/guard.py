"""What can stop a DataLoader besides one bad file: a worker process killed, or an item that never returns.

A worker killed from outside (the kernel's OOM killer, most often) makes torch raise a ``RuntimeError``
about a worker that "exited unexpectedly"; :func:`loader_errors` turns it into one line pointing at
``--workers 0``. An item that hangs (a stalled network mount, a user Dataset waiting forever) is cut by
:func:`item_deadline` — a ``SIGALRM`` timer around each read, in whichever process reads it — and becomes a
bad-image error naming the file, under the ``bad_images`` policy like any other unreadable file.

Limits: the timer is a signal, so it fires only in a process's main thread (always true in DataLoader
workers; with ``workers=0`` only when training runs in the main thread), and it interrupts Python code
and blocking system calls but not a C extension that never returns to the interpreter. DataLoader's own
``timeout`` is deliberately NOT used as a backstop: while it is set, the loader waits that long for a batch
in one call, instead of checking every 5 s whether a worker died — a killed worker would hang the run.
"""

from __future__ import annotations

import contextlib
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


def worker_error(exc: BaseException) -> DataError | None:
    """The one-line error for torch's "DataLoader worker ... killed by signal / exited unexpectedly"; None for
    anything else. A dead worker also silences torch's SIGCHLD handler, if it is installed (see
    :func:`_stop_worker_alarms`), since the error ends the run."""
    text = str(exc) if isinstance(exc, RuntimeError) else ""
    first = text.strip().splitlines()[0][:160] if text.strip() else ""
    if "DataLoader worker" in text and ("exited unexpectedly" in text or "killed by signal" in text):
        _stop_worker_alarms()
        return DataError(f"a data loading worker process died ({first}); the system may have run out of memory — "
                         "rerun with --workers 0 (or fewer --workers, a smaller --batch-size)")
    return None


@contextmanager
def loader_errors(transfer: bool = True) -> Iterator[None]:
    """Turn torch's errors about dead DataLoader workers into one-line :class:`DataError` s.

    ``transfer``: the block reads batches — there torch's asynchronous SIGCHLD reporting is switched off (see
    :func:`_no_async_worker_errors`), and a worker dying mid-transfer can also show up as a reset connection or
    an early end of the stream. Without it (around a whole training) only torch's own message is translated,
    for the case where torch's handler was installed before visiontrain could keep it out.
    """
    if transfer:
        _no_async_worker_errors()
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
        _stop_worker_alarms()
        raise DataError(f"a data loading worker process died while sending a batch ({type(exc).__name__}); the "
                        "system may have run out of memory — rerun with --workers 0 (or fewer --workers, a smaller "
                        "--batch-size)") from None


def _stop_worker_alarms() -> None:
    """torch's SIGCHLD handler raises "worker killed" again whenever any child exits — including the other
    workers being shut down while the error is printed or the interpreter exits, where it becomes a traceback.
    Once a dead worker is reported, the default handling is restored (later DataLoaders in this process still
    notice dead workers, through their own periodic checks)."""
    with contextlib.suppress(ValueError, AttributeError, OSError):  # not the main thread / no SIGCHLD here
        if getattr(signal.getsignal(signal.SIGCHLD), "__module__", "") == "torch.utils.data._utils.signal_handling":
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _no_async_worker_errors() -> None:
    """Keep torch from installing its SIGCHLD handler, which raises "worker killed" asynchronously at whatever
    line the main thread is on: inside a finalizer it is printed as a traceback and lost, and the run then
    waits for the dead worker. Without it the loader's own check, every 5 s while it waits for a batch, raises
    the same error synchronously, inside the loop over batches, where :func:`loader_errors` turns it into one
    line. (A private flag of torch: if it is ever renamed, this does nothing and torch's handler stays.)"""
    from torch.utils.data._utils import signal_handling

    if hasattr(signal_handling, "_SIGCHLD_handler_set"):
        signal_handling._SIGCHLD_handler_set = True
