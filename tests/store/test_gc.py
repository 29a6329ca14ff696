"""gc gives disk space back: deleted and overwritten data leave the segment files."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from vfsd.store import ROOT_INO, Store, fsck, gc
from vfsd.store.errors import NoSpace
from vfsd.store.objects import Objects
from vfsd.store.records import U64, SegmentInfo

pytestmark = pytest.mark.timeout(300)
MiB = 1 << 20
GiB = 1 << 30


def disk_use(path: Path) -> int:
    return sum(e.stat().st_blocks * 512 for e in os.scandir(path / "segments"))


def collect_fully(store: Store) -> None:
    store.segments._seal_size = 0  # roll: the segments written so far become collectable
    store.write(store.create(ROOT_INO, b".roll").ino, 0, b"x")
    store.segments.claimed()  # the last one is given up as the next spare is made: wait
    gc.collect(store, grace=0.2)
    time.sleep(0.3)
    gc.collect(store, grace=0.2)


def test_delete_one_gib_and_gc_returns_the_space(tmp_path):
    with Store.init(tmp_path / "s") as store:
        start = disk_use(tmp_path / "s")
        f = store.create(ROOT_INO, b"big")
        for i in range(GiB // (4 * MiB)):
            store.write(f.ino, i * 4 * MiB, os.urandom(4 * MiB))
        assert disk_use(tmp_path / "s") >= GiB
        store.unlink(ROOT_INO, b"big")
        collect_fully(store)
        assert disk_use(tmp_path / "s") - start < 0.05 * GiB
        assert fsck.check(store).clean


def test_overwriting_a_disk_three_times_keeps_it_near_its_size(tmp_path):
    with Store.init(tmp_path / "s") as store:
        disk = store.create(ROOT_INO, b"disk")
        store.truncate(disk.ino, GiB)
        for _round in range(3):
            for i in range(GiB // (4 * MiB)):
                store.write(disk.ino, i * 4 * MiB, os.urandom(4 * MiB))
            gc.collect(store, grace=0.0)
        collect_fully(store)
        assert store.physical_bytes() == GiB + 1  # the disk, and collect_fully's 1-byte file
        assert disk_use(tmp_path / "s") < 1.1 * GiB
        assert fsck.check(store).clean


@pytest.mark.parametrize("upload", ["put_object", "upload_part", "replace"])
def test_an_upload_longer_than_a_segment_survives_gc_passes_while_it_streams(tmp_path, upload):
    """An upload stages its whole body before its one commit. The segments it fills and
    rolls past hold nothing committed yet; gc passes (the mount's and the gateway's run every
    few seconds) must leave them alone until the commit, or it finds its records deleted."""
    from vfsd.store.multipart import Uploads
    from vfsd.store.objects import Objects

    with Store.init(tmp_path / "s") as store:
        store.segments._seal_size = MiB  # a roll every 16 chunks
        objects = Objects(store)
        objects.create_bucket("bkt")
        blocks = [os.urandom(64 * 1024) for _ in range(200)]

        def body():
            for i, block in enumerate(blocks):
                yield block
                if i == 150:
                    gc.collect(store, grace=0)  # retires what it takes for empty...
                    gc.collect(store, grace=0)  # ...and deletes it: the grace period is over

        if upload == "put_object":
            ino = objects.put_object("bkt", b"big", body()).ino
        elif upload == "upload_part":
            multipart = Uploads(objects)
            upload_id = multipart.create("bkt", b"big").upload_id
            part = multipart.upload_part("bkt", b"big", upload_id, 1, body())
            ino = multipart.complete("bkt", b"big", upload_id, [(1, part.etag)]).ino
        else:
            ino = store.data.replace(ROOT_INO, b"big", body()).ino
        assert bytes(store.read(ino, 0, len(blocks) * 64 * 1024)) == b"".join(blocks)
        with store.env.read() as tx:  # the claims ended with the upload: gc may compact
            owned = [U64.unpack(k)[0] for k, v in tx.cursor(tx.db.segments)
                     if SegmentInfo.unpack(0, v).owner_pid == os.getpid()]
        assert sorted(owned) == sorted(store.segments.claimed())
        collect_fully(store)
        assert bytes(store.read(ino, 0, len(blocks) * 64 * 1024)) == b"".join(blocks)
        assert fsck.check(store).clean


def test_an_idle_process_gives_up_its_mostly_dead_segment(tmp_path):
    """gc leaves alone the segment a live process appends to; a process that deleted what
    it wrote and went idle kept it for ever (a QA pass: 224 MiB for 12 live bytes)."""
    with Store.init(tmp_path / "s") as store:
        start = disk_use(tmp_path / "s")
        f = store.create(ROOT_INO, b"big")
        store.write(f.ino, 0, os.urandom(32 * MiB))
        keep = store.create(ROOT_INO, b"small")
        store.write(keep.ino, 0, b"still here")
        store.unlink(ROOT_INO, b"big")
        gc.collect(store, grace=0)
        assert disk_use(tmp_path / "s") - start >= 32 * MiB  # owned and busy: kept
        assert not gc.release_idle_segment(store, idle=3600)  # not idle yet
        assert gc.release_idle_segment(store, idle=0)
        gc.collect(store, grace=0)  # moves "small" out, retires the segment
        gc.collect(store, grace=0)
        assert disk_use(tmp_path / "s") - start < 4 * MiB
        assert store.read_file("small") == b"still here"
        store.write(store.create(ROOT_INO, b"later").ino, 0, b"a new segment")
        assert store.read_file("later") == b"a new segment"
        assert fsck.check(store).clean


def test_gc_gives_space_back_on_a_full_disk(tmp_path):
    """The disk under the store full, its data deleted: gc must still give the space back.
    A pass compacted segments in id order, and moving the live records out of the first
    mostly-dead one needs an append, which failed with NoSpace and ended the pass before it
    retired the segments holding nothing live: the store stayed full for good (a QA pass,
    300 MiB tmpfs: every write ENOSPC after deleting 240 MiB)."""
    from test_segments import tmpfs  # tests/store/test_segments.py

    with tmpfs(tmp_path / "small", "40m") as mnt, Store.init(mnt / "s") as store:
        store.segments._seal_size = 4 * MiB
        keep = store.create(ROOT_INO, b"keep")
        gone = store.create(ROOT_INO, b"gone")
        kept = os.urandom(MiB)
        for i in range(4):  # the first segment: a quarter live once "gone" goes
            store.write(keep.ino, i * 256 * 1024, kept[i * 256 * 1024:(i + 1) * 256 * 1024])
            store.write(gone.ino, i * 768 * 1024, os.urandom(768 * 1024))
        fill = store.create(ROOT_INO, b"fill")
        offset = 0
        with pytest.raises(NoSpace):
            while True:
                store.write(fill.ino, offset, os.urandom(MiB))
                offset += MiB
        store.unlink(ROOT_INO, b"gone")
        store.unlink(ROOT_INO, b"fill")
        for _ in range(3):
            gc.collect(store, grace=0)
        data = os.urandom(16 * MiB)  # needs space only the deleted files can give back
        store.write(store.create(ROOT_INO, b"later").ino, 0, data)
        assert store.read_file("later") == data and store.read_file("keep") == kept
        assert fsck.check(store).clean


def test_overwrites_on_a_small_disk_never_leave_gc_without_room(tmp_path):
    """A file overwritten in place (a VM disk) on a disk about three times its size. Dead
    bodies filled the disk until a write failed with NoSpace; gc could then compact
    nothing, since moving a segment's live records needs room first, and the store stayed
    full for good (a QA pass: a 100 MiB disk image on a 300 MiB tmpfs, ENOSPC from the
    second overwrite on, 0 bytes free, gc logging "left uncompacted" every 2 s). New data
    now leaves gc the room of a segment, so a pass can always give space back."""
    from test_segments import tmpfs  # tests/store/test_segments.py

    rng = random.Random(7)
    with tmpfs(tmp_path / "small", "40m") as mnt, Store.init(mnt / "s") as store:
        store.segments._seal_size = 4 * MiB
        disk = store.create(ROOT_INO, b"disk")
        content = bytearray(os.urandom(12 * MiB))
        store.write(disk.ino, 0, content)
        chunk = 64 * 1024
        for _ in range(10 * 12 * MiB // chunk):  # ten overwrites of the disk, chunk by chunk
            offset = rng.randrange(12 * MiB // chunk) * chunk
            data = os.urandom(chunk)
            try:
                store.write(disk.ino, offset, data)
            except NoSpace:
                for _ in range(3):  # what the daemons' passes do every few seconds
                    gc.collect(store, grace=0)
                store.write(disk.ino, offset, data)  # now there is room
            content[offset:offset + chunk] = data
        assert store.read_file("disk") == content
        assert fsck.check(store).clean


def test_a_disk_filled_by_another_program_is_nospace_for_every_index_write(tmp_path):
    """The disk filled to the last block by something else: LMDB's commits then fail with
    ENOSPC, or with EIO when a write is cut short, which went up as a bare lmdb.Error (the
    gateway's 500 InternalError, with a traceback in its log). Both are NoSpace; gc passes
    between the writes (a gateway runs one when a PUT is refused) fail no other way."""
    from mounting import fill_disk, tmpfs  # tests/fs/mounting.py, on the path by conftest

    with tmpfs(tmp_path / "small", "128m") as mnt, Store.init(mnt / "s") as store:
        objects = Objects(store)
        objects.create_bucket("full")
        objects.put_object("full", b"kept", [b"kept"])
        ballast = fill_disk(mnt)
        failures = 0
        for i in range(64):  # new keys, new index pages
            gc.collect(store)
            try:
                objects.put_object("full", b"%03d" % i + b"k" * 200, [b""])
            except NoSpace:
                failures += 1
        assert failures > 32
        ballast.unlink()
        objects.put_object("full", b"later", [b"room again"])
        assert store.read_file("full/later") == b"room again"
        assert store.read_file("full/kept") == b"kept"
        assert fsck.check(store).clean
