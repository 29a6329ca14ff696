"""pyfuse3's session tasks under patches/pyfuse3-3.5.0-yield-reader-role-only-when-waiting.patch.

tests/fs/gatefs.py is mounted in a subprocess: a read of its `gate` waits in the handler until
`opener` is written, and `tasks` tells which session task served each request.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

GATEFS = Path(__file__).with_name("gatefs.py")

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
        reason="needs /dev/fuse and fusermount3 (Debian package fuse3)",
    ),
]


@pytest.fixture
def gatefs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "gatefs.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(GATEFS), str(mnt)], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"gatefs did not mount:\n{log.read_text()}")
            time.sleep(0.02)
        yield mnt
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def served_by(mnt: Path) -> dict[str, int]:
    return json.loads(read(mnt / "tasks"))


def open_the_gate_while_a_read_waits(mnt: Path) -> None:
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
