"""The write-back cache against a real store, without the kernel in between: many writes
racing the flusher under a tight memory bound lose nothing and leak no room."""

import contextlib
import gc
import os

import pytest
import trio

from vfsd.fs import flushcommit
from vfsd.fs.patch import Patch
from vfsd.fs.writeback import WriteBack
from vfsd.store import ROOT_INO, Store
from vfsd.store.journal import Journal
from vfsd.store.journalrecovery import recover
from vfsd.store.leases import Holder

pytestmark = pytest.mark.timeout(120)
CS = 64 * 1024


async def run_in_worker(fn, *args):
    return await trio.to_thread.run_sync(fn, *args)


@contextlib.asynccontextmanager
async def journaled_cache(tmp_path):
    """A store with a file open for writing through a cache whose fsync journal belongs to
    a process that is gone, so that `crash_and_recover` replays it. Yields the store, the
    file's inode number, the cache and the journal."""
    child = await trio.lowlevel.open_process(["true"])
    await child.wait()
    with Store.init(tmp_path / "store") as store:
        ino = store.create(ROOT_INO, b"f").ino
        cache = WriteBack(store, run_in_worker, limit_bytes=256 * CS, interval=60)
        journal = cache.journal = Journal(store, Holder(child.pid, 1, "a mount"))
        cache.writer_opened(ino)
        yield store, ino, cache, journal


def crash_and_recover(store: Store, journal: Journal) -> None:
    journal.env.inode_hook = None  # the process dies here
    os.close(journal.fd)
    recover(store)


async def test_writers_parked_for_room_lose_nothing(tmp_path):
    with Store.init(tmp_path / "store") as store:
        ino = store.create(ROOT_INO, b"f").ino

        async def run(fn, *args, **kwargs):
            return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))

        cache = WriteBack(store, run, limit_bytes=16 * CS, interval=0.05)
        blocks = [os.urandom(CS) for _ in range(8)]
        expected = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.run_flusher)

            async def writer(first: int) -> None:
                for i in range(first, 256, 4):  # interleaved one-chunk and partial writes
                    data = blocks[i % 8] if i % 3 else blocks[i % 8][: CS // 2]
                    await cache.write(ino, i * CS, data)

            async with trio.open_nursery() as writers:
                for first in range(4):
                    writers.start_soon(writer, first)
            await cache.flush(ino)
            nursery.cancel_scope.cancel()
        for i in range(256):
            data = blocks[i % 8] if i % 3 else blocks[i % 8][: CS // 2] + bytes(CS // 2)
            expected += data
        del expected[255 * CS + CS // 2:]  # the last write is a half chunk: the file ends there
        assert cache.budget.held == 0 and not cache.files
        assert store.getattr(ino).size == len(expected)
        assert bytes(store.read(ino, 0, len(expected))) == bytes(expected)


@pytest.mark.parametrize("forgotten", [False, True], ids=["entry kept", "entry forgotten"])
async def test_an_fsync_after_background_batches_keeps_their_bytes_over_older_sets(
        tmp_path, forgotten):
    """A small write is fsynced (a journal set), then more than the journal takes is written
    over it and background batches commit all of it; then fsync. After a crash the old set
    must not be replayed over the bytes that fsync acknowledged."""
    async with journaled_cache(tmp_path) as (store, ino, cache, journal):
        cache.batch = 8
        await cache.write(ino, 0, b"A" * 4096)
        await cache.sync(ino)
        assert journal.uncovered(ino)
        for i in range(32):  # 2 MiB: past what the journal takes between fsyncs
            await cache.write(ino, i * CS, b"B" * CS)
        async with trio.open_nursery() as nursery:
            while await cache._start_batch(nursery, ino, whole_only=True):
                pass
        assert not cache.files[ino].dirty
        if forgotten:
            cache.writer_closed(ino)
            assert ino not in cache.files
        await cache.sync(ino)
        crash_and_recover(store, journal)
        assert bytes(store.read(ino, 0, 8)) == b"BBBBBBBB"


async def test_a_writer_idle_after_background_batches_lets_the_journal_lap(tmp_path):
    """A file's write is fsynced (a journal set), then whole chunks written over it go as a
    streamed background batch, which covers nothing, and its writer idles with the file
    open (a VM's disk, a log). Nothing is dirty, so no flush comes to cover the set: the
    ring never started a new lap, and every other file's fsyncs grew the journal file past
    its 16 MiB for as long as that file stayed open."""
    from vfsd.store.journal import RING_BYTES

    with Store.init(tmp_path / "store") as store:
        idle, busy = store.create(ROOT_INO, b"idle").ino, store.create(ROOT_INO, b"busy").ino
        cache = WriteBack(store, run_in_worker, limit_bytes=256 * CS, interval=0.2)
        journal = cache.journal = Journal(store, Holder(os.getpid(), 1, "a mount"))
        cache.batch = 8
        for ino in (idle, busy):
            cache.writer_opened(ino)
        await cache.write(idle, 0, b"A" * 4096)
        await cache.sync(idle)
        for i in range(8):
            await cache.write(idle, i * CS, b"B" * CS)
        async with trio.open_nursery() as nursery:
            while await cache._start_batch(nursery, idle, whole_only=True):
                pass
        assert not cache.files[idle].dirty and journal.uncovered(idle)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cache.run_flusher)
                for _ in range(24):  # 24 MiB of records: past the ring unless it laps
                    await cache.write(busy, 0, os.urandom(1 << 20))
                    await cache.sync(busy)
                    await cache.flush(busy)
                    await trio.sleep(0.1)  # the flusher asks for a lap every interval / 4
                nursery.cancel_scope.cancel()
        assert journal.lap > 1
        assert os.fstat(journal.fd).st_size == RING_BYTES
        journal.close()


@pytest.mark.parametrize("fails", [False, True], ids=["truncated", "truncation failed"])
async def test_an_eager_truncation_covers_the_fsynced_writes_only_by_its_own_commit(
        tmp_path, fails):
    """O_TRUNC of a file with fsynced writes no commit holds truncates in the store at once.
    Done, a crash must not replay those writes over the empty file; failed (a full disk),
    nothing is lost: the cache still reads them, and a commit of the file after (a chmod)
    does not record their sets as covered, so a crash still replays them."""
    from vfsd.store.errors import NoSpace

    async with journaled_cache(tmp_path) as (store, ino, cache, journal):
        await cache.write(ino, 0, b"A" * 4096)
        await cache.sync(ino)
        assert journal.uncovered(ino)
        assert not await cache.replace_on_open(store.getattr(ino), 1)  # eager: sets uncovered

        def truncate() -> object:
            if fails:
                raise NoSpace("the disk is full")
            return store.truncate(ino, 0)

        if fails:
            with pytest.raises(NoSpace):
                await cache.drop_contents(ino, truncate)
            assert bytes(await cache.read(ino, 0, 4096)) == b"A" * 4096
        else:
            await cache.drop_contents(ino, truncate)
            assert ino not in cache.files
        assert journal.uncovered(ino) == fails
        await run_in_worker(lambda: store.setattr(ino, mode=0o600))
        crash_and_recover(store, journal)
        assert bytes(store.read(ino, 0, 4096)) == (b"A" * 4096 if fails else b"")


@pytest.mark.parametrize("committed", [False, True], ids=["all cached", "committed first"])
async def test_a_punched_hole_stays_a_hole_after_a_crash(tmp_path, committed):
    """A hole punched with dirty data about (a guest's TRIM) commits nothing of that data;
    after an fsync and a crash the hole reads as zeros: the journal's older sets are not
    laid over it, and a write into it made before the punch is not journaled after it."""
    async with journaled_cache(tmp_path) as (store, ino, cache, journal):
        await cache.write(ino, 0, b"A" * (4 * CS))
        if committed:
            await cache.flush(ino)
            await cache.write(ino, 0, b"a" * (4 * CS))  # dirty again, over stored chunks
        await cache.sync(ino)  # a journal set holding all four chunks
        await cache.write(ino, CS + 10, b"B" * 100)  # not journaled yet, inside the hole
        await cache.write(ino, 3 * CS, b"C" * 100)  # outside it: kept
        await cache.punch(ino, CS // 2, 2 * CS, store.punch_hole)  # chunk 1 whole, 2 edges
        old = b"a" if committed else b"A"
        expected = (old * (CS // 2) + bytes(2 * CS) + old * (CS // 2) + b"C" * 100
                    + old * (CS - 100))
        assert bytes(await cache.read(ino, 0, 4 * CS)) == expected
        await cache.sync(ino)
        crash_and_recover(store, journal)
        assert bytes(store.read(ino, 0, 4 * CS)) == expected


async def test_a_write_within_a_chunk_is_kept_as_given_not_as_objects_for_the_gc(tmp_path):
    """A patch keeps a write within one chunk as the bytes pyfuse3 gave: a memoryview of it
    was two more objects tracked by the cyclic GC for as long as the write stayed dirty
    (100,000s under random writes, and a full collection walked them all on the loop
    thread). A write across a chunk boundary is still cut into views, not copied."""
    with _stored_file(tmp_path, 4) as (store, ino, base):
        cache = WriteBack(store, _in_thread, limit_bytes=16 * CS, interval=60)
        small = os.urandom(4096)
        await cache.write(ino, 8192, small)
        patch = cache.files[ino].dirty[0]
        assert isinstance(patch, Patch)
        assert patch.pieces[0][1] is small and not gc.is_tracked(small)
        await cache.write(ino, CS - 2048, small)  # the end of chunk 0, the start of chunk 1
        straddling = cache.files[ino].dirty[1]
        assert isinstance(straddling, Patch)
        assert isinstance(straddling.pieces[0][1], memoryview)
        await cache.flush(ino)
        expected = bytearray(base)
        expected[8192:8192 + 4096] = small
        expected[CS - 2048:CS + 2048] = small
        assert bytes(store.read(ino, 0, len(base))) == bytes(expected)


async def test_small_writes_count_their_bytes_not_whole_chunks(tmp_path):
    """4 KiB writes into 32 chunks hold 128 KiB: under a 1 MiB bound (and 64 chunks) nothing
    waits and nothing is flushed (a patch used to count as a whole chunk: the 17th write
    waited for a flush that nothing here runs)."""
    with _stored_file(tmp_path, 64) as (store, ino, base):
        cache = WriteBack(store, _in_thread, limit_bytes=16 * CS, interval=60)
        expected = bytearray(base)
        with trio.fail_after(10):
            for n, chunk in enumerate(range(0, 64, 4)):
                for k in range(2):
                    index = chunk + k
                    at = index * CS + (n * 4096 + k * 8192) % (CS - 4096)
                    data = os.urandom(4096)
                    await cache.write(ino, at, data)
                    expected[at:at + 4096] = data
        assert (cache.budget.entries, cache.budget.held) == (32, 32 * 4096)
        assert not cache.budget.pressure.is_set()
        assert bytes(store.read(ino, 0, len(base))) == base  # nothing flushed yet
        await cache.flush(ino)
        assert (cache.budget.entries, cache.budget.held) == (0, 0)
        assert bytes(store.read(ino, 0, len(base))) == bytes(expected)


async def test_a_flush_of_many_patches_lays_them_on_their_bases_a_slice_at_a_time(
        tmp_path, monkeypatch):
    monkeypatch.setattr(flushcommit, "PATCH_SLICE_BYTES", 4 * CS)
    with _stored_file(tmp_path, 12) as (store, ino, base):
        cache = WriteBack(store, _in_thread, limit_bytes=256 * CS, interval=60)
        expected = bytearray(base)
        for index in (9, 1, 5, 10, 2, 7, 0, 11, 4, 6):  # ten patches: slices of 4, 4 and 2
            data = os.urandom(100)
            await cache.write(ino, index * CS + 1000, data)
            expected[index * CS + 1000:index * CS + 1100] = data
        await cache.write(ino, 12 * CS, b"tail")  # grows the file: the last commit sets it
        expected += b"tail"
        assert await _commits_of_a_flush(store, cache, ino) == 3
        assert store.getattr(ino).size == len(expected)
        assert bytes(store.read(ino, 0, len(expected))) == bytes(expected)


async def test_a_slice_of_patches_holds_the_same_bytes_of_bases_whatever_the_chunk_size(
        tmp_path):
    """With 4 MiB chunks, a cache of 16 chunks takes 64 patches (four per chunk of the bound):
    laid on their bases by a count of chunks (1,024 before session 12), one flush would hold
    4x the cache in base buffers. A slice is PATCH_SLICE_BYTES of bases: one patch more than
    a slice holds goes in two commits."""

    cs = 4 << 20
    per_slice = max(1, flushcommit.PATCH_SLICE_BYTES // cs)
    patches = per_slice + 1
    with Store.init(tmp_path / "store", chunk_size=cs) as store:
        ino = store.create(ROOT_INO, b"f").ino
        expected = bytearray(os.urandom(patches * cs))
        store.write(ino, 0, expected)
        cache = WriteBack(store, _in_thread, limit_bytes=16 * cs, interval=60)
        for index in range(patches):
            data = os.urandom(100)
            await cache.write(ino, index * cs + 1000, data)
            expected[index * cs + 1000:index * cs + 1100] = data
        assert await _commits_of_a_flush(store, cache, ino) == 2
        assert bytes(store.read(ino, 0, len(expected))) == bytes(expected)


async def test_a_batch_waiting_for_gc_keeps_its_chunks_when_the_flusher_is_cancelled(
        tmp_path, caplog):
    """At unmount the mount cancels its flusher, then flushes what is dirty (vfsd/fs/mount.py,
    `serve`). A background batch that found the pool full and waits for gc's next pass must
    give its chunks back to the dirty ones: dropped, flush_all found nothing to write and the
    data was gone, with nothing logged."""
    caplog.set_level("INFO", logger="vfsd.writeback")
    with Store.init(tmp_path / "store") as store:
        ino = store.create(ROOT_INO, b"f").ino
        cache = WriteBack(store, _in_thread, limit_bytes=256 * CS, interval=60)
        cache.batch = 8
        store.set_quota(CS)
        data = os.urandom(8 * CS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.run_flusher)
            await cache.write(ino, 0, data)  # a batch's worth of whole chunks: streamed
            with trio.fail_after(10):
                while "event=flush-waits-for-gc" not in caplog.text:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        store.set_quota(None)
        await cache.flush_all()
        assert bytes(store.read(ino, 0, len(data))) == data
        assert (cache.budget.held, cache.budget.entries) == (0, 0)


@contextlib.contextmanager
def _stored_file(tmp_path, chunks):
    """A store holding one file of `chunks` random chunks: (store, its inode, its bytes)."""
    with Store.init(tmp_path / "store") as store:
        ino = store.create(ROOT_INO, b"f").ino
        base = os.urandom(chunks * CS)
        store.write(ino, 0, base)
        yield store, ino, base


async def _in_thread(fn, *args):
    return await trio.to_thread.run_sync(fn, *args)


async def _commits_of_a_flush(store, cache, ino):
    """Flush the file; how many commits to it that took (its change-log entries)."""
    from vfsd.store import changelog

    with store.env.read() as tx:
        before = changelog.last_seq(tx)
    await cache.flush(ino)
    with store.env.read() as tx:
        return sum(1 for change in changelog.since(tx, before) if change.ino == ino)


def test_a_patch_copies_the_small_edge_of_a_large_write():

    write = bytes(range(256)) * 4096  # 1 MiB
    small = os.urandom(4096)
    patch = Patch()
    patch.put(0, memoryview(write)[-4096:])  # the part of the write that fell in this chunk
    patch.put(8192, memoryview(small))  # a small write whole: no copy
    assert type(patch.pieces[0][1]) is bytes and patch.pieces[0][1] == write[-4096:]
    assert isinstance(patch.pieces[1][1], memoryview) and patch.pieces[1][1].obj is small
    assert patch.cost == 2 * 4096
