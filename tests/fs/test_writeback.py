"""The write-back cache against a real store, without the kernel in between: many writes
racing the flusher under a tight memory bound lose nothing and leak no room."""

import os

import pytest
import trio

from vfsd.fs.writeback import WriteBack
from vfsd.store import ROOT_INO, Store

pytestmark = pytest.mark.timeout(120)
CS = 64 * 1024


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
        assert cache.held == 0 and not cache.files
        assert store.getattr(ino).size == len(expected)
        assert bytes(store.read(ino, 0, len(expected))) == bytes(expected)


@pytest.mark.parametrize("forgotten", [False, True], ids=["entry kept", "entry forgotten"])
async def test_an_fsync_after_background_batches_keeps_their_bytes_over_older_sets(
        tmp_path, forgotten):
    """A small write is fsynced (a journal set), then more than the journal takes is written
    over it and background batches commit all of it; then fsync. After a crash the old set
    must not be replayed over the bytes that fsync acknowledged."""
    from vfsd.store.journal import Journal, recover
    from vfsd.store.leases import Holder

    child = await trio.lowlevel.open_process(["true"])  # a holder whose process is gone
    await child.wait()
    with Store.init(tmp_path / "store") as store:
        ino = store.create(ROOT_INO, b"f").ino

        async def run(fn, *args):
            return await trio.to_thread.run_sync(fn, *args)

        cache = WriteBack(store, run, limit_bytes=256 * CS, interval=60)
        journal = cache.journal = Journal(store, Holder(child.pid, 1, "a mount"))
        cache.batch = 8
        cache.writer_opened(ino)
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
        journal.env.inode_hook = None  # the process dies here
        os.close(journal.fd)
        recover(store)
        assert bytes(store.read(ino, 0, 8)) == b"BBBBBBBB"
