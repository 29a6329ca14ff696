"""Dedup and thin provisioning: identical chunks are stored once, zeros are never stored, and
every way of dropping data (zero overwrite, truncate, unlink, release of an orphan) gives the
space back in the index (physical bytes, chunk count). Segment bytes of dead chunks stay on
disk as orphans until compaction, so segment sizes are only checked where they must not grow.
"""

from __future__ import annotations

import random

import pytest

from vfsd.store import ROOT_INO, Store
from vfsd.store.errors import NotFound, StoreError
from vfsd.store.segments import ALIGN, HEADER

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CS = 64 * KiB


def write_in_pieces(store: Store, ino: int, offset: int, data: bytes, piece: int = MiB) -> None:
    view = memoryview(data)
    for at in range(0, len(data), piece):
        assert store.write(ino, offset + at, view[at:at + piece]) == len(view[at:at + piece])


@pytest.fixture
def ten_mib() -> bytes:
    return random.Random(1).randbytes(10 * MiB)


@pytest.mark.timeout(60)
def test_same_data_in_two_files_is_stored_once(new_store, probe, ten_mib) -> None:
    store = new_store()
    physical0, segments0 = store.physical_bytes(), probe.segment_bytes(store)
    a = store.create(ROOT_INO, b"a")
    write_in_pieces(store, a.ino, 0, ten_mib)
    assert store.physical_bytes() - physical0 == 10 * MiB
    assert probe.chunk_count(store) == 10 * MiB // CS
    grown = probe.segment_bytes(store) - segments0
    # each record adds a header, each append at most one block of padding (ALIGN)
    assert 10 * MiB <= grown <= 10 * MiB + (10 * MiB // CS) * (HEADER.size + ALIGN)

    b = store.create(ROOT_INO, b"b")
    write_in_pieces(store, b.ino, 0, ten_mib, piece=3 * CS)  # other pieces, same chunks
    assert store.physical_bytes() - physical0 == 10 * MiB
    assert probe.segment_bytes(store) - segments0 == grown  # not one body appended
    store.write_file("bkt/c", ten_mib)  # whole-object replace dedups the same way
    assert store.physical_bytes() - physical0 == 10 * MiB
    assert probe.segment_bytes(store) - segments0 == grown
    # Writes ending inside a chunk must store that partial chunk until the next write
    # completes it (those bodies become orphans), but the completed chunks dedup all the same.
    d = store.create(ROOT_INO, b"d")
    write_in_pieces(store, d.ino, 0, ten_mib, piece=3 * CS + 1000)
    assert store.physical_bytes() - physical0 == 10 * MiB
    for name in ("a", "b", "bkt/c", "d"):
        assert store.read_file(name) == ten_mib
    report = probe.fsck_clean(store)
    assert report.chunk_refs == 4 * (10 * MiB // CS)


@pytest.mark.timeout(60)
def test_same_data_twice_in_one_file_is_stored_once(new_store, probe, ten_mib) -> None:
    store = new_store()
    physical0, segments0 = store.physical_bytes(), probe.segment_bytes(store)
    f = store.create(ROOT_INO, b"f")
    second = 10 * MiB + 7 * CS  # chunk-aligned, with a hole between the copies
    write_in_pieces(store, f.ino, 0, ten_mib)
    write_in_pieces(store, f.ino, second, ten_mib)
    assert 10 * MiB <= store.physical_bytes() - physical0 <= 10 * MiB + CS
    assert (probe.segment_bytes(store) - segments0
            <= 10 * MiB + CS + (10 * MiB // CS + 2) * (HEADER.size + ALIGN))
    assert store.getattr(f.ino).size == second + 10 * MiB
    assert bytes(store.read(f.ino, 0, 10 * MiB)) == ten_mib
    assert bytes(store.read(f.ino, 10 * MiB, 7 * CS)) == bytes(7 * CS)
    assert bytes(store.read(f.ino, second, 10 * MiB)) == ten_mib
    probe.fsck_clean(store)


@pytest.mark.timeout(120)
def test_zeros_at_the_end_of_a_100_gib_file_store_nothing(new_store, probe) -> None:
    store = new_store()
    f = store.create(ROOT_INO, b"disk")
    store.write(f.ino, 5 * MiB, b"marker")  # one real chunk, so reads cross data and holes
    physical0, segments0 = store.physical_bytes(), probe.segment_bytes(store)
    chunks0 = probe.chunk_count(store)
    assert store.truncate(f.ino, 100 * GiB).size == 100 * GiB
    zeros = bytes(MiB)
    start = 100 * GiB - 512 * MiB  # half inside the file, half extending it
    for at in range(start, start + GiB, MiB):
        assert store.write(f.ino, at, zeros) == MiB
    assert store.getattr(f.ino).size == 100 * GiB + 512 * MiB
    assert store.physical_bytes() == physical0
    assert probe.segment_bytes(store) == segments0
    assert probe.chunk_count(store) == chunks0
    rng = random.Random(2)
    samples = [0, 5 * MiB - 10, 50 * GiB, start - 1, start, 100 * GiB - 1, 100 * GiB,
               100 * GiB + 512 * MiB - 4096] + [rng.randrange(100 * GiB) for _ in range(20)]
    for at in samples:
        got = bytes(store.read(f.ino, at, 4096))
        expected = bytearray(4096)
        lo, hi = max(at, 5 * MiB), min(at + 4096, 5 * MiB + 6)
        if lo < hi:
            expected[lo - at:hi - at] = b"marker"[lo - 5 * MiB:hi - 5 * MiB]
        assert got == expected, at
    assert bytes(store.read(f.ino, 100 * GiB + 512 * MiB - 10, 100)) == bytes(10)
    probe.fsck_clean(store)


@pytest.mark.timeout(60)
def test_overwriting_with_zeros_frees(new_store, probe) -> None:
    store = new_store()
    f = store.create(ROOT_INO, b"f")
    data = random.Random(3).randbytes(MiB)
    store.write(f.ino, 0, data)
    assert store.physical_bytes() == MiB
    store.write(f.ino, 0, bytes(MiB // 2))  # half the chunks become holes
    assert store.physical_bytes() == MiB // 2
    assert probe.chunk_count(store) == MiB // 2 // CS
    store.write(f.ino, MiB // 2 + 100, bytes(CS - 100))  # part of a chunk: rewritten, not freed
    assert store.physical_bytes() == MiB // 2
    store.write(f.ino, MiB // 2, bytes(MiB // 2))
    assert store.physical_bytes() == 0 and probe.chunk_count(store) == 0
    assert store.getattr(f.ino).size == MiB
    assert bytes(store.read(f.ino, 0, MiB)) == bytes(MiB)
    assert probe.fsck_clean(store).orphan_bytes > 0  # bodies wait for compaction


@pytest.mark.timeout(60)
def test_truncate_shrink_frees(new_store, probe) -> None:
    store = new_store()
    f = store.create(ROOT_INO, b"f")
    data = random.Random(4).randbytes(MiB)
    store.write(f.ino, 0, data)
    store.truncate(f.ino, 3 * CS + 100)
    assert store.physical_bytes() == 3 * CS + 100  # three chunks and the cut fourth
    assert probe.chunk_count(store) == 4
    store.truncate(f.ino, 2 * MiB)  # growing again adds a hole, and no stale bytes
    assert store.physical_bytes() == 3 * CS + 100
    assert bytes(store.read(f.ino, 0, 2 * MiB)) == data[:3 * CS + 100] + bytes(2 * MiB - 3 * CS - 100)
    store.truncate(f.ino, 0)
    assert store.physical_bytes() == 0 and probe.chunk_count(store) == 0
    probe.fsck_clean(store)


@pytest.mark.timeout(60)
def test_unlink_frees_only_unshared_chunks(new_store, probe) -> None:
    store = new_store()
    shared = random.Random(5).randbytes(4 * CS)
    own = random.Random(6).randbytes(4 * CS)
    a = store.create(ROOT_INO, b"a")
    b = store.create(ROOT_INO, b"b")
    store.write(a.ino, 0, shared + own)
    store.write(b.ino, 0, shared)
    store.link(b.ino, ROOT_INO, b"b2")
    assert store.physical_bytes() == 8 * CS
    store.unlink(ROOT_INO, b"a")
    assert store.physical_bytes() == 4 * CS  # b still references the shared chunks
    store.unlink(ROOT_INO, b"b")
    assert store.physical_bytes() == 4 * CS  # b2 is another name of b
    assert store.read_file("b2") == shared
    store.unlink(ROOT_INO, b"b2")
    assert store.physical_bytes() == 0 and probe.chunk_count(store) == 0
    with pytest.raises(NotFound):
        store.getattr(b.ino)
    probe.fsck_clean(store)


@pytest.mark.timeout(60)
def test_still_open_file_keeps_its_data_until_released(new_store, probe, tmp_path) -> None:
    store = new_store(name="s")
    data = random.Random(7).randbytes(3 * CS + 5)
    f = store.create(ROOT_INO, b"f")
    store.write(f.ino, 0, data)
    store.unlink(ROOT_INO, b"f", still_open=True)
    with pytest.raises(NotFound):
        store.lookup(ROOT_INO, b"f")
    assert store.physical_bytes() == len(data)
    assert bytes(store.read(f.ino, 0, len(data))) == data
    store.write(f.ino, len(data), b"more")  # an open handle may still write
    probe.fsck_clean(store)  # a parked orphan is not damage
    store.release_orphan(f.ino)
    assert store.physical_bytes() == 0 and probe.chunk_count(store) == 0
    with pytest.raises(NotFound):
        store.getattr(f.ino)

    # rename over an open file parks it the same way; a restart purges it
    g = store.create(ROOT_INO, b"g")
    store.write(g.ino, 0, data)
    h = store.create(ROOT_INO, b"h")
    store.rename(ROOT_INO, b"h", ROOT_INO, b"g", target_still_open=True)
    assert bytes(store.read(g.ino, 0, len(data))) == data
    store.close()
    store = Store.open(tmp_path / "s")
    try:
        assert store.physical_bytes() == len(data)
        assert store.purge_orphans() == 1
        assert store.physical_bytes() == 0
        assert store.lookup(ROOT_INO, b"g").ino == h.ino
        probe.fsck_clean(store)
    finally:
        store.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["read at -1", "seek data at -1", "seek hole at -1",
                                  "truncate to 2**64", "write at 2**64"])
def test_out_of_range_offsets_are_store_errors(new_store, call) -> None:
    """Linux answers EINVAL/ENXIO/EFBIG; the core must answer with a StoreError (or, for
    SEEK_DATA/SEEK_HOLE, None for ENXIO), never another exception."""
    store = new_store()
    f = store.create(ROOT_INO, b"f")
    store.write(f.ino, 0, b"data")
    calls = {
        "read at -1": lambda: store.read(f.ino, -1, 10),
        "seek data at -1": lambda: store.seek(f.ino, -1, True),
        "seek hole at -1": lambda: store.seek(f.ino, -1, False),
        "truncate to 2**64": lambda: store.truncate(f.ino, 2**64),
        "write at 2**64": lambda: store.write(f.ino, 2**64, b"x"),
    }
    try:
        result = calls[call]()
    except Exception as e:  # noqa: BLE001 - anything but a StoreError is the bug
        assert isinstance(e, StoreError), f"{type(e).__module__}.{type(e).__name__}: {e}"
    else:
        assert call.startswith("seek") and result is None, f"returned {result!r}"
    assert store.read_file("f") == b"data"
