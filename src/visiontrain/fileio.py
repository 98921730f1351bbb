"""Atomic file writes: a crash or a full disk never leaves a half-written file behind.

Every file visiontrain writes that a later command reads (checkpoints, sidecars, configs, summaries,
reports) goes through :func:`atomic_write_bytes`: temp file in the same folder, flush, fsync, rename.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the file the mode a plain open() would
                os.fchmod(fh.fileno(), 0o666 & ~_UMASK)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        fault_point("before-rename", path.name)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise VisiontrainError(f"cannot write {path}: {exc.strerror or exc}; the previous file, if any, "
                               "is intact — free disk space or fix the folder's permissions") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


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
