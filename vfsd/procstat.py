"""A process's state and start time, from /proc/PID/stat.

Small on purpose: the mount's guardian (vfsd/fs/guardian.py) runs it in a process of its own
that should import little.
"""

from __future__ import annotations


def state_and_start_time(pid: int) -> tuple[bytes, int] | None:
    """The process's state letter (b"R", b"S", b"Z", ...) and start time (a pid reused later
    has another), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces, so split after ')': then field 3 (state)
    # comes first and field 22 (starttime) 20th.
    fields = stat.rsplit(b")", 1)[1].split()
    return fields[0], int(fields[19])
