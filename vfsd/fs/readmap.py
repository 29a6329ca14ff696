"""Where recently read chunks lie, so a small read the page cache can serve stays on the loop.

A read that goes to a worker thread pays a hop (two thread switches and a wake-up of the event
loop) and an LMDB lookup: most of a 4 KiB random read's time. The map keeps, per file, its
size and the location of each chunk a worker read found (or that it is a hole). A later read
of at most FAST_CHUNKS known chunks finds their records in the page cache without waiting for
the disk (`view_cached`, through a map: vfsd/store/mapped.py), checks their CRCs and answers
with the pages themselves; anything else (an unknown chunk, a record not in memory, a segment
gc deleted) goes to a worker as before. Memory is the kernel's page cache, not ours: the map
holds locations only.

Staleness. A file's locations are forgotten after every commit this process makes to its inode
(`Environment.on_commit`, called after the commit) and when the change log reports another
process's change (the path that invalidates the kernel's caches, so the mount's coherence is
unchanged). A stamp per file keeps a worker read that raced with such a commit from recording
what it saw before it. Records are never rewritten in place (segments are append-only and
their ids never reused), so a location is right for as long as its file's map is unchanged.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

from vfsd.store import Store
from vfsd.store.records import ChunkLocation

FAST_CHUNKS = 16  # 1 MiB: a buffered sequential read's request
MAX_LOCATIONS = 1 << 18  # ~16 GiB of 64 KiB chunks, ~30 MiB of memory
MAX_STAMPS = 1 << 16


class _Known:
    __slots__ = ("chunks", "size")

    def __init__(self, size: int):
        self.size = size
        self.chunks: dict[int, ChunkLocation | None] = {}  # None: a hole


class ReadMap:
    def __init__(self, store: Store):
        self.data = store.data
        self.cs = store.chunk_size
        self.files: OrderedDict[int, _Known] = OrderedDict()  # least recently read first
        self.locations = 0
        self.counter = itertools.count(1)
        self.stamps: dict[int, int] = {}
        self.resets = 0  # stamps forgotten in bulk: every read in flight is stale
        self.hits = self.misses = 0

    # --- staleness (any thread) ------------------------------------------------------------

    def forget(self, ino: int) -> None:
        self.stamps[ino] = next(self.counter)
        known = self.files.pop(ino, None)
        if known is not None:
            self.locations -= len(known.chunks)
        if len(self.stamps) > MAX_STAMPS:
            self.resets += 1
            self.stamps.clear()

    def forget_all(self) -> None:
        self.files.clear()
        self.locations = 0
        self.resets += 1
        self.stamps.clear()

    def forget_committed(self, inodes: set[int]) -> None:
        for ino in inodes:
            self.forget(ino)

    def stamp(self, ino: int) -> tuple[int, int]:
        """Taken before a worker read; `learn` records what it found only if unchanged."""
        return self.resets, self.stamps.get(ino, 0)

    # --- on the event loop -------------------------------------------------------------------

    def read(self, ino: int, offset: int, size: int) -> list[memoryview] | bytes | None:
        """The bytes, as pieces in place in the page cache (FUSE's reply gathers them), if
        every chunk is known and in the page cache; None to ask a worker."""
        known = self.files.get(ino)
        if known is None:
            return None
        cs = self.cs
        end = min(offset + size, known.size)
        if offset >= end:
            return b""
        first, last = offset // cs, (end - 1) // cs
        if last - first >= FAST_CHUNKS:
            return None
        chunks = known.chunks
        for index in range(first, last + 1):
            if index not in chunks:
                return None  # never read: a worker looks it up (a known hole maps to None)
        pieces = self.data.views_cached(offset, end, chunks)
        if pieces is None:
            self.misses += 1
            return None
        self.hits += 1
        return pieces

    def learn(self, stamp: tuple[int, int], ino: int, size: int, offset: int, length: int,
              locations: dict[int, ChunkLocation]) -> None:
        """Record what a worker read of [offset, offset+length) found."""
        if stamp != self.stamp(ino):
            return
        end = min(offset + length, size)
        known = self.files.get(ino)
        if known is None or known.size != size:
            if known is not None:
                self.locations -= len(known.chunks)
            known = self.files[ino] = _Known(size)
        self.files.move_to_end(ino)
        if offset < end:
            for index in range(offset // self.cs, (end - 1) // self.cs + 1):
                if index not in known.chunks:
                    self.locations += 1
                known.chunks[index] = locations.get(index)
        while self.locations > MAX_LOCATIONS and len(self.files) > 1:
            _, oldest = self.files.popitem(last=False)
            self.locations -= len(oldest.chunks)
