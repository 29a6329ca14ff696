"""The write-back cache's memory bound, and the backpressure that keeps writers within it.

It counts memory, not chunks: a whole chunk as its size, a patch as the bytes written into it
(a 4 KiB random write holds 4 KiB, not a chunk). The number of dirty chunks has a bound of
its own, ENTRIES_PER_CACHE_CHUNK per chunk of the byte bound, since each patch costs a base
read and a chunk rewrite at flush: that bounds how long a close takes. Past 3/4 of either
bound the flusher is pressed to flush the oldest chunks; a writer that would pass a bound
waits for room, like a full Xen I/O ring.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from vfsd.store.errors import NoSpace

from .patch import Chunk, Patch

# Dirty chunks (whole or patched) per chunk of --cache-size: patches are small, but each one
# is a base read and a chunk rewrite at flush, so their number bounds how long a close takes.
ENTRIES_PER_CACHE_CHUNK = 4


class CacheBudget:
    def __init__(self, limit_bytes: int, chunk_size: int):
        self.cs = chunk_size
        self.limit = max(limit_bytes, 16 * chunk_size)  # bytes of dirty data (`cost`)
        self.max_entries = self.limit // chunk_size * ENTRIES_PER_CACHE_CHUNK
        self.held = 0  # bytes, as `cost` counts them, of the dirty chunks and those flushing
        self.entries = 0  # dirty chunks and chunks being flushed
        self.room = trio.Condition()
        self.no_space_failures = 0  # commits refused for want of room (the pool is full)
        self.pressure = trio.Event()  # set when the flusher should flush (`press`)

    def press(self) -> None:
        """Ask the flusher to flush now."""
        self.pressure.set()

    async def wait_for_pressure(self, seconds: float) -> None:
        """The flusher's wait: until pressed or `seconds` pass; the next wait starts anew."""
        with trio.move_on_after(seconds):
            await self.pressure.wait()
        self.pressure = trio.Event()

    def cost(self, chunk: Chunk) -> int:
        """What a cached chunk counts against the bound: a patch its bytes, else a chunk."""
        return chunk.cost if isinstance(chunk, Patch) else self.cs

    def add(self, nbytes: int, entries: int = 0) -> None:
        self.held += nbytes
        self.entries += entries
        if self.pressed():
            self.press()

    def pressed(self) -> bool:
        return (self.held >= self.limit * 3 // 4
                or self.entries >= self.max_entries * 3 // 4)

    async def release(self, nbytes: int, entries: int) -> None:
        self.held -= nbytes
        self.entries -= entries
        await self.wake_writers()

    async def wake_writers(self) -> None:
        """Writers waiting for room look again (room came back, or a commit failed)."""
        async with self.room:
            self.room.notify_all()

    def commit_refused(self) -> None:
        """A commit failed for want of room in the pool: waiting writers hear NoSpace."""
        self.no_space_failures += 1

    def _full(self, nbytes: int, entries: int) -> bool:
        return (self.held + nbytes > self.limit
                or self.entries + entries > self.max_entries) and self.entries > 0

    async def reserve(self, nbytes: int, entries: int, raise_error: Callable[[], None],
                      nothing_flushable: Callable[[], bool]) -> None:
        """Wait until `nbytes` more, in `entries` more chunks, fit under the bounds (a lone
        huge write always fits). `raise_error` raises the writer's file's failed flush, if
        any (a full disk): the flusher leaves a failed file alone until its error has been
        reported, and its writer, blocked here, would never get to the fsync that reports
        it. Nor does a writer wait for room that only other files' failed flushes could
        give: when a commit fails for want of room meanwhile, or `nothing_flushable`, it
        hears NoSpace (ENOSPC), as a writer on a full disk does."""
        if not self._full(nbytes, entries):
            return
        failures = self.no_space_failures
        async with self.room:
            while self._full(nbytes, entries):
                raise_error()
                if self.no_space_failures != failures or nothing_flushable():
                    raise NoSpace("the store is full: the write-back cache holds data of "
                                  "other files that cannot be committed")
                self.press()
                await self.room.wait()
