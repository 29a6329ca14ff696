"""pyfuse3's session loop under patches/pyfuse3-3.5.0-yield-reader-role-only-when-waiting.patch
and patches/pyfuse3-3.5.0-zz-poll-before-sleeping.patch.

tests/fs/gatefs.py is mounted in a subprocess, polling for requests or not: a read of its
`gate` waits in the handler until `opener` is written, and `tasks` tells which session task
served each request and how often a background task has run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mounting import gatefs_mounted

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
        reason="needs /dev/fuse and fusermount3 (Debian package fuse3)",
    ),
]


@dataclass
class Gatefs:
    path: Path
    pid: int

    def __truediv__(self, name: str) -> Path:
        return self.path / name


@pytest.fixture(params=[0, 100], ids=["sleeping", "polling"])
def gatefs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gatefs]:
    log = tmp_path / "gatefs.log"
    with gatefs_mounted(tmp_path / "mnt", str(request.param), output=log) as proc:
        if proc.poll() is not None:
            pytest.fail(f"gatefs exited:\n{log.read_text()}")
        yield Gatefs(tmp_path / "mnt", proc.pid)
    assert "Traceback" not in log.read_text(), log.read_text()


def read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def report(mnt: Gatefs) -> dict:
    return json.loads(read(mnt / "tasks"))


def served_by(mnt: Gatefs) -> dict[str, int]:
    return report(mnt)["served"]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_the_gate_while_a_read_waits(mnt: Gatefs) -> None:
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(read(mnt / "gate")), daemon=True)
    reader.start()
    time.sleep(0.2)
    assert reader.is_alive(), "the gate's read did not wait"
    # Served only if the waiting handler's task gave up reading /dev/fuse to another task.
    write(mnt / "opener", b"x")
    reader.join(10)
    assert result == [b"open"]


def test_a_waiting_handler_lets_other_requests_be_served(gatefs):
    write(gatefs / "tasks", b"reset")
    open_the_gate_while_a_read_waits(gatefs)
    assert len(served_by(gatefs)) >= 2  # the write was served by another task


def test_handlers_that_do_not_wait_are_served_by_one_task(gatefs):
    open_the_gate_while_a_read_waits(gatefs)  # there are now two session tasks
    write(gatefs / "tasks", b"reset")
    for _ in range(50):
        assert read(gatefs / "opener") == b""
        assert not os.path.exists(gatefs / "missing")  # a handler that raises (ENOENT)
    counts = served_by(gatefs)
    # Unpatched, each request's reader hands /dev/fuse to the next task: the two alternate.
    assert len(counts) == 1, counts
    assert sum(counts.values()) >= 250  # lookup, open, read, release; lookup of missing


@pytest.mark.parametrize("gatefs", [100], ids=["polling"], indirect=True)
def test_requests_found_by_polling_leave_other_tasks_running(gatefs):
    """Polling must not starve the event loop. (Here dd leaves gaps long enough that the
    loop also passes through the scheduler without the patch's 1 ms cap.)"""
    ticks = report(gatefs)["ticks"]
    # Three dd keep requests queued: polling finds one after every reply.
    started = time.monotonic()
    readers = [subprocess.Popen(["dd", f"if={gatefs / 'zeros'}", "of=/dev/null", "bs=4096"],
                                stderr=subprocess.DEVNULL) for _ in range(3)]
    assert [reader.wait() for reader in readers] == [0, 0, 0]
    took = time.monotonic() - started
    ticked = report(gatefs)["ticks"] - ticks
    # The background task wakes every 2 ms; polling may delay it by 1 ms at most.
    assert ticked >= took / 0.003 * 0.5


@pytest.mark.parametrize("gatefs", [100], ids=["polling"], indirect=True)
def test_an_idle_mount_does_not_poll(gatefs):
    for _ in range(300):
        assert read(gatefs / "opener") == b""
    before = cpu_seconds(gatefs.pid)
    time.sleep(1)
    # What is left is the background task's 500 wake-ups, not a busy loop.
    assert cpu_seconds(gatefs.pid) - before < 0.2
