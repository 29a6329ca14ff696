"""The mount's guardian (vfsd/fs/guardian.py): it leaves with the daemon, and ends the FUSE
connection of a daemon that died with a thread stuck in the kernel.

That death cannot be made on purpose in a real daemon (it takes a kill landing while the
invalidation thread waits for a directory lock that an unanswered lookup holds: a QA pass hit
it in 3 of 30 kills under PUTs and DELETEs with readers opening the names). The second test
makes the same state in a small process of its own, which has a guardian started the mount's
way, and gives it a real mount's connection to end. The third kills such a process while
one of its threads waits for a reply that comes seconds later (a read of tests/fs/gatefs.py's
gate): slow to die, as a killed daemon is while a thread finishes a disk flush, but not stuck.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mounting import Mount, gatefs_mounted, wait_for

from vfsd.fs import guardian
from vfsd.procstat import state_and_start_time


def guardians_of(pid: int) -> dict[int, list[str]]:
    """The guardian processes watching `pid`: their pids and arguments."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if proc.name.isdigit() and "vfsd.fs.guardian" in args:
            args = args[args.index("vfsd.fs.guardian") + 1:-1]
            if args[0] == str(pid):
                found[int(proc.name)] = args
    return found


def waits_of(pid: int) -> list[str]:
    """Where each thread of `pid` waits in the kernel (its wchan)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found.append((task / "wchan").read_text())
    return found


def connection_number(path: Path) -> int:
    """fusectl's name for the connection of the mount at `path`: the kernel's dev_t."""
    st_dev = os.stat(path).st_dev
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def test_a_mount_has_a_guardian_that_leaves_with_it(store_path: Path, tmp_path: Path) -> None:
    for ending in ("unmount", "kill -9"):
        # A space and a letter outside ASCII: mountinfo escapes the one and not the other.
        mount = Mount(store_path, tmp_path / "mnt ü").start()
        try:
            assert mount.proc is not None
            [(guardian_pid, args)] = guardians_of(mount.proc.pid).items()
            assert guardian.connection_of(mount.path.resolve()) == int(args[2])
            assert int(args[2]) == connection_number(mount.path)  # its mount's connection
            assert str(store_path) not in " ".join(args)  # `pgrep -f STORE`: the daemon alone
            if guardian.CONNECTIONS.is_mount():
                assert (guardian.CONNECTIONS / args[2]).is_dir()
            if ending == "unmount":
                subprocess.run(["fusermount3", "-u", str(mount.path)], check=True)
                mount.proc.wait(timeout=60)
            else:
                mount.kill()
            wait_for(lambda pid=guardian_pid: not Path(f"/proc/{pid}").exists(), 5,
                     "the guardian to leave")
        finally:
            mount.stop()
    # Neither a clean unmount nor a plain kill leaves anything stuck: nothing was aborted.
    assert "connection-abort" not in (store_path / "vfsd.log").read_text()


STUCK_DAEMON = """
import ctypes, sys, threading, time
from pathlib import Path
from vfsd.fs import guardian
from vfsd.procstat import state_and_start_time
guardian.start(int(sys.argv[1]), Path(sys.argv[2]))  # as the mount does, once mounted
threading.Thread(target=time.sleep, args=(120,)).start()  # the thread stuck in the kernel
print("ready", flush=True)
# The main thread dies alone (exit, not exit_group), as a killed daemon's does while another
# of its threads cannot: the process stays, in state Z, and keeps its descriptors.
ctypes.CDLL(None, use_errno=True).syscall(60, 0)  # SYS_exit on x86-64
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the stand-in uses x86-64's SYS_exit")
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting fusectl takes root")
def test_the_guardian_ends_the_connection_of_a_daemon_that_died_stuck(
        mount: Mount, tmp_path: Path) -> None:
    connection = guardian.connection_of(mount.path.resolve())
    assert connection == connection_number(mount.path)
    log = tmp_path / "stand-in.log"
    fusectl_was_mounted = guardian.CONNECTIONS.is_mount()  # the guardian mounts it if not
    stand_in = subprocess.Popen([sys.executable, "-c", STUCK_DAEMON, str(connection), str(log)],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert stand_in.stdout is not None and stand_in.stdout.readline() == "ready\n"
        found = state_and_start_time(stand_in.pid)
        assert found is not None
        wait_for(lambda: guardian.stuck(stand_in.pid, found[1]), 5,
                 "the stand-in's main thread to die")
        wait_for(lambda: log.exists() and log.read_text().endswith("\n"),
                 guardian.DYING_SECONDS + 10, "the guardian to act")
        assert "event=connection-aborted" in log.read_text()
        with pytest.raises(OSError) as failed:
            os.stat(mount.path / "anything")
        assert failed.value.errno == errno.ENOTCONN
        assert mount.proc is not None
        mount.proc.wait(timeout=60)  # the mount's daemon heard its connection end, and left
    finally:
        stand_in.kill()
        stand_in.wait()
        if not fusectl_was_mounted and guardian.CONNECTIONS.is_mount():
            subprocess.run(["umount", str(guardian.CONNECTIONS)], check=False)



SLOW_DYING_DAEMON = """
import sys, threading, time
from pathlib import Path
from vfsd.fs import guardian
guardian.start(int(sys.argv[1]), Path(sys.argv[2]))
def read_the_gate():  # a FUSE request read but not answered: a kill cannot interrupt it
    with open(sys.argv[3], "rb", buffering=0) as f:
        f.read(4)
threading.Thread(target=read_the_gate).start()
print("ready", flush=True)
time.sleep(120)
"""


def test_the_guardian_waits_for_a_daemon_that_is_slow_to_die(mount: Mount,
                                                             tmp_path: Path) -> None:
    """Killed while a thread finished a disk flush, a daemon took up to 76 ms more to die (the
    last thread unmaps its memory before its files close). The guardian, checking once a
    second, now and then saw that as stuck and aborted the connection (and mounted fusectl,
    left mounted after the tests). The stand-in here takes 2.5 checks to die."""
    connection = guardian.connection_of(mount.path.resolve())
    assert connection is not None
    log = tmp_path / "stand-in.log"
    dying_for = 2.5 * guardian.CHECK_SECONDS
    assert dying_for < guardian.DYING_SECONDS - 1
    gate = tmp_path / "gatefs"
    with gatefs_mounted(gate) as gatefs:
        assert gatefs.poll() is None, "gatefs exited"
        stand_in = subprocess.Popen(
            [sys.executable, "-c", SLOW_DYING_DAEMON, str(connection), str(log),
             str(gate / "gate")], stdout=subprocess.PIPE, text=True)
        try:
            assert stand_in.stdout is not None and stand_in.stdout.readline() == "ready\n"
            found = state_and_start_time(stand_in.pid)
            assert found is not None
            [guardian_pid] = guardians_of(stand_in.pid)
            wait_for(lambda: "request_wait_answer" in waits_of(stand_in.pid), 10,
                     "the stand-in's read to wait for gatefs")
            time.sleep(0.5)  # and gatefs to have read it: a kill before would end it at once
            stand_in.kill()
            wait_for(lambda: guardian.stuck(stand_in.pid, found[1]), 5,
                     "the stand-in's main thread to die")
            time.sleep(dying_for)
            assert stand_in.poll() is None, "the stand-in died at once: its read never waited"
            (gate / "opener").write_bytes(b"open")
            stand_in.wait(timeout=10)
        finally:
            stand_in.kill()
            stand_in.wait()
    wait_for(lambda: not Path(f"/proc/{guardian_pid}").exists(), 5, "the guardian to leave")
    assert not (log.exists() and log.read_text()), log.read_text()  # it aborted nothing
    os.listdir(mount.path)  # the mount still serves (an aborted one fails with ENOTCONN)
