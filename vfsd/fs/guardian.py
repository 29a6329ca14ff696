"""A small process beside the mount daemon that ends its FUSE connection if it dies stuck.

A daemon killed (kill -9, the OOM killer) while its invalidation thread waits in the kernel
for a directory's lock (`invalidate_entry`, vfsd/fs/invalidate.py), held by a process whose
lookup in that directory the daemon had read but not answered, cannot finish dying: that
thread waits on uninterruptibly, the dead daemon's /dev/fuse stays open, so the kernel never
ends the connection, and every process using the mount hangs with it, for good (a QA pass:
1 kill in 15 under PUTs and DELETEs with readers opening the names). Only aborting the
connection through fusectl (/sys/fs/fuse/connections/N/abort) frees them.

The guardian watches the daemon: the daemon holds the write end of a pipe the guardian reads.
End of file (the daemon has exited and its descriptors are closed) or "bye" (a clean
unmount) ends the guardian. A daemon whose main thread is dead (state Z) while the pipe is
still open is stuck that way: the guardian aborts its connection, then the daemon finishes
dying and readers see ENOTCONN, as after any crash of a FUSE daemon. Run as
`python -m vfsd.fs.guardian PID START_TIME CONNECTION LOG`; it imports nothing of vfsd.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

CONNECTIONS = Path("/sys/fs/fuse/connections")
CHECK_SECONDS = 1.0
BYE = b"bye"


def connection_of(mountpoint: Path) -> int | None:
    """The FUSE connection number of the mount at `mountpoint` (its device number), from
    /proc/self/mountinfo: a stat of the mount point would ask the daemon itself."""
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                # Octal escapes (a space is \\040) as the kernel writes them.
                if len(fields) > 4 and _unescape(fields[4]) == str(mountpoint):
                    major, minor = fields[2].split(":")
                    found = os.makedev(int(major), int(minor))  # the last one is on top
    except (OSError, ValueError):
        return None
    return found


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="replace")


def start(connection: int, log_path: Path) -> int:
    """Start the guardian of this process's mount; returns the pipe's write end, which this
    process keeps open for as long as it lives (`stand_down` on a clean unmount)."""
    read_end, write_end = os.pipe()
    pid = os.getpid()
    subprocess.Popen(
        [sys.executable, "-m", "vfsd.fs.guardian", str(pid), str(_start_time(pid) or 0),
         str(connection), str(log_path)],
        stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)  # a terminal's Ctrl-C is the daemon's to handle, not its
    os.close(read_end)
    os.set_inheritable(write_end, False)
    return write_end


def stand_down(write_end: int) -> None:
    """A clean unmount: the guardian leaves without touching the connection."""
    try:
        os.write(write_end, BYE)
    except OSError:
        pass
    os.close(write_end)


def stuck(pid: int, start_time: int) -> bool:
    """Whether the process is ours and its main thread is dead while another thread still
    lives: state Z with its start time unchanged (a reused pid has another)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return False
    return fields[0] == b"Z" and int(fields[19]) == start_time


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def abort(connection: int) -> None:
    """End a FUSE connection: its requests fail and its mount answers ENOTCONN. Mounts
    fusectl first where nobody has (it is not on every machine)."""
    target = CONNECTIONS / str(connection) / "abort"
    if not target.exists() and CONNECTIONS.is_dir() and not os.path.ismount(CONNECTIONS):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(CONNECTIONS)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    target.write_text("1")


def watch(pid: int, start_time: int, connection: int, log_path: Path) -> int:
    while True:
        ready, _, _ = select.select([0], [], [], CHECK_SECONDS)
        if ready:
            return 0  # "bye", or end of file: the daemon is gone and took its connection
        if stuck(pid, start_time):
            break
    try:
        abort(connection)
        outcome = "event=connection-aborted"
    except OSError as e:
        outcome = f"event=connection-abort-failed error={e.strerror or e}"
    with open(log_path, "a") as log:
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} level=ERROR logger=vfsd.guardian "
                  f"pid={os.getpid()} {outcome} daemon={pid} connection={connection} "
                  f"reason=the-daemon-died-with-a-thread-stuck-in-the-kernel\n")
    return 1


def main(argv: list[str]) -> int:
    pid, start_time, connection, log_path = argv
    return watch(int(pid), int(start_time), int(connection), Path(log_path))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
