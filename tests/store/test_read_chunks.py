"""The bases a mount's flush patches (FileData.read_chunks): stored bodies, read in place into
buffers the caller owns, holes left out, damage refused."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest

from vfsd.store import Store, StoreError

CS = 65536


@pytest.fixture
def store(new_store: Callable[..., Store]) -> Store:
    return new_store()


def test_bodies_come_back_in_buffers_of_their_own_and_holes_stay_out(store: Store) -> None:
    rng = random.Random(3)
    ino = store.write_file("f", b"").ino
    # Chunks 0-2 written in order (one run in their segment), a hole at 3-4, chunk 5, and
    # chunk 7 ending early (a short body).
    store.write(ino, 0, rng.randbytes(3 * CS))
    store.write(ino, 5 * CS, rng.randbytes(CS))
    store.write(ino, 7 * CS, rng.randbytes(1000))
    bodies = store.read_chunks(ino, [7, 0, 3, 1, 2, 5, 4])
    assert sorted(bodies) == [0, 1, 2, 5, 7]
    for index, body in bodies.items():
        assert isinstance(body, bytearray)
        assert body == store.read_chunk(ino, index)
    assert len(bodies[7]) == 1000
    bodies[7].extend(bytes(10))  # no view of it is left alive: the caller may resize it
    bodies[0][:4] = b"mine"  # and change it without touching the store
    assert store.read(ino, 0, 4) != b"mine"


def test_a_damaged_base_is_refused(store: Store, probe) -> None:
    ino = store.write_file("f", os.urandom(2 * CS)).ino
    location = store.read_located(ino, 0, 2 * CS)[2][1]
    probe.flip_bit(store, location, 500)
    with pytest.raises(StoreError, match="checksum"):
        store.read_chunks(ino, [0, 1])
    assert list(store.read_chunks(ino, [0])) == [0]
