"""Leases: which live process holds a file open for writing (a running VM's disk).

Leases are runtime state, not data: they live in a second, volatile LMDB environment
(`run/leases`) opened without fsync, so taking one costs microseconds and a crash forgets it
together with the process that held it. A holder is a (pid, process start time) pair, so a
lease left by a dead process (or one whose pid was reused) is recognised as stale and ignored.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb

from vfsd.procstat import state_and_start_time

from .env import as_store_error
from .errors import Busy
from .records import ino_key

SETTLE_SECONDS = 3.0
# Disk blocks reserved for the leases' LMDB file when a process opens it: LMDB reuses the
# pages it frees, so with these allocated, taking and giving back leases needs no new block
# even when the disk under the store is full.
PREALLOCATE = 4 << 20
_LEASE = struct.Struct(">IQI")  # pid, process start time (clock ticks since boot), open count


@dataclass(frozen=True)
class Holder:
    pid: int
    start_time: int
    kind: str  # "mount", "vm", …: said in the Busy message

    @classmethod
    def this_process(cls, kind: str) -> Holder:
        return cls(os.getpid(), process_start_time(os.getpid()) or 0, kind)

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time


def process_start_time(pid: int) -> int | None:
    """The process's start time (a pid reused later has another), or None if it is gone.
    A process that was killed but cannot finish dying counts as gone: its state is Z (or X)
    while one of its threads waits in the kernel, as a FUSE daemon killed inside an
    invalidation can for as long as its dead connection lives. It runs no more code, so its
    journal must be replayed and its leases ignored."""
    found = state_and_start_time(pid)
    if found is None or found[0] in (b"Z", b"X"):
        return None
    return found[1]


class Leases:
    def __init__(self, run_dir: Path):
        run_dir.mkdir(exist_ok=True)
        self.env = lmdb.open(str(run_dir / "leases"), map_size=1 << 28, max_dbs=1,
                             subdir=True, sync=False, metasync=False, readahead=False)
        try:
            fd = os.open(run_dir / "leases" / "data.mdb", os.O_WRONLY)
            try:
                os.posix_fallocate(fd, 0, PREALLOCATE)
            finally:
                os.close(fd)
        except OSError:
            pass  # the disk is full already: leases fail with NoSpace until there is room

    def close(self) -> None:
        self.env.close()

    def _decode(self, raw: bytes) -> tuple[Holder, int]:
        pid, start, count = _LEASE.unpack_from(raw)
        return Holder(pid, start, raw[_LEASE.size:].decode()), count

    @contextlib.contextmanager
    def _write(self) -> Iterator[lmdb.Transaction[bytes]]:
        try:
            with self.env.begin(write=True) as txn:
                yield txn
        except (lmdb.DiskError, lmdb.MapFullError) as e:
            raise as_store_error(e) from e

    def acquire(self, ino: int, holder: Holder) -> None:
        """Take (or re-enter) the lease on `ino`; Busy if another live process holds it."""
        with self._write() as txn:
            raw = txn.get(ino_key(ino))
            count = 0
            if raw is not None:
                current, held = self._decode(raw)
                if (current.pid, current.start_time) == (holder.pid, holder.start_time):
                    count = held
                elif current.alive():
                    raise Busy(f"in use by {current.kind} (pid {current.pid})")
            txn.put(ino_key(ino), _LEASE.pack(holder.pid, holder.start_time, count + 1)
                    + holder.kind.encode())

    def release(self, ino: int, holder: Holder) -> None:
        with self._write() as txn:
            raw = txn.get(ino_key(ino))
            if raw is None:
                return
            current, count = self._decode(raw)
            if (current.pid, current.start_time) != (holder.pid, holder.start_time):
                return
            if count > 1:
                txn.put(ino_key(ino), _LEASE.pack(holder.pid, holder.start_time, count - 1)
                        + holder.kind.encode())
            else:
                txn.delete(ino_key(ino))

    def holder(self, ino: int) -> Holder | None:
        """The live holder of `ino`'s lease, if any."""
        with self.env.begin() as txn:
            raw = txn.get(ino_key(ino))
        if raw is None:
            return None
        current, _count = self._decode(raw)
        return current if current.alive() else None

    def settled_holder(self, ino: int, settle: float = SETTLE_SECONDS) -> Holder | None:
        """The holder once a just-closed file has had time to be released: the kernel sends
        FUSE's RELEASE after close() returns, so a lease can outlive its last writer briefly.
        For commands (vm start, revert, export), not for request paths."""
        deadline = time.monotonic() + settle
        while True:
            current = self.holder(ino)
            if current is None or time.monotonic() >= deadline:
                return current
            time.sleep(0.05)

    def check_free(self, ino: int, what: str) -> None:
        current = self.holder(ino)
        if current is not None:
            raise Busy(f"{what} is open for writing by {current.kind} (pid {current.pid})")
