"""fsck finds deliberate damage (a flipped segment byte, deleted index entries, wrong counters)
and `repair` fixes what can be fixed, reporting by path what is lost."""

from __future__ import annotations

import random

import pytest

from vfsd.store import Store, fsck
from vfsd.store.env import U64
from vfsd.store.errors import Corrupt
from vfsd.store.objects import Objects
from vfsd.store.records import CHUNK, ChunkLocation, chunk_key
from vfsd.store.repair import repair

pytestmark = pytest.mark.timeout(60)
KiB, MiB = 1 << 10, 1 << 20
CS = 64 * KiB


@pytest.fixture
def store(new_store) -> Store:
    store = new_store()
    rng = random.Random(11)
    store.write_file("bucket/dir/a.bin", rng.randbytes(8 * CS))
    store.write_file("bucket/b.bin", rng.randbytes(3 * CS + 100))
    store.write_file("bucket/dir/same.bin", store.read_file("bucket/b.bin"))  # dedup: shared
    store.write_file("plain/notes.txt", b"hello")
    return store


def chunk_of(store: Store, path: str, index: int) -> tuple[bytes, ChunkLocation]:
    ino = store.resolve(path).ino
    with store.env.read() as tx:
        digest = bytes(tx.get(tx.db.chunkmap, chunk_key(ino, index)))
        segment, offset, length, _refs = CHUNK.unpack(tx.get(tx.db.chunks, digest))
    return digest, ChunkLocation(segment, offset, length)


def flip_byte(store: Store, location: ChunkLocation, at: int = 100) -> None:
    path = store.segments.path(location.segment)
    with open(path, "r+b") as f:
        f.seek(location.offset + at)
        byte = f.read(1)
        f.seek(location.offset + at)
        f.write(bytes([byte[0] ^ 0xFF]))
    store.segments.forget({location.segment})


def damage(store: Store) -> list[str]:
    return fsck.check(store).damage


def test_repair_of_a_clean_store_changes_nothing(store, probe) -> None:
    report = repair(store)
    assert report.fixed == [] and not report.data_lost
    assert "nothing to repair" in report.summary()
    probe.fsck_clean(store)


def test_flipped_segment_byte_is_reported_with_paths(store, probe) -> None:
    digest, location = chunk_of(store, "bucket/b.bin", 1)
    flip_byte(store, location)
    problems = damage(store)
    assert len(problems) == 1
    assert digest.hex()[:16] in problems[0]
    assert "/bucket/b.bin" in problems[0] and "/bucket/dir/same.bin" in problems[0]
    with pytest.raises(Corrupt):
        store.read(store.resolve("bucket/b.bin").ino, CS, 10)
    assert bytes(store.read(store.resolve("bucket/b.bin").ino, 0, 10))  # other chunks read
    report = repair(store)
    assert report.corrupt == {digest.hex(): ["/bucket/b.bin", "/bucket/dir/same.bin"]}
    assert report.data_lost and "/bucket/dir/same.bin" in report.summary()
    # lost data stays reported; nothing else is wrong
    assert len(damage(store)) == 1


def test_corrupt_chunk_with_an_intact_copy_is_repointed(store, probe) -> None:
    data = store.read_file("bucket/dir/a.bin")
    digest, location = chunk_of(store, "bucket/dir/a.bin", 4)
    # an intact duplicate record elsewhere (as a compaction's copy or a racing upload leaves)
    store.segments.append([(digest, data[4 * CS:5 * CS])])
    flip_byte(store, location)
    assert damage(store)
    report = repair(store)
    assert report.corrupt == {} and report.recovered == 1
    assert store.read_file("bucket/dir/a.bin") == data
    probe.fsck_clean(store)


def test_deleted_chunk_entry_is_found_again_in_its_segment(store, probe) -> None:
    data = store.read_file("bucket/dir/a.bin")
    digest, _location = chunk_of(store, "bucket/dir/a.bin", 2)
    with store.env.write() as tx:
        tx.delete(tx.db.chunks, digest)
    problems = damage(store)
    assert any("referenced but not indexed" in p and "/bucket/dir/a.bin" in p for p in problems)
    assert any("physical byte counter" in p for p in problems)
    report = repair(store)
    assert report.recovered == 1 and not report.data_lost
    assert store.read_file("bucket/dir/a.bin") == data
    probe.fsck_clean(store)


def test_lost_chunk_becomes_a_hole_and_the_file_is_reported(store, probe) -> None:
    data = store.read_file("bucket/dir/a.bin")
    digest, location = chunk_of(store, "bucket/dir/a.bin", 5)
    with store.env.write() as tx:
        tx.delete(tx.db.chunks, digest)
    flip_byte(store, location)  # and no intact record of it anywhere
    assert damage(store)
    report = repair(store)
    assert [(d.paths, d.lost_chunks, d.lost_bytes) for d in report.damaged] == [
        (["/bucket/dir/a.bin"], [5], CS)]
    assert "/bucket/dir/a.bin: 1 chunk(s) lost" in report.summary()
    assert store.read_file("bucket/dir/a.bin") == data[:5 * CS] + bytes(CS) + data[6 * CS:]
    probe.fsck_clean(store)


@pytest.mark.parametrize("how", ["truncated", "deleted"])
def test_chunks_of_a_cut_or_missing_segment_become_holes(store, probe, how) -> None:
    """A segment file cut short or deleted (a QA pass): its chunks are gone, not corrupt, so
    repair makes them holes and names the files, and the store is clean afterwards."""
    data = store.read_file("bucket/dir/a.bin")
    _digest, location = chunk_of(store, "bucket/dir/a.bin", 5)
    path = store.segments.path(location.segment)
    if how == "truncated":
        with open(path, "r+b") as f:
            f.truncate(location.offset + 10)  # chunks 0-4 stay whole, 5 and on are cut
    else:
        path.unlink()
    store.segments.forget({location.segment})
    summary = fsck.check(store).summary()
    assert "problem" in summary and " -" not in summary  # no negative byte counts
    report = repair(store)
    assert report.corrupt == {} and report.damaged
    lost = {tuple(d.paths): d.lost_chunks for d in report.damaged}
    assert 5 in lost[("/bucket/dir/a.bin",)]
    got = store.read_file("bucket/dir/a.bin")
    for i in range(8):
        part = got[i * CS:(i + 1) * CS]
        assert part == (bytes(CS) if i in lost[("/bucket/dir/a.bin",)] else data[i * CS:(i + 1) * CS])
    probe.fsck_clean(store)


def test_deleted_key_index_entry_is_rebuilt(store, probe) -> None:
    objects = Objects(store)
    bucket = store.resolve("bucket").ino
    with store.env.write() as tx:
        assert tx.delete(tx.db.keys, U64.pack(bucket) + b"dir/a.bin")
        tx.put(tx.db.keys, U64.pack(bucket) + b"b.bin", U64.pack(999_999))  # a wrong one too
    problems = damage(store)
    assert any("missing from the key index" in p for p in problems)
    assert any("b.bin" in p and "is wrong" in p for p in problems)
    report = repair(store)
    assert any("key index" in line for line in report.fixed)
    probe.fsck_clean(store)
    listed = [o.key for o in objects.list_objects("bucket").objects]
    assert listed == [b"b.bin", b"dir/a.bin", b"dir/same.bin"]
    assert objects.head_object("bucket", b"b.bin").size == 3 * CS + 100


def test_deleted_directory_cookie_is_rebuilt(store, probe) -> None:
    parent = store.resolve("bucket/dir").ino
    entry = store.lookup(parent, b"a.bin")
    cookie = next(e.cookie for e in store.readdir(parent) if e.name == b"a.bin")
    with store.env.write() as tx:
        assert tx.delete(tx.db.dircookies, U64.pack(parent) + U64.pack(cookie))
    assert [e.name for e in store.readdir(parent)] == [b"same.bin"]  # invisible to readdir
    assert any("cookie" in p for p in damage(store))
    repair(store)
    probe.fsck_clean(store)
    assert sorted(e.name for e in store.readdir(parent)) == [b"a.bin", b"same.bin"]
    assert store.lookup(parent, b"a.bin").ino == entry.ino


def test_wrong_counters_and_refcounts_are_recomputed(store, probe) -> None:
    digest, _ = chunk_of(store, "bucket/b.bin", 0)
    ino = store.resolve("bucket/dir/a.bin").ino
    with store.env.write() as tx:
        segment, offset, length, refs = CHUNK.unpack(tx.get(tx.db.chunks, digest))
        tx.put(tx.db.chunks, digest, CHUNK.pack(segment, offset, length, refs + 5))
        tx.put(tx.db.meta, b"logical_bytes", U64.pack(1))
        tx.put(tx.db.meta, b"physical_bytes", U64.pack(2))
        raw = bytearray(tx.get(tx.db.inodes, U64.pack(ino)))
        raw[-8:] = U64.pack(12345)  # the inode's `stored` count (a file: no name follows)
        tx.put(tx.db.inodes, U64.pack(ino), bytes(raw))
    assert len(damage(store)) >= 4
    report = repair(store)
    assert len(report.fixed) >= 4 and not report.data_lost
    probe.fsck_clean(store)


def test_repair_reclaims_orphan_segment_bytes(new_store, probe, tmp_path) -> None:
    store = new_store(name="s")
    store.write_file("bucket/big", random.Random(3).randbytes(4 * MiB))
    store.unlink(store.resolve("bucket").ino, b"big")
    store.close()  # gives up its segment: gc may take it
    with Store.open(tmp_path / "s") as store:
        before = probe.segment_bytes(store)
        first = repair(store, grace=0)
        assert first.gc is not None and first.gc.retired >= 1
        second = repair(store, grace=0)
        assert second.gc is not None and second.gc.freed_bytes >= 4 * MiB
        assert probe.segment_bytes(store) <= before - 4 * MiB
        probe.fsck_clean(store)


def test_gc_leaves_a_corrupt_chunk_in_place(new_store, probe, tmp_path) -> None:
    """Compaction used to stop with Corrupt when a live record of the segment failed its CRC
    (found while writing repair): now it moves the rest and keeps the segment."""
    from vfsd.store import gc

    store = new_store(name="s")
    rng = random.Random(5)
    keep = rng.randbytes(4 * CS)
    store.write_file("bucket/keep", keep)
    store.write_file("bucket/big", rng.randbytes(2 * MiB))
    store.unlink(store.resolve("bucket").ino, b"big")
    _digest, location = chunk_of(store, "bucket/keep", 1)
    store.close()
    with Store.open(tmp_path / "s") as store:
        flip_byte(store, location)
        report = gc.collect(store, grace=0)
        assert report.compacted == 1 and report.retired == 0
        assert report.moved_bytes == 3 * CS
        data = store.read(store.resolve("bucket/keep").ino, 0, CS)
        assert bytes(data) == keep[:CS]
        with pytest.raises(Corrupt):
            store.read_file("bucket/keep")
        assert len(damage(store)) == 1  # the corrupt chunk, nothing else


def test_an_upload_whose_part_lost_its_segment_is_dropped(new_store, probe) -> None:
    """An unfinished multipart upload holds references like a file; when its part's segment
    is gone the upload cannot complete, so repair drops it and says so (a review found
    repair leaving fsck failing for ever)."""
    from vfsd.store.multipart import Uploads

    store = new_store()
    objects = Objects(store)
    objects.create_bucket("bkt")
    uploads = Uploads(objects)
    upload = uploads.create("bkt", b"big")
    part = uploads.upload_part("bkt", b"big", upload.upload_id, 1, [random.randbytes(3 * CS)])
    with store.env.read() as tx:
        location = ChunkLocation(*CHUNK.unpack(tx.get(tx.db.chunks, part.digests[0]))[:3])
    store.segments.path(location.segment).unlink()
    store.segments.forget({location.segment})
    assert damage(store)
    report = repair(store)
    assert any(f"bkt/big ({upload.upload_id})" in line for line in report.fixed)
    assert uploads.list_uploads("bkt")[0] == []
    probe.fsck_clean(store)
