"""Random page writes through the mount, as a guest makes them, are stored as page deltas
(vfsd/store/deltas.py): each chunk keeps its stored body and gains only the pages written,
until more than a quarter of its pages are, when it is rewritten whole. The file reads as
written on the mount, after a remount, and after a SIGKILL once fsync'd."""

from __future__ import annotations

import mmap
import os
import random
from pathlib import Path

import pytest
from mounting import Mount, fsck

from vfsd.store import Store, deltas
from vfsd.store.records import chunk_key

CHUNK = 64 * 1024
PAGE = deltas.PAGE
CHUNKS = 16


def slot_lengths(store_path: Path, name: str) -> dict[int, int]:
    """Chunk index -> length of its chunk-map value (32: a body, 64: a body and a delta)."""
    with Store.open(store_path) as s:
        ino = s.resolve(name).ino
        with s.env.read() as tx:
            return {index: len(raw) for index in range(CHUNKS)
                    for raw in [tx.get(tx.db.chunkmap, chunk_key(ino, index))] if raw}


def direct_pwrite(path: Path, writes: list[tuple[int, bytes]]) -> None:
    """O_DIRECT page writes and an fdatasync, as QEMU with cache=none issues them."""
    buffer = mmap.mmap(-1, PAGE)  # page-aligned, as O_DIRECT wants
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        for offset, data in writes:
            buffer[:] = data
            assert os.pwrite(fd, buffer, offset) == PAGE
        os.fdatasync(fd)
    finally:
        os.close(fd)


def read_direct(fd: int, size: int) -> bytes:
    buffer = mmap.mmap(-1, 1 << 20)
    out = bytearray()
    while len(out) < size:
        got = os.preadv(fd, [buffer], len(out))
        assert got > 0
        out += buffer[:got]
    return bytes(out)


@pytest.mark.timeout(120)
def test_page_writes_become_deltas_and_read_back(store_path: Path, tmp_path: Path) -> None:
    rng = random.Random(7)
    model = bytearray(rng.randbytes(CHUNKS * CHUNK))
    m = Mount(store_path, tmp_path / "mnt").start()
    try:
        (m.path / "disk").write_bytes(model)
        # Chunk i gets i % 7 pages: none, a few (a delta), or past a quarter (rewritten whole).
        writes = []
        for index in range(CHUNKS):
            for page in rng.sample(range(CHUNK // PAGE), index % 7):
                data = rng.randbytes(PAGE)
                offset = index * CHUNK + page * PAGE
                writes.append((offset, data))
                model[offset:offset + PAGE] = data
        rng.shuffle(writes)
        direct_pwrite(m.path / "disk", writes[:len(writes) // 2])
        direct_pwrite(m.path / "disk", writes[len(writes) // 2:])  # merged into the deltas
        assert (m.path / "disk").read_bytes() == model
    finally:
        m.stop()
    limit = deltas.max_pages(CHUNK)
    expected = {index: 64 if 0 < index % 7 <= limit else 32 for index in range(CHUNKS)}
    assert slot_lengths(store_path, "disk") == expected
    fsck(store_path)
    m = Mount(store_path, tmp_path / "mnt").start()
    try:
        # The first read goes through a worker; the second is gathered from the page cache
        # by the read map (vfsd/fs/readmap.py): base and delta records side by side.
        for _ in range(2):
            fd = os.open(m.path / "disk", os.O_RDONLY | os.O_DIRECT)
            try:
                assert read_direct(fd, len(model)) == model
            finally:
                os.close(fd)
        # Pages of a chunk that already has a delta, fsync'd, then the daemon killed.
        more = [(3 * CHUNK + page * PAGE, rng.randbytes(PAGE)) for page in (0, 15)]
        direct_pwrite(m.path / "disk", more)
        for offset, data in more:
            model[offset:offset + PAGE] = data
        m.kill()
        m = Mount(store_path, tmp_path / "mnt").start()
        assert (m.path / "disk").read_bytes() == model
    finally:
        m.stop()
    fsck(store_path)
