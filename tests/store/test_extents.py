"""A file range as extents to send (FileData.extents): the same bytes `read` gives, holes and
short bodies as zeros, damage refused before anything is sent, descriptors and maps given back
on close."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest

from vfsd.store import Store, StoreError
from vfsd.store.segments import Extents

CS = 65536


@pytest.fixture
def store(new_store: Callable[..., Store]) -> Store:
    return new_store()


def joined(extents: Extents) -> bytes:
    return b"".join(bytes(view) for _fd, _offset, view in extents.pieces)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def sparse_file(store: Store) -> tuple[int, bytearray]:
    """Data, a hole of three chunks, data, a chunk written half (a short body), and a tail
    that ends inside a chunk."""
    rng = random.Random(7)
    size = 9 * CS + 1234
    expected = bytearray(size)
    ino = store.write_file("sparse", b"").ino
    for offset, length in ((0, 2 * CS + 100), (5 * CS, CS), (7 * CS, CS // 2),
                           (9 * CS, 1234)):
        data = rng.randbytes(length)
        store.write(ino, offset, data)
        expected[offset:offset + length] = data
    return ino, expected


def test_extents_hold_the_bytes_read_gives(store: Store) -> None:
    ino, expected = sparse_file(store)
    spans = [(0, len(expected)), (100, 3 * CS), (2 * CS + 50, 4 * CS), (7 * CS + 10, CS),
             (9 * CS + 1000, 10 * CS), (3 * CS, CS), (len(expected), CS)]
    for offset, size in spans:
        extents = store.data.extents(ino, offset, size)
        try:
            got = joined(extents)
            assert got == bytes(store.read(ino, offset, size)), (offset, size)
            assert got == bytes(expected[offset:offset + size]), (offset, size)
            assert len(extents) == len(got)
            for fd, at, view in extents.pieces:
                if fd >= 0:  # what a sender hands to sendfile: the same bytes in the file
                    assert os.pread(fd, len(view), at) == bytes(view)
        finally:
            extents.close()


def test_close_gives_back_descriptors_and_maps(store: Store) -> None:
    ino = store.write_file("f", os.urandom(4 * CS)).ino
    store.data.extents(ino, 0, CS).close()  # the store's own read handle is open from here
    before = open_descriptors()
    extents = store.data.extents(ino, 0, 4 * CS)
    assert open_descriptors() > before
    extents.close()
    assert open_descriptors() == before
    extents.close()  # twice is harmless


def test_a_damaged_record_is_refused_before_anything_is_sent(store: Store, probe) -> None:
    ino = store.write_file("f", os.urandom(3 * CS)).ino
    location = store.read_located(ino, 0, 3 * CS)[2][1]
    probe.flip_bit(store, location, 1000)
    before = open_descriptors()
    with pytest.raises(StoreError, match="checksum"):
        store.data.extents(ino, 0, 3 * CS)
    assert open_descriptors() == before
    extents = store.data.extents(ino, 0, CS)  # the chunk before it is whole
    extents.close()
