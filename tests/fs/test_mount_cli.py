"""`vfsd mount` as an admin meets it: one-line errors with a non-zero exit, and daemon mode that
returns once the file system is up and goes away with `fusermount3 -u`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mounting import wait_for

pytestmark = pytest.mark.timeout(60)


def vfsd(*args: object, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfsd", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, check=False)


def daemons(store: Path) -> list[int]:
    """Pids of processes whose command line names this test's (unique) store path."""
    result = subprocess.run(["pgrep", "-f", str(store)], capture_output=True, text=True,
                            check=False)
    return [int(pid) for pid in result.stdout.split()]


def expect_one_line_error(result: subprocess.CompletedProcess, *words: str,
                          prefix: str = "vfsd: error: ") -> None:
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{result.stderr}"
    assert lines[0].startswith(prefix), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in result.stderr


@pytest.fixture
def cleanup(store_path: Path, tmp_path: Path):
    """Whatever a failing test leaves mounted or running is taken down."""
    yield
    with open("/proc/self/mounts") as f:  # os.path.ismount is False for a dead FUSE mount
        points = [line.split()[1] for line in f]
    for point in points:
        if point.startswith(str(tmp_path) + "/"):
            subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True, check=False)
    for pid in daemons(store_path):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("foreground", [True, False], ids=["foreground", "daemon"])
def test_mount_errors_are_one_line(store_path: Path, tmp_path: Path, cleanup, foreground: bool):
    mode = ["--foreground"] if foreground else []
    missing = tmp_path / "missing"
    expect_one_line_error(vfsd("mount", *mode, "--store", store_path, missing),
                          str(missing), "does not exist")

    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("x")
    expect_one_line_error(vfsd("mount", *mode, "--store", store_path, full),
                          str(full), "not empty")

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    expect_one_line_error(vfsd("mount", *mode, "--store", store_path, a_file),
                          str(a_file), "not a directory")

    empty = tmp_path / "empty"
    empty.mkdir()
    nowhere = tmp_path / "no-store"
    result = vfsd("mount", *mode, "--store", nowhere, empty)
    expect_one_line_error(result, str(nowhere))
    assert not os.path.ismount(empty)
    assert not nowhere.exists(), "mount must not create a store"
    assert daemons(store_path) == [] and daemons(nowhere) == []


@pytest.mark.parametrize("foreground", [True, False], ids=["foreground", "daemon"])
def test_store_that_fails_to_open_after_the_checks(store_path: Path, tmp_path: Path, cleanup,
                                                   foreground: bool):
    """The daemon opens the store after it forks: its failure must still reach the admin."""
    (store_path / "meta" / "data.mdb").write_bytes(os.urandom(100_000))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mode = ["--foreground"] if foreground else []
    result = vfsd("mount", *mode, "--store", store_path, mnt)
    expect_one_line_error(result, "LMDB", prefix="vfsd: ")
    assert not os.path.ismount(mnt)
    wait_for(lambda: daemons(store_path) == [], 10, "no daemon left")


def test_mount_twice_on_one_mountpoint(store_path: Path, tmp_path: Path, cleanup, mount):
    for mode in (["--foreground"], []):
        result = vfsd("mount", *mode, "--store", store_path, mount.path)
        expect_one_line_error(result, str(mount.path), "already")
    assert mount.proc.poll() is None, "the first mount died"
    (mount.path / "still-works").write_text("yes")
    assert (mount.path / "still-works").read_text() == "yes"
    assert daemons(store_path) == [mount.proc.pid]


def test_daemon_mode_returns_once_mounted_and_fusermount_stops_it(store_path: Path,
                                                                   tmp_path: Path, cleanup):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = vfsd("mount", "--store", store_path, mnt)
    assert result.returncode == 0, result.stderr
    assert os.path.ismount(mnt), "`vfsd mount` returned before the file system was up"
    pids = daemons(store_path)
    assert len(pids) == 1, pids
    assert pids[0] != os.getpid()

    (mnt / "hello").write_bytes(b"daemon")
    assert (mnt / "hello").read_bytes() == b"daemon"
    assert "event=mounted" in (store_path / "vfsd.log").read_text()

    unmount = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True,
                             check=False)
    assert unmount.returncode == 0, unmount.stderr
    assert not os.path.ismount(mnt)
    wait_for(lambda: daemons(store_path) == [], 30, "the daemon to exit")
    assert "event=unmounted" in (store_path / "vfsd.log").read_text()

    # And it comes back with the data.
    result = vfsd("mount", "--store", store_path, mnt)
    assert result.returncode == 0, result.stderr
    assert (mnt / "hello").read_bytes() == b"daemon"
    assert subprocess.run(["fusermount3", "-u", str(mnt)], check=False).returncode == 0
    wait_for(lambda: daemons(store_path) == [], 30, "the daemon to exit")


def test_a_mount_whose_daemon_was_killed_gets_a_hint_to_unmount(store_path: Path,
                                                                  tmp_path: Path, cleanup):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert vfsd("mount", "--store", store_path, mnt).returncode == 0
    for pid in daemons(store_path):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not daemons(store_path), 10, "the daemon to die")
    result = vfsd("mount", "--store", store_path, mnt)
    expect_one_line_error(result, f"fusermount3 -u {mnt}", "daemon is gone")
    subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    assert vfsd("mount", "--store", store_path, mnt).returncode == 0  # as the hint says
    subprocess.run(["fusermount3", "-u", str(mnt)], check=True)


def test_registry_entries_of_killed_mounts_are_cleared(store_path: Path, tmp_path: Path, mount):
    """Each mount records itself in STORE/run/mounts; entries of daemons killed with -9 went
    only when a lookup happened to reach them (a QA pass found seven after six kills)."""
    from vfsd.mounts import MOUNTS_DIR, register

    registry = store_path / MOUNTS_DIR
    dead = [registry / f"{pid}.json" for pid in (999_999_001, 999_999_002)]
    for entry in dead:
        entry.write_text(json.dumps({"pid": int(entry.stem), "start_time": 1,
                                     "mountpoint": "/nowhere"}))
    entry = register(store_path, tmp_path / "elsewhere")  # as a second mount would
    try:
        assert {p.name for p in registry.glob("*.json")} == {
            f"{mount.proc.pid}.json", f"{os.getpid()}.json"}  # the live mount's and ours
    finally:
        entry.unlink()
