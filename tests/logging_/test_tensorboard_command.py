"""``visiontrain tensorboard`` stops its TensorBoard child when the wrapper is stopped by a signal: a real
process tree, a real signal (it used to leave TensorBoard running, orphaned, with its port open)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serving(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.slow  # two real process start-ups (visiontrain, TensorBoard): seconds each
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from /proc")
@pytest.mark.parametrize("moment", ["starting", "serving"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_wrapper_stops_tensorboard(tmp_path: Path, signum: int, moment: str, child_pids) -> None:
    """``starting``: the signal comes the moment the child process exists, while the wrapper is still inside
    ``Popen`` (it used to be raised there, before the wrapper held the child: an orphan every time with this
    tight poll); ``serving``: TensorBoard answers on its port."""
    (tmp_path / "runs").mkdir()
    port = _free_port()
    wrapper = subprocess.Popen([sys.executable, "-m", "visiontrain", "tensorboard", "runs", "--port", str(port)],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONWARNINGS": "ignore"})
    children: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not (children := child_pids(wrapper.pid)) and wrapper.poll() is None and time.monotonic() < deadline:
            pass  # no sleep: the signal must be able to land inside the wrapper's Popen
        assert children, wrapper.communicate(timeout=10)
        if moment == "serving":
            deadline = time.monotonic() + 90
            while not _serving(port) and wrapper.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _serving(port), "TensorBoard never answered"
        wrapper.send_signal(signum)  # to the wrapper alone, as `kill` or a service manager sends it
        wrapper.wait(timeout=30)
        deadline = time.monotonic() + 5
        while _alive(children[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(children[0]), "TensorBoard outlived its wrapper"
        assert wrapper.returncode == (0 if signum == signal.SIGINT else 128 + signum), wrapper.communicate()
    finally:
        for pid in [wrapper.pid, *children, *child_pids(wrapper.pid)]:  # an orphan too (the old wrapper's)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        wrapper.communicate()
