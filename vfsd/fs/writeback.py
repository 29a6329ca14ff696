"""The write-back cache: dirty chunks in memory, flushed in batches, with backpressure.

A write never waits for the store. A chunk it covers whole is kept as given; a chunk it covers
in part becomes a `Patch` (the written bytes and their ranges), and the flush, in a worker
thread, reads the stored chunk and lays the patch onto it. Reading the base at write time would
cost a thread hop per small write, which was most of a 4 KiB random write's time. Memory is
bounded (vfsd/fs/budget.py): a writer that would pass the bound waits until a flush frees
room, like a full Xen I/O ring. A flush commits one inode's dirty chunks and its size in one
core call (segment fdatasync, then one LMDB commit); only then is the data durable.

Each file's entry, and reads through it, are vfsd/fs/filecache.py's.

An fsync of a few writes does not commit them: it appends them to the fsync journal
(vfsd/store/journal.py), one synchronous write, and they stay dirty until the next flush. For
that, each file keeps the writes made since its last journal record (up to JOURNAL_LIMIT; past
it, or when that record of writes is incomplete, an fsync commits everything instead).

A file's entry (its size as the mount sees it) is kept while a handle writes to it, so a run of
write-fsync pairs does not look the inode up again after every flush. With it go the last few
chunks that were written in part and flushed (`clean`: equal to the store's chunk, as only this
mount changes a file it holds the lease of): the next small write to one of them patches it in
memory instead of reading it back from the disk at flush. Any change to the file that does not
come through this cache (truncate, hole punch, a copy into it, another process) drops them.

An O_TRUNC open of an ordinary file empties its entry (`replace_on_open`) and leaves the store
alone: the old chunks go in the transaction of the file's first commit, with the first new
data (`replacing`). Until then the cache reads every chunk it does not hold as zeros, and other
processes (a GET through the gateway) see the old contents, not an empty file: a program that
rewrites a file in place (`cp`, an editor's save) replaces an object's bytes in one step.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from vfsd.store import Inode, InodeFlags, Store
from vfsd.store.errors import FileTooBig, NoSpace, NotFound, PermissionDenied, StoreError
from vfsd.store.journal import Journal

from .budget import CacheBudget
from .filecache import FileCache, Readout, holding, joined, overlay
from .flushcommit import Taken, commit_flush
from .inline import InlineWhileFast
from .patch import Chunk, Patch, stacked
from .readmap import ReadMap

log = logging.getLogger("vfsd.writeback")
RunSync = Callable[..., Awaitable[Any]]
BATCHES_IN_FLIGHT = 2  # one stages (hash, disk) while the other commits (LMDB)
CLEAN_PER_FILE = 8  # recently flushed, partly written chunks kept per writing file (512 KiB)
FLUSH_BATCH_BYTES = 64 * 1024 * 1024  # per background commit: ~100 ms of work, one fdatasync
JOURNAL_LIMIT = 1 << 20  # bytes written between fsyncs that go to the journal; more: a commit
INLINE_JOURNAL_LIMIT = 64 << 10  # journal records up to this size are written on the loop
# A flush refused for want of room while gc is giving space back waits this long, in all, for
# its passes (every 2 s; retired segments go after a 5 s grace) before the writer hears ENOSPC.
NO_SPACE_WAIT = 15.0
FAILURE_LOG_SECONDS = 60.0  # a file whose flush keeps failing (a full pool) is logged this often


class _Discarded(Exception):
    """The file's cache entry was dropped while a write waited for room."""


class WriteBack:
    def __init__(self, store: Store, run: RunSync, limit_bytes: int, interval: float):
        self.store = store
        self.run = run
        # Small journal records are written on the loop while the device is quick, and never
        # while a commit of ours keeps it busy (vfsd/fs/inline.py).
        self.inline = InlineWhileFast(run)
        self.committing = 0
        self.cs = store.chunk_size
        self.budget = CacheBudget(limit_bytes, self.cs)
        self.interval = interval
        self.files: dict[int, FileCache] = {}
        # Whole chunks are flushed in batches as they come (a stream rarely rewrites them),
        # so the flush overlaps the writer instead of starting when memory runs short.
        self.batch = max(8, min(FLUSH_BATCH_BYTES // self.cs, self.budget.limit // self.cs // 4))
        self.streamed = 0  # whole chunks written since the flusher last took a batch
        self.slots = trio.Semaphore(BATCHES_IN_FLIGHT)
        self.writing: set[int] = set()  # inodes with a handle open for writing
        self.journal: Journal | None = None  # set by the mount; without it fsync commits
        self.readmap: ReadMap | None = None  # set by the mount: small reads on the loop
        # The mount's gc loop reports each pass (`gc_ran`): whether gc is still giving space
        # back, so a flush that found the pool full is worth retrying after the next pass.
        self.gc_pass = trio.Event()
        self.gc_reclaiming = True  # until the first pass says otherwise

    def gc_ran(self, reclaiming: bool) -> None:
        """A gc pass ended; `reclaiming`: it retired or deleted segments, or some still wait
        for their grace period or for room to be compacted."""
        self.gc_reclaiming = reclaiming
        self.gc_pass.set()
        self.gc_pass = trio.Event()

    def writer_opened(self, ino: int) -> None:
        self.writing.add(ino)
        f = self.files.get(ino)
        if f is not None:
            f.kept = True

    def writer_closed(self, ino: int) -> None:
        """The last writing handle of `ino` is gone: its entry may go once clean."""
        self.writing.discard(ino)
        f = self.files.get(ino)
        if f is not None:
            f.kept = False
            self._forget_if_clean(f)

    def changed_elsewhere(self, ino: int) -> None:
        """Another process changed the file: forget the size we keep, unless dirty data
        still needs the entry (then the file is ours: the mount holds its lease)."""
        f = self.files.get(ino)
        if f is not None:
            f.clean.clear()
            kept, f.kept = f.kept, False
            self._forget_if_clean(f)
            f.kept = kept

    def grown(self, ino: int, size: int) -> None:
        """The core grew the file (a copy into it): writes past the old end must not take
        the new range for a hole."""
        f = self.files.get(ino)
        if f is not None:
            f.size = max(f.size, size)
            f.clean.clear()

    # --- state ---------------------------------------------------------------------------

    def cached(self, ino: int) -> FileCache | None:
        return self.files.get(ino)

    async def _file(self, ino: int) -> FileCache:
        f = self.files.get(ino)
        if f is None:
            inode = await self.run(self.store.getattr, ino)
            f = self.files.get(ino)  # another writer may have made it meanwhile
            if f is None:
                f = FileCache(ino, inode.size, bool(inode.flags & InodeFlags.FIXED_SIZE),
                              kept=ino in self.writing)
                # Sets of an earlier entry may be uncovered: what came since is not known.
                f.unjournaled_all = self.journal is None or not self.journal.uncovered(ino)
                self.files[ino] = f
        return f

    def _streamed(self, n: int) -> None:
        self.streamed += n
        if self.streamed >= self.batch:
            self.budget.press()

    def _nothing_flushable(self) -> bool:
        """Whether every file holding dirty data has a flush failure its writer has not heard
        of yet (the flusher leaves those alone) and no commit is in flight."""
        holders = [f for f in self.files.values() if f.dirty or f.flushing]
        return bool(holders) and all(f.error is not None and not f.flushing for f in holders)

    # --- writes and reads ----------------------------------------------------------------

    async def write(self, ino: int, offset: int, data: bytes) -> int:
        while True:
            f = await self._file(ino)
            # Pinned: while this write awaits room, a flush may empty the cache; it must not
            # forget it, or these chunks would land in an orphan and never be flushed.
            f.pins += 1
            try:
                return await self._write(f, offset, data)
            except _Discarded:
                continue  # truncated or dropped meanwhile (O_TRUNC, swap): start afresh
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
        await self.budget.reserve(
            len(data), sum(1 for i in range(first, last + 1) if i not in f.dirty),
            lambda: self._raise_error(f), self._nothing_flushable)
        if self.files.get(f.ino) is not f:
            raise _Discarded()
        # A write within one chunk is its own piece: a view of it would be two more objects
        # for the cyclic GC to walk for as long as the patch is dirty (100,000s of them under
        # 4 KiB random writes, and a full collection walks them all on the loop thread).
        view = memoryview(data) if last > first or len(data) == cs else None
        for index in range(first, last + 1):
            cstart = index * cs
            lo = max(offset, cstart) - cstart
            hi = min(end, cstart + cs) - cstart
            piece = data if view is None else view[cstart + lo - offset: cstart + hi - offset]
            current = f.dirty.get(index)
            if lo == 0 and hi == cs:
                assert isinstance(piece, memoryview)
                if current is None:
                    self.budget.add(cs, 1)
                    f.clean.pop(index, None)
                else:
                    self.budget.add(cs - self.budget.cost(current))
                f.dirty[index] = piece  # zero-copy: keeps pyfuse3's buffer alive
                self._streamed(1)
                continue
            if current is None:
                below = f.flushing.get(index)
                if cstart >= f.size or (f.replacing and below is None):
                    current = bytearray()  # nothing stored here yet: the rest reads as zeros
                elif below is not None and not isinstance(below, Patch):
                    current = bytearray(below)
                elif index in f.clean:
                    current = f.clean.pop(index)  # the stored chunk, from memory
                else:
                    current = Patch()  # the flush lays it onto the stored chunk
                f.dirty[index] = current
                self.budget.add(self.budget.cost(current), 1)
            elif isinstance(current, memoryview):
                current = f.dirty[index] = bytearray(current)
            if isinstance(current, Patch):
                before = current.cost
                current.put(lo, piece)
                if current.covers(0, cs):
                    f.dirty[index] = current.data
                    self.budget.add(cs - before)
                else:
                    self.budget.add(current.cost - before)
                continue
            if len(current) < hi:
                current.extend(bytes(hi - len(current)))
            current[lo:hi] = piece
        f.size = max(f.size, end)
        f.mtime_ns = f.ctime_ns = time.time_ns()
        if not f.first_dirty:
            f.first_dirty = time.monotonic()
        if f.unjournaled_all and self.journal is not None:
            f.unjournaled.append((offset, data))  # pyfuse3's bytes: immutable, no copy
            f.unjournaled_bytes += len(data)
            if f.unjournaled_bytes > JOURNAL_LIMIT:
                self._untrack(f)
        return len(data)

    async def read(self, ino: int, offset: int, size: int) -> Readout:
        """The bytes, or pieces of them in order for FUSE's reply to gather."""
        f = self.files.get(ino)
        if f is None:
            return await self._read_store(ino, offset, size)
        end = min(offset + size, f.size)
        if offset >= end:
            return b""
        first, last = offset // self.cs, (end - 1) // self.cs
        # What the cache holds now, bottom layer first. A flush may commit some of it and
        # let go of it while the store read below runs, and that read may still see the
        # old chunk: so these are laid on after it, then whatever is cached by then.
        held = f.layers(first, last)
        if f.replacing or f.complete(first, last):
            # Complete cached chunks cover it all, or the stored ones are the old file's.
            out = bytearray(end - offset)
        else:
            out = joined(await self._read_store(ino, offset, end - offset))
            if len(out) < end - offset:
                out.extend(bytes(end - offset - len(out)))
            held += f.layers(first, last)
        overlay(out, held, offset, end, self.cs)
        return out

    async def _read_store(self, ino: int, offset: int, size: int) -> Readout:
        if self.readmap is None:
            return await self.run(self.store.read, ino, offset, size)
        data = self.readmap.read(ino, offset, size)
        if data is not None:
            return data
        stamp = self.readmap.stamp(ino)
        data, file_size, locations = await self.run(self.store.read_located, ino, offset, size)
        self.readmap.learn(stamp, ino, file_size, offset, size, locations)
        return data

    # --- flushing ------------------------------------------------------------------------

    async def flush(self, ino: int, closing: int | None = None, released: bool = False
                    ) -> None:
        """Commit the file's dirty data to the store (durably); raises the core's error if
        it cannot. `closing`: the handle whose close or release (`released`) asks. While
        another handle's O_TRUNC waits for its commit, the file is being rewritten through
        that handle, and its own close commits the new contents whole: other closes commit
        nothing. (The kernel sends a handle's release after close(2) returns, so the release
        of one `cp` over a file comes after the next one's open: committing then showed the
        object empty, or cut at the new contents' first write.) Nor does a close of the
        truncating handle before anything is written: that is a duplicate descriptor's
        (`cmd > file`: the shell closes its own after handing a copy to the command), and
        the truncation waits for the contents, or for the handle's release."""
        f = self.files.get(ino)
        if f is None:
            await self._cover_forgotten(ino)
            return
        async with holding(f.lock):
            if closing is not None and f.truncating_handle not in (None, closing):
                self._raise_error(f)
                return
            if (closing is not None and not released and f.truncating_handle == closing
                    and not f.dirty and not f.flushing):
                return
            await self._flush_locked(f)

    def handle_closed(self, ino: int, handle: int) -> None:
        """A handle is released (after its close's flush, which may have failed): a pending
        truncation it made is now any closer's to commit."""
        f = self.files.get(ino)
        if f is not None and f.truncating_handle == handle:
            f.truncating_handle = None

    def _replaced(self, f: FileCache) -> None:
        f.replacing, f.truncating_handle = False, None

    async def sync(self, ino: int) -> None:
        """fsync: make the file's writes durable, through the journal while they are few."""
        f = self.files.get(ino)
        if f is None:
            await self._cover_forgotten(ino)
            return
        async with holding(f.lock):
            if self.journal is None or not f.unjournaled_all:
                await self._flush_locked(f)
                return
            # No commit of the file may run while the set is written: the set's base
            # version must be the last one this mount stamped (vfsd/store/journal.py).
            await self._settle(f)
            self._raise_error(f)
            if not f.unjournaled:
                return
            writes, f.unjournaled = f.unjournaled, []
            size, f.unjournaled_bytes = f.unjournaled_bytes, 0
            quick = size <= INLINE_JOURNAL_LIMIT and not self.committing
            run = self.inline.run if quick else self.run
            try:
                await run(self.journal.append, f.ino, writes, f.size,
                          f.mtime_ns or time.time_ns())
            except BaseException:
                f.unjournaled[:0] = writes
                f.unjournaled_bytes += size
                raise

    async def _cover_forgotten(self, ino: int) -> None:
        """A file with no cache entry has nothing dirty: background batches committed all
        of it. Sets of it still in the journal are older than those bytes; see Journal.cover."""
        if self.journal is not None and self.journal.uncovered(ino):
            await self.run(self.journal.cover, ino, self.journal.newest_set(ino))

    def _raise_error(self, f: FileCache) -> None:
        if f.error is not None:
            error, f.error = f.error, None
            raise error

    def _untrack(self, f: FileCache) -> None:
        f.unjournaled, f.unjournaled_bytes, f.unjournaled_all = [], 0, False

    async def _flush_locked(self, f: FileCache) -> None:
        await self._settle(f)
        self._raise_error(f)
        # Everything written so far is committed once this returns: the file's journal
        # sets are covered, and the next set starts from here.
        covers = self.journal.newest_set(f.ino) if self.journal else 0
        f.unjournaled, f.unjournaled_bytes, f.unjournaled_all = [], 0, True
        if f.dirty or f.replacing:
            try:
                await self._commit(f, self._take(f, list(f.dirty)), covers=covers)
            except BaseException as e:
                self._untrack(f)  # the writes it took are dirty again, and in no set
                if isinstance(e, StoreError):
                    f.error = None  # reported here, to this caller; the chunks stay dirty
                raise
        elif covers and self.journal is not None and self.journal.uncovered(f.ino):
            await self.run(self.journal.cover, f.ino, covers)
        self._forget_if_clean(f)

    async def _settle(self, f: FileCache) -> None:
        """Wait until no background batch of `f` is being committed."""
        while f.batches:
            await f.settled.wait()

    async def _start_batch(self, nursery: trio.Nursery, ino: int, whole_only: bool) -> int:
        """Take one batch of the file's dirty chunks, oldest first (or a full batch of only
        complete ones), and commit it in the background; returns how many chunks it took.
        Batches hold disjoint chunks that no other flush holds, so they commit in any order;
        at most BATCHES_IN_FLIGHT run at once."""
        await self.slots.acquire()
        f = self.files.get(ino)
        chosen: list[int] = []
        # While an O_TRUNC waits for its commit, the batch that makes it runs alone: a batch
        # committed beside it could land first and have its chunks dropped.
        if (f is not None and f.error is None and not f.lock.locked()
                and not (f.replacing and f.batches)):
            chosen = [i for i, chunk in f.dirty.items() if i not in f.flushing
                      and (not whole_only or not isinstance(chunk, Patch))][: self.batch]
            if whole_only and len(chosen) < self.batch:
                chosen = []  # not worth a commit of its own yet
        if not chosen or f is None:
            self.slots.release()
            return 0
        if not f.batches:
            f.settled = trio.Event()
        f.batches += 1
        nursery.start_soon(self._run_batch, f, self._take(f, chosen))
        return len(chosen)

    async def _run_batch(self, f: FileCache, taken: Taken) -> None:
        try:
            await self._commit(f, taken)
        except StoreError:
            pass  # kept dirty, reported to the file's next fsync
        except Exception:
            # A bug, not the disk: the chunks are back in dirty; keep the mount serving.
            log.exception("event=flush-crashed ino=%d", f.ino)
        finally:
            self.slots.release()
            f.batches -= 1
            if not f.batches:
                f.settled.set()
                self._forget_if_clean(f)

    def _take(self, f: FileCache, indices: list[int]) -> Taken:
        """Move these dirty chunks to `flushing`, at once (no other flush can take them), and
        say what size goes with them. With all of a file's dirty chunks, and no other batch in
        flight, goes the exact size; a part only grows the file over the chunks it carries."""
        everything = len(indices) == len(f.dirty) and not f.flushing
        snapshot = {i: f.dirty.pop(i) for i in indices}
        f.flushing.update(snapshot)
        # No journal set of the file is being written now: `sync` holds the file's lock,
        # and batches are taken only while nobody holds it.
        includes = self.journal.newest_set(f.ino) if self.journal is not None else 0
        if everything:
            f.first_dirty = 0.0
            return Taken(snapshot, f.size, 0, includes, f.replacing)
        # Batches may commit in either order, so after a crash the size may cover chunks of
        # a batch that never committed: they read as zeros (holes), never as other bytes.
        return Taken(snapshot, None, min(f.size, (max(snapshot) + 1) * self.cs), includes,
                     f.replacing)

    async def _commit(self, f: FileCache, taken: Taken, covers: int = 0) -> None:
        """Make taken chunks durable; on a core error they go back to `dirty`. `covers`: the
        newest journal set of the file whose writes are all in `taken`."""
        snapshot = taken.chunks
        taken_bytes = sum(self.budget.cost(chunk) for chunk in snapshot.values())
        try:
            merged = await self._commit_when_room(f, taken, covers)
        except NotFound:
            log.info("event=flush-dropped ino=%d reason=deleted chunks=%d", f.ino, len(snapshot))
            self._replaced(f)  # nothing left to truncate: the entry may go once clean
            # Its journal sets too: a recovery drops them, and uncovered they would keep the
            # ring from ever starting a new lap.
            self._drop_sets(f.ino)
        except trio.Cancelled:
            # The mount is going down while the commit waits for a gc pass: nothing was
            # committed, and the unmount's flush_all must still find these chunks.
            self._keep_dirty(f, snapshot)
            raise
        except Exception as e:
            # Keep the data dirty (nothing is lost silently) and report to the next caller.
            self._keep_dirty(f, snapshot)
            f.error = e if isinstance(e, StoreError) else StoreError(f"flush failed: {e!r}")
            f.failures += 1
            if isinstance(e, NoSpace):
                self.budget.commit_refused()
            with trio.CancelScope(shield=True):  # the error, not Cancelled, goes up
                await self.budget.wake_writers()  # see CacheBudget.reserve
            now = time.monotonic()
            if f.failures == 1 or now - f.failure_logged >= FAILURE_LOG_SECONDS:
                # The flusher retries every commit interval until it succeeds or the file
                # goes: one line a minute, not one a second.
                f.failure_logged = now
                log.warning("event=flush-failed ino=%d failures=%d error=%s", f.ino,
                            f.failures, e)
            raise
        else:
            if taken.replacing:
                self._replaced(f)  # the store holds the new contents' first chunks now
            self._remember_clean(f, merged)
            if f.failures:
                log.info("event=flush-recovered ino=%d failures=%d", f.ino, f.failures)
                f.failures = 0
        finally:
            for index, chunk in snapshot.items():
                if f.flushing.get(index) is chunk:
                    del f.flushing[index]
            await self.budget.release(taken_bytes, len(snapshot))
        if not f.dirty:
            f.mtime_ns = f.ctime_ns = 0  # the store has them now, and later changes go there

    def _keep_dirty(self, f: FileCache, snapshot: dict[int, Chunk]) -> None:
        """Put the chunks of a commit that did not happen back under the newer writes."""
        for index, chunk in snapshot.items():
            if index in f.dirty:
                newer = f.dirty[index]
                newer_cost = self.budget.cost(newer)
                f.dirty[index] = stacked(chunk, newer)
                self.budget.add(self.budget.cost(f.dirty[index]) - newer_cost)
            else:
                f.dirty[index] = chunk
                self.budget.add(self.budget.cost(chunk), 1)
        if not f.first_dirty:
            f.first_dirty = time.monotonic()

    async def _commit_when_room(self, f: FileCache, taken: Taken, covers: int
                                ) -> dict[int, bytearray]:
        """The commit, retried after gc passes while the pool is full but gc is giving space
        back (dead bodies of overwrites wait in segments until gc compacts them): the writer
        waits for room, as at a full cache, instead of hearing ENOSPC from a disk that is
        mostly garbage. NoSpace once gc has nothing left to give, or after NO_SPACE_WAIT."""
        deadline = None
        while True:
            try:
                self.committing += 1
                try:
                    return await self.run(commit_flush, self.store, f.ino, taken,
                                          f.mtime_ns, f.ctime_ns, self.journal, covers)
                finally:
                    self.committing -= 1
            except NoSpace:
                if taken.replacing:
                    # The old contents and the new do not both fit: the truncation goes
                    # first, as an eager O_TRUNC would, so that the old bodies count no more
                    # against a quota and gc may take their space back.
                    await self.run(self.store.write_chunks, f.ino, {}, size=0, replacing=True,
                                   mtime_ns=f.mtime_ns or None, ctime_ns=f.ctime_ns or None)
                    self._replaced(f)
                    taken = taken._replace(replacing=False)
                    log.info("event=truncation-committed-alone ino=%d reason=no-space", f.ino)
                    continue
                now = trio.current_time()
                if not self.gc_reclaiming or (deadline is not None and now >= deadline):
                    raise
                if deadline is None:
                    deadline = now + NO_SPACE_WAIT
                    log.info("event=flush-waits-for-gc ino=%d chunks=%d", f.ino,
                             len(taken.chunks))
                with trio.move_on_at(deadline):
                    await self.gc_pass.wait()

    def _remember_clean(self, f: FileCache, merged: dict[int, bytearray]) -> None:
        if not f.kept:
            return
        for index, body in merged.items():
            if index not in f.dirty:
                f.clean.pop(index, None)
                f.clean[index] = body  # newest last
        while len(f.clean) > CLEAN_PER_FILE:
            del f.clean[next(iter(f.clean))]

    def _forget_if_clean(self, f: FileCache) -> None:
        if (not f.dirty and not f.flushing and not f.batches and f.error is None
                and not f.pins and not f.kept and not f.replacing
                and self.files.get(f.ino) is f):
            del self.files[f.ino]

    async def flush_all(self) -> None:
        for ino in list(self.files):
            try:
                await self.flush(ino)
            except StoreError:
                pass  # logged; kept dirty and reported to the file's next fsync
        if self.journal is not None:
            # Files background batches committed whole and then forgotten: their sets are
            # covered now, so a clean unmount leaves no journal to replay.
            await self._cover_settled()

    async def discard(self, ino: int) -> None:
        """Forget what the cache and the journal hold of a file that is gone (deleted, or
        freed at its last close): a recovery drops the sets of a file that no longer exists.

        Waits for a flush in flight, so nothing it was writing lands afterwards."""
        f = self.files.get(ino)
        if f is None:
            # Background batches committed all of it; its sets may still be uncovered.
            self._drop_sets(ino)
            return
        async with f.lock:
            await self._settle(f)
            dropped, entries = self._forget(f)
            # Under the lock: no fsync of the file is appending a set right now.
            self._drop_sets(ino)
        await self.budget.release(dropped, entries)

    async def drop_contents(self, ino: int, change: Callable[[], Inode]) -> Inode:
        """Run `change` in a worker, a store change that drops the file's contents (the
        truncation of an eager O_TRUNC, the swap file's hole punch at its last close), then
        forget what the cache holds of the file. In that order, and with the file's flushes
        kept out: the change's own commit records that the file's journal sets need no
        replay, so a change that fails loses nothing, and no flush lands after it."""
        while (f := self.files.get(ino)) is not None:
            async with f.lock:
                await self._settle(f)
                if self.files.get(ino) is not f:
                    continue  # forgotten meanwhile: look again
                inode = await self.run(self._commit_dropping, ino, change)
                dropped, entries = self._forget(f)
            await self.budget.release(dropped, entries)
            return inode
        return await self.run(self._commit_dropping, ino, change)

    def _commit_dropping(self, ino: int, change: Callable[[], Inode]) -> Inode:
        """In a worker: `change` as a commit that covers every journal set of `ino`."""
        if self.journal is None:
            return change()
        with self.journal.committing(ino, (), covers=self.journal.newest_set(ino)):
            return change()

    def _forget(self, f: FileCache) -> tuple[int, int]:
        """Drop `f` and its dirty chunks; returns what they held, for `CacheBudget.release`."""
        if self.files.get(f.ino) is f:
            del self.files[f.ino]
        dropped = sum(self.budget.cost(chunk) for chunk in f.dirty.values())
        entries, f.dirty = len(f.dirty), {}
        return dropped, entries

    def _drop_sets(self, ino: int) -> None:
        """The file is gone: a recovery must not bring its writes back."""
        if self.journal is not None and self.journal.uncovered(ino):
            self.journal.dropped(ino, self.journal.newest_set(ino))

    async def punch(self, ino: int, offset: int, length: int,
                    punch_store: Callable[[int, int, int], Inode]) -> None:
        """fallocate(PUNCH_HOLE or ZERO_RANGE) within the file as the mount sees it. Whole
        chunks go from the store (`punch_store`, a hole punch of chunk-aligned ranges, which
        needs no room) and from the cache; the two partial edges are written zeros through
        the cache. Nothing dirty is committed first: on a full pool that commit is what
        fails, and a discard (a guest's TRIM) is what gives room back."""
        f = await self._file(ino)
        f.pins += 1  # the entry must outlive the awaits below, as a write's does
        try:
            async with holding(f.lock):
                await self._settle(f)  # no batch holds chunks of the range
                end = min(offset + length, f.size)
                if offset >= end:
                    return
                cs = self.cs
                first, last = offset // cs, (end - 1) // cs
                edges = sorted(i for i in {first, last}
                               if offset > i * cs or end < min((i + 1) * cs, f.size))
                whole = range(first + (first in edges), last + (last not in edges))
                freed = 0, 0
                if whole:
                    lo, hi = whole.start * cs, min(whole.stop * cs, f.size)
                    if not f.replacing:  # else the stored chunks are the old file's
                        await self.run(self._commit_punch, ino, lo, hi - lo, whole,
                                       punch_store)
                    freed = self._drop_range(f, whole, lo, hi)
                    if f.mtime_ns:  # the next commit stamps the cache's times
                        f.mtime_ns = f.ctime_ns = time.time_ns()
        finally:
            f.pins -= 1
        await self.budget.release(*freed)
        for index in edges:  # the kernel keeps this file's writes out until we return
            lo, hi = max(offset, index * cs), min(end, (index + 1) * cs)
            await self.write(ino, lo, bytes(hi - lo))

    def _commit_punch(self, ino: int, offset: int, length: int, chunks: range,
                      punch_store: Callable[[int, int, int], Inode]) -> None:
        """In a worker: the store's punch, then chunk marks so that a replay after a crash
        does not lay the journal's sets so far over the hole."""
        punch_store(ino, offset, length)
        if self.journal is not None:
            self.journal.mark_chunks(ino, chunks)

    def _drop_range(self, f: FileCache, chunks: range, lo: int, hi: int) -> tuple[int, int]:
        """Forget the dirty and clean chunks of a punched range, and the writes in it that
        the next fsync would journal (replayed after a crash, they would fill the hole).
        Returns what the dropped chunks held, for `CacheBudget.release`."""
        dropped = [i for i in f.dirty if i in chunks]
        freed = sum(self.budget.cost(f.dirty.pop(i)) for i in dropped)
        for i in [i for i in f.clean if i in chunks]:
            del f.clean[i]
        kept: list[tuple[int, bytes | memoryview]] = []
        for start, data in f.unjournaled:
            stop = start + len(data)
            if stop <= lo or start >= hi:
                kept.append((start, data))
                continue
            if start < lo:
                kept.append((start, memoryview(data)[: lo - start]))
            if stop > hi:
                kept.append((hi, memoryview(data)[hi - start:]))
        f.unjournaled = kept
        f.unjournaled_bytes = sum(len(data) for _start, data in kept)
        return freed, len(dropped)

    @contextlib.asynccontextmanager
    async def copying_into(self, ino: int, whole_chunks: bool) -> AsyncIterator[bool]:
        """Around copy_file_range into `ino`: its dirty data is committed first, and no flush
        of it runs beside the copy. Yields True when the copy must drop the file's old chunks
        in its own transaction: an O_TRUNC waits with nothing written since, and the copy
        shares whole chunks (`cp` over a file: the gateway sees the old contents, then the
        copy, never the empty file between)."""
        f = self.files.get(ino)
        if f is None:
            await self._cover_forgotten(ino)
            yield False
            return
        async with holding(f.lock):
            await self._settle(f)
            self._raise_error(f)
            # Only over an empty file: the copy's transaction sets the size to the copy's
            # end, and writes since the O_TRUNC may have left a size and no dirty chunk (a
            # hole punched over them keeps the size).
            if f.replacing and whole_chunks and not f.dirty and f.size == 0:
                yield True
                self._replaced(f)
            else:
                await self._flush_locked(f)
                yield False

    async def truncated(self, ino: int, size: int) -> None:
        f = self.files.get(ino)
        if f is not None:
            f.size = size
            f.clean.clear()

    async def replace_on_open(self, inode: Inode, handle: int) -> bool:
        """O_TRUNC of a file just opened for writing: for an ordinary file, forget what the
        cache holds of it and make its entry empty, the truncation left to the next commit.
        False when the caller must truncate in the store now, through `drop_contents`: a VM
        file (its flags say what a truncation may do), or a file with fsynced writes no
        commit holds yet (the truncation must cover their journal sets at once, or a replay
        would lay them over the new contents)."""
        ino = inode.ino
        if inode.flags & InodeFlags.FIXED_SIZE and inode.size:
            # Refused before anything is dropped: a running VM's unsynced writes stay.
            raise PermissionDenied("a fixed-size disk cannot shrink")
        if inode.flags != InodeFlags.NONE:
            return False
        while (f := self.files.get(ino)) is not None:  # a writer may make a new entry
            async with f.lock:
                await self._settle(f)
                # Under the lock: no fsync of the file is appending a set right now.
                if self.journal is not None and self.journal.uncovered(ino):
                    return False
                dropped, entries = self._forget(f)
            await self.budget.release(dropped, entries)
        if self.journal is not None and self.journal.uncovered(ino):
            return False
        f = FileCache(ino, 0, fixed_size=False, kept=ino in self.writing, replacing=True,
                      truncating_handle=handle)
        f.mtime_ns = f.ctime_ns = time.time_ns()  # O_TRUNC changes them, as a truncate does
        f.first_dirty = time.monotonic()  # committed within an interval, like a write
        self._untrack(f)  # the next fsync commits: a journal set cannot carry a truncation
        self.files[ino] = f
        return True

    async def run_flusher(self) -> None:
        """Flush streamed whole chunks in batches as they come, files dirty for a commit
        interval, and the oldest chunks under memory pressure."""
        async with trio.open_nursery() as batches:
            while True:
                await self.budget.wait_for_pressure(self.interval / 4)
                while self.streamed >= self.batch:
                    self.streamed = 0
                    for ino in [ino for ino, f in self.files.items() if f.dirty]:
                        while await self._start_batch(batches, ino, whole_only=True):
                            pass
                now = time.monotonic()
                due = sorted((f.first_dirty, ino) for ino, f in self.files.items()
                             if f.dirty or f.replacing)
                for first_dirty, ino in due:
                    f = self.files.get(ino)
                    # A file with a failed flush waits for its own fsync to hear of it.
                    if now - first_dirty >= self.interval and f is not None and f.error is None:
                        # Many dirty chunks (random writes: each a base read and a rewrite)
                        # go as background batches first, two at a time, in two workers;
                        # the flush then commits what is left, with the size.
                        while (len(f.dirty) > self.batch
                               and await self._start_batch(batches, ino, whole_only=False)):
                            pass
                        try:
                            await self.flush(ino)
                        except StoreError:
                            pass
                for _, ino in due:
                    while (self.budget.pressed()
                           and await self._start_batch(batches, ino, whole_only=False)):
                        pass
                if self.journal is not None and self.journal.half_full:
                    await self._cover_settled()
                    await self.run(self.journal.new_lap_if_idle)

    async def _cover_settled(self) -> None:
        """Before asking for a new lap: cover the sets of files that nothing holds dirty
        any more. Background batches committed all of such a file's writes but cover
        nothing, and the file's next flush, fsync or close would say so; a writer that
        then idles with its file open (a VM's disk, a log) kept its sets uncovered, and
        the ring could not start a new lap: every fsync on the mount grew the journal."""
        assert self.journal is not None
        for ino in self.journal.uncovered_files():
            f = self.files.get(ino)
            if f is None:
                await self._cover(ino)  # nothing dirty: batches committed all of it
                continue
            if f.lock.locked():
                continue  # a flush or an fsync of it is under way
            async with holding(f.lock):
                # Under the lock no set is appended and no flush starts; nothing dirty and
                # nothing in flight: the store holds every byte of every set written.
                if (self.files.get(ino) is f and not f.dirty and not f.flushing
                        and not f.batches and f.error is None and not f.replacing
                        and self.journal.uncovered(ino)):
                    await self._cover(ino)

    async def _cover(self, ino: int) -> None:
        """Journal.cover for the flusher and the unmount, which must outlive a full disk:
        the sets stay uncovered (replayed after a crash, harmlessly), and it is asked again."""
        assert self.journal is not None
        try:
            await self.run(self.journal.cover, ino, self.journal.newest_set(ino))
        except StoreError as e:
            log.warning("event=journal-cover-failed ino=%d error=%s", ino, e)
