"""A file's entry in the write-back cache (vfsd/fs/writeback.py), and reads through it.

The entry holds the file's size as the mount sees it, its dirty chunks (whole, or a `Patch`
of the written ranges), the chunks a commit is writing (`flushing`), a few recently flushed
ones equal to the store's (`clean`), and the writes its next fsync journals.

Reads of a file with dirty data overlay, in order: the store, the chunks being flushed, the
dirty chunks. A complete cached chunk is authoritative for its whole range (bytes past its end
are zeros); a patch only for its ranges.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import trio

from vfsd.store.errors import StoreError

from .patch import Chunk, Patch

Readout = bytes | bytearray | memoryview | list[memoryview]  # a list: pieces, in order


@dataclass
class FileCache:
    ino: int
    size: int
    fixed_size: bool
    dirty: dict[int, Chunk] = field(default_factory=dict)
    flushing: dict[int, Chunk] = field(default_factory=dict)
    mtime_ns: int = 0
    ctime_ns: int = 0  # of the last write: it changed the file then, not when committed
    first_dirty: float = 0.0
    lock: trio.Lock = field(default_factory=trio.Lock)
    error: StoreError | None = None
    pins: int = 0  # writes in progress: they may await, and must not find the cache forgotten
    kept: bool = False  # a handle writes to the file: keep the entry while clean
    clean: dict[int, bytearray] = field(default_factory=dict)  # equal to the stored chunks
    batches: int = 0  # background batches of this file being committed
    settled: trio.Event = field(default_factory=trio.Event)  # set when `batches` drops to 0
    # Writes since the file's last journal record, for the next one. `unjournaled_all` says
    # they are not all here (too many, or a failed commit took them): the next fsync commits.
    unjournaled: list[tuple[int, bytes | memoryview]] = field(default_factory=list)
    unjournaled_bytes: int = 0
    unjournaled_all: bool = True
    # Flushes that failed in a row (retried every commit interval), and when that was logged.
    failures: int = 0
    failure_logged: float = 0.0
    # Emptied by an O_TRUNC whose truncation the next commit makes: the stored chunks and
    # size are the old file's, dead to this cache. One commit at a time while it is set.
    replacing: bool = False
    truncating_handle: int | None = None  # the handle that did it, until its release

    @property
    def held(self) -> int:
        return len(self.dirty) + len(self.flushing)

    def layers(self, first: int, last: int) -> list[tuple[int, Chunk]]:
        """What the entry holds of chunks `first`..`last`, bottom layer first."""
        return [(i, chunk) for layer in (self.clean, self.flushing, self.dirty)
                for i in range(first, last + 1)
                for chunk in [layer.get(i)] if chunk is not None]

    def complete(self, first: int, last: int) -> bool:
        """Whether complete cached chunks hold all of chunks `first`..`last`."""
        return all(isinstance(self.dirty.get(i, self.flushing.get(i, self.clean.get(i))),
                              bytearray | memoryview)
                   for i in range(first, last + 1))


def overlay(out: bytearray, held: list[tuple[int, Chunk]], offset: int, end: int,
            cs: int) -> None:
    """Lay cached chunks (`FileCache.layers`) over `out`, the bytes `offset`..`end`."""
    for index, chunk in held:
        cstart = index * cs
        lo = max(offset, cstart) - cstart
        hi = min(end, cstart + cs) - cstart
        dest = cstart + lo - offset
        if isinstance(chunk, Patch):
            chunk.overlay(out, lo, hi, dest)
            continue
        avail = max(0, min(hi, len(chunk)) - lo)
        out[dest: dest + avail] = chunk[lo: lo + avail]
        out[dest + avail: dest + hi - lo] = bytes(hi - lo - avail)


@contextlib.asynccontextmanager
async def holding(lock: trio.Lock) -> AsyncIterator[None]:
    """`async with lock`, minus its two scheduler round trips when nobody holds it: an
    fsync is a few FUSE requests' worth of work, and each round trip costs ~10 µs."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()
    try:
        yield
    finally:
        lock.release()


def joined(data: Readout) -> bytearray:
    return bytearray().join(data) if isinstance(data, list) else bytearray(data)
