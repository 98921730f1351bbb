"""The host this process trains on: how many CPU cores it may really use, and its C allocator.

Plain Python without torch, so that the command line can decide before torch (and its OpenMP runtime) loads.

``threads: auto`` (:func:`choose_threads`) takes the cores this process may run on — its CPU affinity, capped by a
cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``) — less what other processes keep busy (the 1-minute
load average minus this process's own part of it). On a machine others share, torch's default (one thread per
core, OpenMP threads that spin while waiting for a sibling) makes every op wait for a thread the kernel has
descheduled: a ``--recipe fast`` run took 58–390 s with 2 threads beside other jobs, 16–52 s with one.

>>> choose_threads(affinity=8, quota=None, load=0.4, own=0.0).threads
8
>>> choose_threads(affinity=8, quota=2.5, load=0.0, own=0.0).threads  # a container allowed 2.5 CPUs
2
>>> choose_threads(affinity=2, quota=None, load=4.6, own=0.6).threads  # two cores, four busy processes
1
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_LOADAVG = Path("/proc/loadavg")
LOAD_WINDOW_S = 60.0  # the kernel's 1-minute load average is an exponential average over this time constant
BUSY = 0.5  # other processes keeping this much of a core busy make the host "shared" (OpenMP waits passively)


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count ``threads: auto`` picked, and why (shown in the run's header line)."""

    threads: int
    cores: int  # the cores this process may use: affinity, capped by a cgroup quota
    others: float  # cores other processes keep busy (load average less our own part)
    shared: bool  # others are busy, or a quota caps us below the cores we may run on: wait passively
    deterministic: bool = False  # the count ignored the load (--deterministic)

    @property
    def reason(self) -> str:
        busy = f"others keep {self.others:.1f} busy" if self.others >= BUSY else "idle"
        if self.deterministic:
            busy += "; --deterministic: every usable core, whatever the load"
        return f"auto: {self.cores} usable core{'s' if self.cores != 1 else ''}, {busy}"


def affinity_cores() -> int:
    """Cores the scheduler lets this process run on (``taskset``, a container's cpuset), else the CPU count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs a cgroup quota allows this process: the tightest of cgroup v2 ``cpu.max`` and v1
    ``cpu.cfs_quota_us / cpu.cfs_period_us`` along its cgroup's path (a parent's limit holds for its children
    too); None when there is no quota or no cgroup to read. ``root`` and ``proc_cgroup`` say where to read."""
    try:
        lines = proc_cgroup.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    found: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2 (unified); on a hybrid host it is mounted under unified/
            for base in (root, root / "unified"):
                found += [q for d in _up_to(base, path) if (q := _v2_quota(d / "cpu.max")) is not None]
        elif "cpu" in controllers.split(","):
            for base in dict.fromkeys((root / controllers, root / "cpu")):
                found += [q for d in _up_to(base, path) if (q := _v1_quota(d)) is not None]
    return min(found) if found else None


def _up_to(base: Path, path: str) -> list[Path]:
    """``base/a/b``, ``base/a``, ``base``: the cgroup's own folder and its ancestors (inside a container the
    path is ``/`` and ``base`` is the container's own cgroup)."""
    parts = [p for p in path.strip("/").split("/") if p and p != ".."]
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_quota(path: Path) -> float | None:
    try:
        quota, period = path.read_text(encoding="utf-8").split()[:2]
        return None if quota == "max" else max(float(quota) / float(period), 0.01)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text(encoding="utf-8"))
        period = int((folder / "cpu.cfs_period_us").read_text(encoding="utf-8"))
        return None if quota <= 0 or period <= 0 else max(quota / period, 0.01)
    except (OSError, ValueError):
        return None


def load_average(path: Path = PROC_LOADAVG) -> float | None:
    """The 1-minute load average (runnable and uninterruptible tasks), or None where there is none."""
    try:
        return float(path.read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None


def own_load(cpu_s: float | None = None, age_s: float | None = None) -> float:
    """This process's own part of the 1-minute load average: its mean CPU use since it started (all threads),
    weighted by how much of the average's window it has been alive (a process 5 s old has added ~8% of its use).
    """
    cpu_s = time.process_time() if cpu_s is None else cpu_s
    age_s = _process_age() if age_s is None else age_s
    if not age_s or age_s <= 0:
        return 0.0
    return min(cpu_s / age_s, float(affinity_cores())) * (1 - math.exp(-age_s / LOAD_WINDOW_S))


def _process_age() -> float | None:
    try:
        start_ticks = int(Path("/proc/self/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text(encoding="utf-8").split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def choose_threads(*, affinity: int, quota: float | None, load: float | None, own: float,
                   cap: int | None = None, deterministic: bool = False) -> ThreadChoice:
    """Threads for torch: the usable cores (affinity, capped by the quota and by ``cap``, at least 1) less the
    cores other processes keep busy, rounded, at least 1. On a 2-core host beside two busy processes that is 1:
    two threads would each get ~2/3 of a core and wait at every op for the other; one thread gets its fair share
    alone. ``cap``: torch's own default (its physical cores), so that an idle machine runs as it did before.

    ``deterministic`` (``--deterministic``): all the usable cores whatever the load. The thread count splits CPU
    reductions, so a count that followed the load would make a run resumed on a busier machine compute otherwise
    than the uninterrupted one; the cores a process may use do not change between the two.

    >>> choose_threads(affinity=2, quota=None, load=3.0, own=0.0, deterministic=True).threads
    2
    """
    cores = max(1, min(affinity, math.floor(quota) if quota is not None else affinity, cap or affinity))
    others = max(0.0, (load or 0.0) - own)
    threads = cores if deterministic else max(1, min(cores, math.floor(cores - others + 0.5)))
    shared = others >= BUSY or (quota is not None and quota < affinity)
    return ThreadChoice(threads, cores, others, shared, deterministic)


def auto_threads(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP, loadavg: Path = PROC_LOADAVG,
                 cap: int | None = None, deterministic: bool = False) -> ThreadChoice:
    """:func:`choose_threads` for this process on this host, now."""
    return choose_threads(affinity=affinity_cores(), quota=cgroup_cpu_limit(root, proc_cgroup),
                          load=load_average(loadavg), own=own_load(), cap=cap, deterministic=deterministic)


def wait_passively(choice: ThreadChoice, environ: os._Environ | dict[str, str] = os.environ) -> str:
    """On a shared host, OpenMP threads that spin while waiting keep a core busy that a sibling thread (or
    another process) needs: set ``OMP_WAIT_POLICY=PASSIVE`` (they sleep at once). OpenMP reads it once, when
    torch loads it, so this only takes effect when torch is not imported yet (the command line calls it first;
    the Python API cannot after ``import torch``). A user's own ``OMP_WAIT_POLICY`` is kept.

    Returns what happened, for the run's header: ``passive``, ``kept OMP_WAIT_POLICY=…``, ``too late`` or ``""``
    (an idle host: OpenMP's default, a short spin, is quickest there)."""
    if "OMP_WAIT_POLICY" in environ:
        return f"kept OMP_WAIT_POLICY={environ['OMP_WAIT_POLICY']}"
    if not choice.shared:
        return ""
    if "torch" in sys.modules:
        return "too late"
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "passive"


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Blocks up to 256 MB stay in the heap; a glibc that refuses that much (older ones cap it at HEAP_MAX_SIZE / 2,
# 32 MB on 64-bit) gets 32 MB. Never the trim threshold alone: setting it turns off glibc's dynamic mmap threshold,
# so every block above 128 KB is mmapped and unmapped each time (6x the page faults of the defaults, measured).
MMAP_THRESHOLDS = (256 * 2**20, 32 * 2**20)
TRIM_THRESHOLD = 1 * 2**30
WORKER_MMAP_THRESHOLD, WORKER_TRIM_THRESHOLD = 4 * 2**20, 64 * 2**20  # see bound_worker_heap
_USER_MALLOC = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_kept = False


def keep_freed_memory() -> bool:
    """Stop glibc from handing freed memory back to the kernel and faulting it in again at every step.

    A training step allocates and frees the same large tensors each time (seed_net's activations at batch 64 are
    5–11 MB each). glibc serves blocks above its mmap threshold with a fresh mmap and gives them back with munmap,
    and trims the top of the heap once more than ``M_TRIM_THRESHOLD`` is free there: either way the next step
    faults every page in again (zero-filled by the kernel). Measured on one epoch of seed_net (docs/benchmarks.md,
    "Training-loop overhead"): ~5 M minor page faults and 13–17 s of system time in the loop, ~0 with these
    settings. Fixing both thresholds keeps blocks up to 256 MB in the heap and keeps up to 1 GiB of freed heap for
    reuse; the process's memory stays at its peak instead of falling between steps, which a training process
    reaches again at the next step anyway. Linux with glibc only, and not where the environment sets glibc's
    malloc itself; once per process; True when applied. (DataLoader workers forked from it get
    :func:`bound_worker_heap` instead.)
    """
    global _kept
    if not _kept:
        _kept = _set_malloc(MMAP_THRESHOLDS, TRIM_THRESHOLD)
    return _kept


def bound_worker_heap(_worker_id: int = 0) -> bool:
    """A DataLoader worker's ``worker_init_fn``: a heap that stays the size of one photo's work.

    A worker decodes and crops one photo after another. With glibc's default (dynamic) mmap threshold, the first
    multi-megabyte block it frees raises the threshold, and from then on blocks of 4–32 MB come from the heap,
    where they fragment it: each worker's own memory grew from ~25 MB to ~260 MB over 20,000 photos (the more
    photos an epoch has, the more memory — measured with the shards and the folder source alike). A worker forked
    from a training process inherits :func:`keep_freed_memory`'s 256 MB / 1 GiB, which lets it grow the same way.
    Blocks above 4 MB mmapped and given back, and up to 64 MB of free heap kept for reuse, hold a worker at
    ~30 MB at the same speed (a fixed threshold with glibc's 128 KB trim threshold would trim the heap at every
    photo: half the images per second, measured). Linux with glibc only, not where the environment sets glibc's
    malloc; True when applied."""
    return _set_malloc((WORKER_MMAP_THRESHOLD,), WORKER_TRIM_THRESHOLD)


def _set_malloc(mmap_thresholds: tuple[int, ...], trim_threshold: int) -> bool:
    """Fix glibc's mmap threshold (the first of ``mmap_thresholds`` it takes) and its trim threshold."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(k in os.environ for k in _USER_MALLOC) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False  # the user's own allocator settings win
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not any(libc.mallopt(_M_MMAP_THRESHOLD, size) == 1 for size in mmap_thresholds):
            return False
        return libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
    except (OSError, AttributeError):
        return False


__all__ = ["ThreadChoice", "affinity_cores", "auto_threads", "bound_worker_heap", "cgroup_cpu_limit",
           "choose_threads", "keep_freed_memory", "load_average", "own_load", "wait_passively"]
