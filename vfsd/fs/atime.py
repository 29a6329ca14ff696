"""Access times as Linux's relatime keeps them, written lazily.

FUSE leaves atime to the file system (the kernel does not update it for us). Opening a file
for reading sets its atime to now when the stored one is not newer than its mtime or ctime,
or is a day old: relatime, Linux's default, so a file read over and over costs nothing more.
Linux sets it at the first read; we see the open, but not reads the kernel serves from its
page cache (`keep_cache`), so the open stands for them. The new times wait in memory and go
to the store in one transaction every few seconds and at unmount, as with Linux's lazytime:
an access time is not data, a crash may lose the last few seconds of them, and one
transaction per file read would take the writer lock (shared with the gateway) for every
`cat`. Directories keep theirs.
"""

from __future__ import annotations

import os
import time

from vfsd.store import Inode, InodeFlags

DAY_NS = 86_400 * 1_000_000_000


def due(inode: Inode, flags: int) -> bool:
    """Whether an open with `flags` stands for a read that sets the atime."""
    if flags & os.O_ACCMODE == os.O_WRONLY or flags & os.O_NOATIME or (
            inode.flags & InodeFlags.READONLY):  # snapshots: read-only, atime included
        return False
    return (inode.atime_ns <= inode.mtime_ns or inode.atime_ns <= inode.ctime_ns
            or time.time_ns() - inode.atime_ns >= DAY_NS)


class AccessTimes:
    """Access times read here and not yet in the store: ino -> (new atime, the stored atime
    it replaces). The store takes a new one only over the atime it replaces, so an atime
    set meanwhile (utimensat, `touch -a`) wins, and a chmod or rename does not lose it."""

    def __init__(self) -> None:
        self.pending: dict[int, tuple[int, int]] = {}

    def accessed(self, inode: Inode) -> None:
        stored = self.pending.get(inode.ino, (0, inode.atime_ns))[1]
        self.pending[inode.ino] = (time.time_ns(), stored)

    def of(self, ino: int, stored_ns: int) -> int:
        """The atime to show: the pending one, else the stored one."""
        pending = self.pending.get(ino)
        return pending[0] if pending is not None else stored_ns

    def drop(self, ino: int) -> None:
        """An explicit atime (utimensat, touch -a) was set: it wins over a pending one."""
        self.pending.pop(ino, None)

    def written(self, times: dict[int, tuple[int, int]]) -> None:
        """These (a copy of `pending` taken earlier) are in the store now."""
        for ino, entry in times.items():
            if self.pending.get(ino) == entry:
                del self.pending[ino]
