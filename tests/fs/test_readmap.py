"""Small reads answered on the event loop (vfsd/fs/readmap.py): from the page cache only,
never stale after a commit, and really used by a mount."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mounting import Mount

from vfsd.fs.readmap import ReadMap
from vfsd.store import Store

CS = 65536


@pytest.fixture
def store(tmp_path: Path):
    s = Store.init(tmp_path / "store")
    yield s
    s.close()


def joined(data: list[memoryview] | bytes | None) -> bytes | None:
    """A read map answer as the bytes FUSE's reply gathers from it."""
    if isinstance(data, list):
        return b"".join(data)
    return data


def read_through(readmap: ReadMap, store: Store, ino: int, offset: int, size: int) -> bytes:
    """What the mount does: the map if it can, else a worker read it learns from."""
    data = joined(readmap.read(ino, offset, size))
    if data is not None:
        return data
    stamp = readmap.stamp(ino)
    data, file_size, locations = store.read_located(ino, offset, size)
    readmap.learn(stamp, ino, file_size, offset, size, locations)
    return bytes(data)


def readmap_hits(m: Mount) -> int:
    """Reads the stopped mount answered from its read map."""
    return m.logged("readmap", "hits")


def drop_page_cache(store: Store) -> None:
    # The kernel keeps pages a process has mapped on this advice: let go of the maps first.
    store.segments.forget(set(store.segments.segment_sizes()))
    for path in store.config.segments_dir.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def test_known_chunks_are_read_from_the_page_cache_only(store: Store) -> None:
    content = os.urandom(3 * CS) + bytes(CS) + os.urandom(1000)  # chunk 3 is a hole
    ino = store.write_file("f", content).ino
    readmap = ReadMap(store)
    assert readmap.read(ino, 0, 4096) is None  # nothing known yet
    for offset in (0, CS - 100, 3 * CS + 5, 4 * CS):
        assert read_through(readmap, store, ino, offset, 4096) == content[offset:offset + 4096]
    drop_page_cache(store)
    assert readmap.read(ino, 100, 4096) is None, "waited for the disk, or read a stale page"
    assert read_through(readmap, store, ino, 100, 4096) == content[100:4196]  # reads it in
    for offset, size in ((100, 4096), (CS - 100, 200), (3 * CS + 5, 4096), (4 * CS, 4096),
                         (4 * CS + 900, 4096), (len(content), 10)):
        assert joined(readmap.read(ino, offset, size)) == content[offset:offset + size]
    assert readmap.read(ino, 0, 3 * CS) is None  # too many chunks for the loop
    assert readmap.hits >= 5  # the read at the end of the file needs no chunk


def test_reads_within_one_chunk(store: Store) -> None:
    """Reads within one chunk, every 4 KiB random read, take a path of their own
    (FileData.views_cached): inside a body, across the end of a short one, past it, in a hole."""
    ino = store.write_file("f", os.urandom(CS + 777)).ino
    store.truncate(ino, 3 * CS)  # chunk 1 keeps its 777-byte body, zeros after; chunk 2: a hole
    content = bytes(store.read(ino, 0, 3 * CS))
    assert content[CS + 777:] == bytes(2 * CS - 777)
    readmap = ReadMap(store)
    assert read_through(readmap, store, ino, 0, 3 * CS) == content  # learns every chunk
    for offset, size in ((5, 4096), (CS - 4096, 4096), (CS + 5, 100), (CS + 700, 200),
                         (CS + 1000, 4096), (2 * CS + 10, 4096), (3 * CS - 10, 4096)):
        assert joined(readmap.read(ino, offset, size)) == content[offset:offset + size], offset
    assert readmap.hits == 7


def test_a_commit_makes_the_map_forget(store: Store) -> None:
    ino = store.write_file("f", b"a" * CS).ino
    readmap = ReadMap(store)
    store.env.on_commit = readmap.forget_committed
    read_through(readmap, store, ino, 0, 10)
    assert joined(readmap.read(ino, 0, 10)) == b"a" * 10
    old = readmap.files[ino].chunks[0]
    store.write(ino, 0, b"bbb")
    assert old is not None and store.segments.read(old)  # still readable, from memory
    assert readmap.read(ino, 0, 10) is None
    assert read_through(readmap, store, ino, 0, 10) == b"bbbaaaaaaa"

    # A worker read that began before a commit must not record what it saw.
    stamp = readmap.stamp(ino)
    _data, size, locations = store.read_located(ino, 0, 10)
    store.truncate(ino, 5)
    store.segments.read(locations[0])  # the old record is in the page cache, readable
    readmap.learn(stamp, ino, size, 0, 10, locations)
    assert readmap.read(ino, 0, 10) is None
    assert read_through(readmap, store, ino, 0, 10) == b"bbbaa"


@pytest.mark.timeout(60)
def test_the_mount_serves_repeated_small_reads_from_the_map(store_path: Path,
                                                            tmp_path: Path) -> None:
    m = Mount(store_path, tmp_path / "mnt").start()
    try:
        content = os.urandom(4 * CS)
        (m.path / "f").write_bytes(content)
        fd = os.open(m.path / "f", os.O_RDONLY | os.O_DIRECT)
        try:
            for _ in range(3):
                for offset in (0, CS + 4096, 3 * CS):
                    assert os.pread(fd, 4096, offset) == content[offset:offset + 4096]
        finally:
            os.close(fd)
    finally:
        m.stop()
    assert readmap_hits(m) >= 6, m.output()


@pytest.mark.timeout(60)
def test_reads_gathered_from_pieces_match_the_file(store_path: Path, tmp_path: Path) -> None:
    # A read over chunks, a hole and a short last body is answered as a list of pieces that
    # pyfuse3 gathers into one reply (patches/pyfuse3-3.5.0-scatter-read-replies.patch).
    content = os.urandom(2 * CS + 100) + bytes(CS - 100) + bytes(2 * CS) + os.urandom(CS + 777)
    m = Mount(store_path, tmp_path / "mnt").start()
    try:
        (m.path / "f").write_bytes(content)
        fd = os.open(m.path / "f", os.O_RDONLY | os.O_DIRECT)
        try:
            for _ in range(2):  # the first pass teaches the map, the second is served by it
                assert os.pread(fd, 1 << 20, 0) == content
                for offset, size in ((100, 3 * CS), (CS - 1, 2 * CS + 2), (5 * CS - 7, 4096)):
                    assert os.pread(fd, size, offset) == content[offset:offset + size]
        finally:
            os.close(fd)
    finally:
        m.stop()
    assert readmap_hits(m) >= 4, m.output()
