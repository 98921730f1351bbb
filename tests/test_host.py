"""threads: auto on real inputs — cgroup files written in a tmp folder, the host's own affinity and load — and
the allocator setting that stops freed memory being faulted back in at every step (a real process's faults)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from visiontrain import host
from visiontrain.config import load_config
from visiontrain.errors import ConfigError


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(("files", "proc", "want"), [
    ({"a/b/cpu.max": "150000 100000\n"}, "0::/a/b\n", 1.5),  # cgroup v2
    ({"a/b/cpu.max": "max 100000\n"}, "0::/a/b\n", None),
    ({"a/cpu.max": "50000 100000\n", "a/b/cpu.max": "400000 100000\n"}, "0::/a/b\n", 0.5),  # a parent's is tighter
    ({"cpu.max": "200000 100000\n"}, "0::/\n", 2.0),  # inside a container: the namespace's root
    ({"unified/a/cpu.max": "300000 100000\n"}, "0::/a\n", 3.0),  # hybrid host
    ({"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "250000\n", "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"},
     "4:cpu,cpuacct:/docker/x\n0::/\n", 2.5),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "1:cpu:/\n", None),  # v1, no quota
    ({}, "0::/a\n", None),  # no cgroup files at all
    ({"a/cpu.max": "garbage\n"}, "0::/a\n", None),
])
def test_cgroup_cpu_limit_reads_v1_and_v2_files(tmp_path: Path, files: dict[str, str], proc: str,
                                                want: float | None) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    for rel, text in files.items():
        _write(root / rel, text)
    _write(tmp_path / "self_cgroup", proc)
    assert host.cgroup_cpu_limit(root, tmp_path / "self_cgroup") == want


def test_no_proc_cgroup_file_means_no_quota(tmp_path: Path) -> None:
    assert host.cgroup_cpu_limit(tmp_path, tmp_path / "missing") is None


@pytest.mark.parametrize(("affinity", "quota", "load", "own", "threads", "shared"), [
    (8, None, 0.3, 0.0, 8, False),  # idle: every core
    (8, None, 3.2, 1.0, 6, True),  # others keep 2.2 cores busy
    (8, 2.5, 0.0, 0.0, 2, True),  # a quota below the cores we may run on
    (2, None, 4.6, 0.6, 1, True),  # two cores, four busy processes: one thread
    (2, None, 1.0, 1.0, 2, False),  # the load is our own
    (4, 0.5, 0.0, 0.0, 1, True),  # a quota under one CPU still gets one thread
    (16, None, None, 0.0, 16, False),  # no load average (not Linux)
    (16, None, 0.0, 0.0, 8, False),  # at most torch's own default (cap 8: its physical cores)
])
def test_choose_threads(affinity: int, quota: float | None, load: float | None, own: float, threads: int,
                        shared: bool) -> None:
    cap = 8 if (affinity, load) == (16, 0.0) else None
    choice = host.choose_threads(affinity=affinity, quota=quota, load=load, own=own, cap=cap)
    assert (choice.threads, choice.shared) == (threads, shared)
    assert f"{choice.cores} usable core" in choice.reason


@pytest.mark.parametrize("load", [0.2, 1.5, 4.6, 40.0])
def test_deterministic_runs_take_every_usable_core_whatever_the_load(load: float) -> None:
    """The count splits CPU reductions: a resumed --deterministic run on a busier host must use the same one."""
    choice = host.choose_threads(affinity=4, quota=3.0, load=load, own=0.0, deterministic=True)
    assert choice.threads == 3 and "--deterministic" in choice.reason
    assert choice.shared  # the quota (3 of 4 cores) still makes OpenMP wait passively: no effect on the numbers
    following = host.choose_threads(affinity=4, quota=3.0, load=load, own=0.0).threads
    assert following == (3 if load < 1 else 2 if load < 2 else 1)  # without --deterministic the load decides


def test_auto_threads_reads_this_host(tmp_path: Path) -> None:
    _write(tmp_path / "loadavg", "0.00 0.00 0.00 1/100 1\n")
    _write(tmp_path / "cgroup/cpu.max", "100000 100000\n")
    _write(tmp_path / "self_cgroup", "0::/\n")
    choice = host.auto_threads(tmp_path / "cgroup", tmp_path / "self_cgroup", tmp_path / "loadavg")
    assert choice.cores == 1 and choice.threads == 1  # the quota of one CPU, whatever this machine has
    assert host.affinity_cores() == len(os.sched_getaffinity(0))
    _write(tmp_path / "loadavg", "99.5 0.00 0.00 1/100 1\n")
    busy = host.auto_threads(tmp_path / "none", tmp_path / "none", tmp_path / "loadavg")
    assert busy.threads == 1 and busy.shared and "others keep" in busy.reason


def test_own_load_grows_with_the_process_age() -> None:
    young, old = host.own_load(cpu_s=5, age_s=5), host.own_load(cpu_s=600, age_s=600)
    assert 0 < young < 0.1 and 0.99 < old <= 1.0
    assert host.own_load(cpu_s=1, age_s=0) == 0.0


def test_wait_passively_only_on_a_shared_host_and_never_over_the_users_setting() -> None:
    shared = host.choose_threads(affinity=2, quota=None, load=5.0, own=0.0)
    idle = host.choose_threads(affinity=2, quota=None, load=0.0, own=0.0)
    assert host.wait_passively(idle, env := {}) == "" and env == {}
    assert host.wait_passively(shared, env := {"OMP_WAIT_POLICY": "ACTIVE"}) == "kept OMP_WAIT_POLICY=ACTIVE"
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}
    assert host.wait_passively(shared, env := {}) == "too late" and env == {}  # this process has torch loaded


def test_the_cli_decides_the_wait_policy_before_torch_loads() -> None:
    code = textwrap.dedent("""
        import os, sys
        from visiontrain import host
        from visiontrain.cli.train import wait_before_torch
        wait_before_torch("auto")
        print(os.environ.get("OMP_WAIT_POLICY"), host.auto_threads().shared, "torch" in sys.modules)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    policy, shared, torch_loaded = out.stdout.split()
    assert torch_loaded == "False", out.stderr
    assert (policy == "PASSIVE") == (shared == "True")  # passive on a shared host (this one, now?), else untouched


@pytest.mark.slow
def test_a_cli_run_with_a_data_dir_waits_passively_where_the_host_is_shared(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    argv = ["train", "--data", "synthetic", "--data-arg", "train=32", "--data-arg", "val=8", "--data-arg", "test=8",
            "--epochs", "1", "--plots", "off", "--data-dir", str(tmp_path / "cache"), "--out", str(tmp_path)]
    result = subprocess.run([sys.executable, "-m", "visiontrain", *argv], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    header = result.stderr.splitlines()[0]
    assert "CPU thread" in header and "(auto: " in header
    assert "before importing torch" not in header  # --data-dir once loaded torch before the policy was set
    assert ("others keep" in header) <= ("OpenMP waits passively" in header)


CHURN = textwrap.dedent("""
    import resource, sys
    from visiontrain import host
    kept = host.keep_freed_memory() if sys.argv[1] == "keep" else None
    def step():  # three 12 MB blocks, as a training step's activations, freed at the step's end
        return [bytearray(12 * 2**20) for _ in range(3)]
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        step()
    print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _without_malloc_settings() -> dict[str, str]:
    """This environment less glibc's malloc settings (which keep visiontrain's own away)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_keep_freed_memory_stops_the_faults_of_every_step() -> None:
    faults, kept = {}, {}
    env = _without_malloc_settings()
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        kept[mode], faults[mode] = out.stdout.split()
    assert kept["keep"] == "True"
    assert int(faults["default"]) > 8 * 3000  # ~9,000 pages a step handed back and faulted in again
    assert int(faults["keep"]) < int(faults["default"]) / 10
    user = subprocess.run([sys.executable, "-c", CHURN, "keep"], capture_output=True, text=True, timeout=60,
                          env={**env, "MALLOC_TRIM_THRESHOLD_": str(2**20)})
    assert user.stdout.split()[0] == "False"  # the user's own setting is kept


# In a real DataLoader worker forked from a process that called keep_freed_memory (as training does): how much
# of 24 MB blocks, allocated, touched and freed four times, the worker still holds afterwards.
WORKER_HEAP = textwrap.dedent("""
    import sys, torch
    from torch.utils.data import DataLoader, Dataset
    from visiontrain import host

    def rss_kb():
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))

    class Blocks(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            start = rss_kb()
            for _ in range(4):
                block = torch.ones(6 * 2**20)  # 24 MB of float32, every page written
                del block
            return rss_kb() - start

    host.keep_freed_memory()
    init = host.bound_worker_heap if sys.argv[1] == "bound" else None
    print(int(next(iter(DataLoader(Blocks(), batch_size=None, num_workers=1, worker_init_fn=init)))))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_a_loader_worker_hands_freed_blocks_back() -> None:
    """Workers decode photo after photo: kept freed blocks fragment their heaps (~25 → ~260 MB each over 20,000
    photos, docs/benchmarks.md "Sharded streaming"); bound_worker_heap gives multi-MB blocks back."""
    env = _without_malloc_settings()
    held = {}
    for mode in ("inherited", "bound"):
        out = subprocess.run([sys.executable, "-c", WORKER_HEAP, mode], capture_output=True, text=True, env=env,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        held[mode] = int(out.stdout.split()[-1])
    assert held["inherited"] > 24 * 1024  # KiB: with the training process's thresholds (measured: ~100 MiB)
    assert held["bound"] < 8 * 1024  # (~3 MiB: the first calls of the worker itself)


def test_threads_key_default_auto_and_its_values() -> None:
    assert load_config({}, where="t").train.threads == "auto"
    for value in (3, "auto", "torch", None):
        assert load_config({"threads": value}, where="t").train.threads == value
    for bad in (0, "many"):
        with pytest.raises(ConfigError, match="threads"):
            load_config({"threads": bad}, where="t")


def test_a_run_records_the_threads_it_chose(synthetic_run) -> None:
    count, _, why = synthetic_run.summary["threads"].partition(" ")
    assert int(count) >= 1 and why.startswith("(auto: ")


def test_an_explicit_thread_count_is_used(tmp_path: Path) -> None:
    import visiontrain

    before = torch.get_num_threads()
    try:
        run = visiontrain.train({"data": "synthetic", "data_args": {"train": 32, "val": 8, "test": 8}, "epochs": 1,
                                 "plots": False, "threads": 1, "out": str(tmp_path)}, quiet=True)
        assert run.summary["threads"] == "1" and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
