"""A small process beside the mount daemon that ends its FUSE connection if it dies stuck.

A daemon killed (kill -9, the OOM killer) while its invalidation thread waits in the kernel
for a directory's lock (`invalidate_entry`, vfsd/fs/invalidate.py), held by a process whose
lookup in that directory the daemon had read but not answered, cannot finish dying: that
thread waits on uninterruptibly, the dead daemon's /dev/fuse stays open, so the kernel never
ends the connection, and every process using the mount hangs with it, for good (a QA pass:
1 kill in 15 under PUTs and DELETEs with readers opening the names). Only aborting the
connection through fusectl (/sys/fs/fuse/connections/N/abort) frees them.

The guardian watches the daemon: the daemon holds the write end of a pipe the guardian reads.
End of file (the daemon closed it at a clean unmount, or has exited: its descriptors are
closed before it shows as a zombie) ends the guardian. A daemon whose main thread is dead
(state Z) while the pipe is still open is dying; one still so DYING_SECONDS later is stuck
(a killed daemon's other threads finish a disk flush, and the last of them unmaps its
memory before it closes its files: 15 to 76 ms after 4 of the kills in a run of
tests/fs/test_durability.py, windows that a check once a second sometimes met, aborting
connections nothing was stuck on). Then the guardian aborts its connection, the daemon
finishes dying and readers see ENOTCONN, as after any crash of a FUSE daemon.

Run as `python -m vfsd.fs.guardian PID START_TIME CONNECTION`, its stderr the store's log
(not named on its command line: `pgrep -f STORE` finds the daemon alone); it imports little
of vfsd (vfsd/procstat.py, and vfsd/fs/readahead.py's mountinfo reader). It ignores SIGTERM,
SIGINT and SIGHUP (`pkill -f vfsd` should not take it with the daemon; it leaves when the
daemon does), but a cgroup-wide kill (systemd's KillMode=control-group, an OOM kill of the
group) takes it too.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vfsd.procstat import state_and_start_time

from .readahead import mount_device

CONNECTIONS = Path("/sys/fs/fuse/connections")
CHECK_SECONDS = 1.0
# How long a daemon may take to finish dying (a thread's disk flush, unmapping its memory)
# before it counts as stuck: a stuck one never finishes, so waiting costs its mount's
# processes only these seconds more, and aborting a dying one gains them nothing.
DYING_SECONDS = 5.0


def connection_of(mountpoint: Path) -> int | None:
    """The FUSE connection number of the mount at `mountpoint`: fusectl names a connection
    by the kernel's device number, (major << 20) | minor, which is not what os.makedev
    makes."""
    device = mount_device(mountpoint)
    if device is None:
        return None
    major, minor = (int(number) for number in device.split(":"))
    return (major << 20) | minor


@dataclass
class Guard:
    process: subprocess.Popen[bytes]
    pipe: int  # the write end, open for as long as the daemon lives


def start(connection: int, log_path: Path) -> Guard:
    """Start the guardian of this process's mount (`stand_down` at a clean unmount)."""
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    read_end, write_end = os.pipe()  # neither end is inherited by other children
    pid = os.getpid()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "vfsd.fs.guardian", str(pid), str(_own_start_time()),
             str(connection)],
            stdin=read_end, stdout=subprocess.DEVNULL, stderr=log,
            start_new_session=True)  # a terminal's Ctrl-C is the daemon's to handle
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
        os.close(log)
    return Guard(process, write_end)


def _own_start_time() -> int:
    found = state_and_start_time(os.getpid())
    assert found is not None  # this very process
    return found[1]


def stand_down(guard: Guard) -> None:
    """A clean unmount: the guardian reads end of file and leaves the connection alone."""
    os.close(guard.pipe)
    try:
        guard.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass  # reaped by init when this process exits


def stuck(pid: int, start_time: int) -> bool:
    """Whether the process is ours (its start time unchanged: a reused pid has another) and
    its main thread is dead (state Z). Another of its threads still lives if it still holds
    files open: the caller checks its pipe."""
    return state_and_start_time(pid) == (b"Z", start_time)


def abort(connection: int) -> None:
    """End a FUSE connection: its requests fail and its mount answers ENOTCONN. Mounts
    fusectl first where nobody has (it is not on every machine)."""
    target = CONNECTIONS / str(connection) / "abort"
    if not target.exists() and CONNECTIONS.is_dir() and not os.path.ismount(CONNECTIONS):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(CONNECTIONS)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    target.write_text("1")


def watch(pid: int, start_time: int, connection: int) -> int:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    while True:
        if select.select([0], [], [], CHECK_SECONDS)[0]:
            return 0  # end of file: unmounted, or the daemon is gone and took its connection
        if not stuck(pid, start_time):
            continue
        # Dying: give it time to finish (then its files close, the pipe ends, and its
        # connection number may soon be another mount's). Still open after that: stuck.
        if select.select([0], [], [], DYING_SECONDS)[0]:
            return 0
        break
    try:
        abort(connection)
        outcome = "event=connection-aborted"
    except OSError as e:
        outcome = f"event=connection-abort-failed error={e.strerror or e}"
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
    print(f"{stamp} level=ERROR logger=vfsd.guardian pid={os.getpid()} {outcome} daemon={pid} "
          f"connection={connection} reason=the-daemon-died-with-a-thread-stuck-in-the-kernel",
          file=sys.stderr, flush=True)
    return 1


def main(argv: list[str]) -> int:
    pid, start_time, connection = argv
    return watch(int(pid), int(start_time), int(connection))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
