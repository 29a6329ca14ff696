"""The write-back cache: dirty chunks in memory, flushed in batches, with backpressure.

FUSE writes land here as whole-chunk buffers (partial chunks are read, then patched), so a
flush hands the core complete chunks and the core never re-reads. Memory is bounded: a writer
that would pass the bound waits until a flush frees room, like a full Xen I/O ring. A flush
commits one inode's dirty chunks and its size in one core call (segment fdatasync, then one
LMDB commit); only then is the data durable.

Reads of a file with dirty data overlay, in order: the store, the chunks being flushed, the
dirty chunks. A cached chunk is authoritative for its whole range: bytes past its end are
zeros, because it was built from the stored chunk before being patched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from vfsd.store import InodeFlags, Store
from vfsd.store.errors import FileTooBig, NotFound, StoreError

log = logging.getLogger("vfsd.writeback")
Chunk = bytearray | memoryview
RunSync = Callable[..., Awaitable[Any]]


@dataclass
class FileCache:
    ino: int
    size: int
    fixed_size: bool
    dirty: dict[int, Chunk] = field(default_factory=dict)
    flushing: dict[int, Chunk] = field(default_factory=dict)
    mtime_ns: int = 0
    first_dirty: float = 0.0
    lock: trio.Lock = field(default_factory=trio.Lock)
    error: StoreError | None = None
    pins: int = 0  # writes in progress: they may await, and must not find the cache forgotten

    @property
    def held(self) -> int:
        return len(self.dirty) + len(self.flushing)


class WriteBack:
    def __init__(self, store: Store, run: RunSync, limit_bytes: int, interval: float):
        self.store = store
        self.run = run
        self.cs = store.chunk_size
        self.limit = max(limit_bytes // self.cs, 16)  # in chunks
        self.interval = interval
        self.files: dict[int, FileCache] = {}
        self.held = 0
        self.room = trio.Condition()
        self.pressure = trio.Event()

    # --- state ---------------------------------------------------------------------------

    def cached(self, ino: int) -> FileCache | None:
        return self.files.get(ino)

    async def _file(self, ino: int) -> FileCache:
        f = self.files.get(ino)
        if f is None:
            inode = await self.run(self.store.getattr, ino)
            f = self.files.get(ino)  # another writer may have made it meanwhile
            if f is None:
                f = FileCache(ino, inode.size, bool(inode.flags & InodeFlags.FIXED_SIZE))
                self.files[ino] = f
        return f

    def _add_held(self, n: int) -> None:
        self.held += n
        if self.held >= self.limit * 3 // 4:
            self.pressure.set()

    async def _release_held(self, n: int) -> None:
        self.held -= n
        async with self.room:
            self.room.notify_all()

    async def _reserve(self, n: int) -> None:
        """Wait until `n` more chunks fit under the bound (a lone huge write always fits)."""
        if self.held + n <= self.limit or self.held == 0:
            return
        async with self.room:
            while self.held + n > self.limit and self.held > 0:
                self.pressure.set()
                await self.room.wait()

    # --- writes and reads ----------------------------------------------------------------

    async def write(self, ino: int, offset: int, data: bytes) -> int:
        f = await self._file(ino)
        # Pinned: while this write awaits room or a base chunk, a flush may empty the cache;
        # it must not forget it, or these chunks would land in an orphan and never be flushed.
        f.pins += 1
        try:
            return await self._write(f, offset, data)
        finally:
            f.pins -= 1

    async def _write(self, f: FileCache, offset: int, data: bytes | memoryview) -> int:
        if f.error is not None:
            error, f.error = f.error, None
            raise error
        cs = self.cs
        end = offset + len(data)
        if f.fixed_size and end > f.size:
            if offset >= f.size:
                raise FileTooBig("write past the end of a fixed-size disk")
            # Like a write that meets a file size limit: what fits is written and the count
            # comes back short; the next write fails with EFBIG. (The kernel splits a write
            # at a page it has to read first, so this is what callers see either way.)
            data = memoryview(data)[: f.size - offset]
            end = f.size
        first, last = offset // cs, (end - 1) // cs
        await self._reserve(sum(1 for i in range(first, last + 1) if i not in f.dirty))
        view = memoryview(data)
        for index in range(first, last + 1):
            cstart = index * cs
            lo = max(offset, cstart) - cstart
            hi = min(end, cstart + cs) - cstart
            piece = view[cstart + lo - offset: cstart + hi - offset]
            current = f.dirty.get(index)
            if current is None and lo == 0 and hi == cs:
                f.dirty[index] = piece  # zero-copy: keeps pyfuse3's buffer alive
                self._add_held(1)
                continue
            if current is None:
                base = await self._base(f, index)
                current = f.dirty.get(index)  # a concurrent write may have made it meanwhile
                if current is None:
                    current = bytearray(base)
                    f.dirty[index] = current
                    self._add_held(1)
            if isinstance(current, memoryview):
                current = f.dirty[index] = bytearray(current)
            if len(current) < hi:
                current.extend(bytes(hi - len(current)))
            current[lo:hi] = piece
        f.size = max(f.size, end)
        f.mtime_ns = time.time_ns()
        if not f.first_dirty:
            f.first_dirty = time.monotonic()
        return len(data)

    async def _base(self, f: FileCache, index: int) -> Chunk:
        if index in f.flushing:
            return f.flushing[index]
        if index * self.cs >= f.size:
            return b""  # type: ignore[return-value]
        return await self.run(self.store.read_chunk, f.ino, index)

    async def read(self, ino: int, offset: int, size: int) -> bytes | bytearray | memoryview:
        f = self.files.get(ino)
        if f is None:
            return await self.run(self.store.read, ino, offset, size)
        cs = self.cs
        end = min(offset + size, f.size)
        if offset >= end:
            return b""
        first, last = offset // cs, (end - 1) // cs
        overlay = {i: c for i in range(first, last + 1)
                   for c in [f.dirty.get(i, f.flushing.get(i))] if c is not None}
        if len(overlay) == last - first + 1:
            out = bytearray(end - offset)
        else:
            stored = await self.run(self.store.read, ino, offset, end - offset)
            out = bytearray(stored)
            if len(out) < end - offset:
                out.extend(bytes(end - offset - len(out)))
        # Chunks may have changed while the store read ran; collect the overlay again.
        for index in range(first, last + 1):
            chunk = f.dirty.get(index, f.flushing.get(index))
            if chunk is None:
                continue
            cstart = index * cs
            lo = max(offset, cstart) - cstart
            hi = min(end, cstart + cs) - cstart
            avail = max(0, min(hi, len(chunk)) - lo)
            dest = cstart + lo - offset
            out[dest: dest + avail] = chunk[lo: lo + avail]
            out[dest + avail: dest + hi - lo] = bytes(hi - lo - avail)
        return out

    # --- flushing ------------------------------------------------------------------------

    async def flush(self, ino: int) -> None:
        """Make the file's dirty data durable; raises the core's error if it cannot."""
        f = self.files.get(ino)
        if f is None:
            return
        async with f.lock:
            if f.error is not None:
                error, f.error = f.error, None
                raise error
            if not f.dirty:
                self._forget_if_clean(f)
                return
            snapshot, f.dirty, f.flushing = f.dirty, {}, f.dirty
            size, mtime, f.first_dirty = f.size, f.mtime_ns, 0.0
            try:
                await self.run(self.store.write_chunks, ino, snapshot, size=size, mtime_ns=mtime)
            except NotFound:
                log.info("event=flush-dropped ino=%d reason=deleted chunks=%d", ino, len(snapshot))
            except StoreError as e:
                # Keep the data dirty (nothing is lost silently) and report to the next caller.
                for index, chunk in snapshot.items():
                    if index not in f.dirty:
                        f.dirty[index] = chunk
                        self.held += 1
                f.error = e
                log.warning("event=flush-failed ino=%d error=%s", ino, e)
                raise
            finally:
                f.flushing = {}
                await self._release_held(len(snapshot))
            self._forget_if_clean(f)

    def _forget_if_clean(self, f: FileCache) -> None:
        if (not f.dirty and not f.flushing and f.error is None and not f.pins
                and self.files.get(f.ino) is f):
            del self.files[f.ino]

    async def flush_all(self) -> None:
        for ino in list(self.files):
            try:
                await self.flush(ino)
            except StoreError:
                pass  # logged; kept dirty and reported to the file's next fsync

    async def discard(self, ino: int) -> None:
        """Forget dirty data without writing it (swap files at last close, deleted files).

        Waits for a flush in flight, so nothing it was writing lands after the caller's next
        step (the swap file's hole punch)."""
        f = self.files.get(ino)
        if f is None:
            return
        async with f.lock:
            if self.files.get(ino) is f:
                del self.files[ino]
            dropped, f.dirty = len(f.dirty), {}
        await self._release_held(dropped)

    async def truncated(self, ino: int, size: int) -> None:
        f = self.files.get(ino)
        if f is not None:
            f.size = size

    async def run_flusher(self) -> None:
        """Flush files dirty for a commit interval, and the oldest ones under memory pressure."""
        while True:
            with trio.move_on_after(self.interval / 4):
                await self.pressure.wait()
            under_pressure = self.pressure.is_set()
            self.pressure = trio.Event()
            now = time.monotonic()
            due = sorted((f.first_dirty, ino) for ino, f in self.files.items() if f.dirty)
            for first_dirty, ino in due:
                if under_pressure or now - first_dirty >= self.interval:
                    try:
                        await self.flush(ino)
                    except StoreError:
                        pass
                if under_pressure and self.held < self.limit // 2:
                    under_pressure = False
