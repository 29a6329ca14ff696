"""Chunk bodies read in place through maps of segment files (vfsd/store/mapped.py): only from
the page cache, only when they check out, and unmapped once their segment may go."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

import pytest

from vfsd.store import Store, StoreError
from vfsd.store.records import ChunkLocation
from vfsd.store.segments import HEADER

CS = 65536


@pytest.fixture
def store(new_store: Callable[..., Store]) -> Store:
    return new_store()


def locations_of(store: Store, ino: int, size: int) -> dict[int, ChunkLocation]:
    return store.read_located(ino, 0, size)[2]


def evict(store: Store, segment: int) -> None:
    # The kernel does not drop pages a process has mapped on this advice (memory pressure
    # would unmap them): let go of the map first.
    store.segments.forget({segment})
    fd = os.open(store.segments.path(segment), os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def mapped_paths() -> set[str]:
    with open("/proc/self/maps") as maps:
        return {line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6}


def test_a_body_is_served_in_place_only_from_memory(store: Store) -> None:
    content = os.urandom(2 * CS)
    ino = store.write_file("f", content).ino
    location = locations_of(store, ino, len(content))[1]
    store.segments.read(location)  # in the page cache now
    view = store.segments.view_cached(location)
    assert view is not None and bytes(view) == content[CS:]
    view.release()
    evict(store, location.segment)
    assert store.segments.view_cached(location) is None, "touched a page not in memory"
    store.segments.read(location)
    assert bytes(store.segments.view_cached(location) or b"") == content[CS:]


def test_a_segment_that_grew_is_mapped_again(store: Store) -> None:
    first = store.write_file("a", os.urandom(CS)).ino
    early = locations_of(store, first, CS)[0]
    assert store.segments.view_cached(early) is not None  # maps the segment as it is now
    later_content = os.urandom(CS)
    later = locations_of(store, store.write_file("b", later_content).ino, CS)[0]
    assert later.segment == early.segment and later.offset > early.offset
    store.segments.read(later)
    assert bytes(store.segments.view_cached(later) or b"") == later_content


def test_a_damaged_record_is_left_to_the_usual_read(store: Store, probe) -> None:
    ino = store.write_file("f", os.urandom(CS)).ino
    location = locations_of(store, ino, CS)[0]
    probe.flip_bit(store, location, 1000)
    assert store.segments.view_cached(location) is None
    with pytest.raises(StoreError):
        store.segments.read(location)


def test_a_forgotten_segment_is_unmapped_once_its_last_view_goes(store: Store) -> None:
    ino = store.write_file("f", os.urandom(CS)).ino
    location = locations_of(store, ino, CS)[0]
    path = str(store.segments.path(location.segment))
    view = store.segments.view_cached(location)
    assert view is not None and path in mapped_paths()
    store.segments.forget({location.segment})
    assert path in mapped_paths() and len(bytes(view)) == CS  # a reply in flight still reads
    view.release()
    assert path not in mapped_paths(), "a map would keep a deleted segment's space"


def test_records_back_to_back_are_served_together_only_if_all_are_in_memory(
        store: Store) -> None:
    content = os.urandom(4 * CS)
    ino = store.write_file("f", content).ino
    locations = list(locations_of(store, ino, len(content)).values())
    assert all(b.segment == a.segment and b.offset == a.offset + a.length + HEADER.size
               for a, b in itertools.pairwise(locations)), "written in order: back to back"
    for location in locations:
        store.segments.read(location)
    bodies = store.segments.views_cached(locations)
    assert bodies is not None and b"".join(bodies) == content
    del bodies
    # Only the third record's pages leave the page cache: the whole answer must wait for it.
    third = locations[2]
    store.segments.forget({third.segment})
    fd = os.open(store.segments.path(third.segment), os.O_RDONLY)
    try:
        os.posix_fadvise(fd, third.offset, third.length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert store.segments.views_cached(locations) is None, "touched a page not in memory"
    assert store.segments.views_cached(locations[:2]) is not None
