"""Atomic file writes: a crash or a full disk never leaves a half-written file behind.

Every file visiontrain writes that a later command reads (checkpoints, sidecars, configs, summaries,
reports) goes through :func:`atomic_write_bytes`: temp file in the same folder, flush, fsync, rename.
Files written by someone else's writer (the exporters) go to a :func:`temp_beside` path and are put in place by
:func:`commit`; files that belong together (a report, weights and their sidecar) by :func:`replace_together`.
A temp's name carries the writer's process id (``.<name>.<pid>-<random>.tmp``), so :func:`remove_dead_temps` can
clean what a killed process left without touching a running writer's file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from visiontrain.errors import VisiontrainError
from visiontrain.faults import fault_point

TEMP_SUFFIX = ".tmp"
_UMASK = os.umask(0)  # read once: there is no way to read the umask without setting it
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    tmp = temp_beside(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _cannot_write(Path(path), exc) from exc
        raise
    return _rename(tmp, Path(path))


def temp_beside(path: str | Path) -> Path:
    """A new, empty temp file in ``path``'s folder (writers that want a file name, such as the exporters, put it
    in place with :func:`commit`). Its name is one :func:`remove_stale_temps` and :func:`remove_dead_temps` know."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode a plain open() would
    return Path(tmp)


def commit(tmp: str | Path, path: str | Path) -> Path:
    """Make the finished temp ``tmp`` the file ``path`` in one rename (fsynced first, folder after)."""
    tmp, path = Path(tmp), Path(path)
    try:
        _fsync_file(tmp)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _cannot_write(path, exc) from exc
    return _rename(tmp, path)


def _rename(tmp: Path, path: Path) -> Path:
    try:
        fault_point("before-rename", path.name)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _cannot_write(path, exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _cannot_write(path: Path, exc: OSError) -> VisiontrainError:
    return VisiontrainError(f"cannot write {path}: {exc.strerror or exc}; the previous file, if any, is intact — "
                            "free disk space or fix the folder's permissions")


def replace_together(files: dict[Path, bytes], remove: Iterable[Path] = ()) -> None:
    """Write files that belong together so that a reader never takes a mix of old and new for a whole set.

    The LAST file of ``files`` is the set's mark (a report's ``report.json``, a sidecar): every file goes to a
    fsynced temp first, then the old mark is deleted, the others (and ``remove``) replaced, and the new mark
    renamed in last. Killed at any moment, a folder holds the old set whole, or the new set whole, or a set
    without its mark — which readers treat as unfinished and the next run rewrites.
    """
    paths = list(files)
    temps: list[Path] = []
    try:
        for path in paths:
            temps.append(temp_beside(path))
            with open(temps[-1], "wb") as fh:
                fh.write(files[path])
                fh.flush()
                os.fsync(fh.fileno())
        paths[-1].unlink(missing_ok=True)  # from here until the last rename the set has no mark: unfinished
        for old in remove:
            old.unlink(missing_ok=True)
        for tmp, path in zip(temps, paths, strict=True):
            fault_point("before-rename", path.name)
            os.replace(tmp, path)
    except OSError as exc:
        raise VisiontrainError(f"cannot write {paths[-1]}: {exc.strerror or exc}; free disk space or fix the "
                               "folder's permissions, then run again") from exc
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # renamed ones are gone already; these are the ones an error stopped
    for folder in {path.parent for path in paths}:
        _fsync_dir(folder)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_yaml(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


# A write refused by the storage itself, not by one file's content: full disk or quota, a file-size limit, a
# read-only mount, missing permissions. Any writer can meet these (TensorBoard's thread, a log, a plot).
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


def storage_error(exc: BaseException) -> VisiontrainError | None:
    """The one-line error for an ``OSError`` of the storage (see above), or None for any other exception.

    >>> str(storage_error(OSError(errno.ENOSPC, "No space left on device", "runs/a/metrics.jsonl")))[:53]
    'cannot write runs/a/metrics.jsonl: No space left on d'
    """
    if not isinstance(exc, OSError) or exc.errno not in _STORAGE_ERRNOS:
        return None
    where = f"write {os.fsdecode(exc.filename)}" if exc.filename else "write to disk"
    return VisiontrainError(f"cannot {where}: {exc.strerror or exc}; visiontrain replaces its files atomically, so "
                            "the last good checkpoint is intact — free disk space or fix the folder's permissions, "
                            "then run again (a training continues with --resume RUN)")


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files that a killed process left behind in ``folder`` and below (never read; they only
    take disk space — a resume file's temp is as large as the whole training state); returns what was removed."""
    removed = []
    for tmp in Path(folder).rglob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


_PID_TEMP = re.compile(r"^\..+\.(\d+)-[^.]+" + re.escape(TEMP_SUFFIX) + "$")


def remove_dead_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files directly in ``folder`` whose writer is no longer running (by the pid in the name).
    Unlike :func:`remove_stale_temps` it is safe while other processes write into the same folder (two exports
    side by side), and leaves any other ``.tmp`` file alone (a user's folder); returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        match = _PID_TEMP.match(tmp.name)
        if not match or pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (ours counts: its temps may be in flight in another thread)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # another user's process: not ours to judge
    return True


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    # The rename itself must reach the disk too, or a power cut can undo it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def user_path(text: str | os.PathLike[str]) -> Path:
    """``Path(text)`` with a leading ``~`` or ``~user`` expanded as a shell does. A ``~user`` that names no user
    (a manifest row ``~0.png``, a file really called so) is kept as written: pathlib raises RuntimeError there.

    >>> str(user_path("~no-such-user-here/a.png"))
    '~no-such-user-here/a.png'
    """
    path = Path(text)
    try:
        return path.expanduser()
    except RuntimeError:
        return path
