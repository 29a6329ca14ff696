"""Segment files on their own: aligned direct appends, the padding between them, and scans.

Appends go through O_DIRECT where the file system takes it (the repo's disk) and through the
page cache where it does not (tmpfs); both must give the same records back.
"""

from __future__ import annotations

import errno
import itertools
import os
import random
import resource
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import fill_disk, tmpfs  # tests/fs/mounting.py, on the path by conftest

from vfsd.store.chunks import chunk_hash
from vfsd.store.errors import Corrupt, NoSpace
from vfsd.store.mapped import MAX_MAPS
from vfsd.store.readers import MAX_READERS, SegmentReaders
from vfsd.store.segments import (
    ALIGN,
    FS_BLOCK,
    HEADER,
    LARGE_APPEND,
    STAGING_SIZE,
    LocalSegments,
)


def segments_in(directory: Path) -> LocalSegments:
    ids = iter(range(1, 1000))
    return LocalSegments(directory, lambda previous: next(ids))


@pytest.fixture(params=["disk", "tmpfs"])
def directory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    if request.param == "disk":
        yield tmp_path
        return
    with tmpfs(tmp_path / "tmpfs", "64m") as mnt:
        yield mnt


@pytest.mark.timeout(60)
def test_appends_start_aligned_and_scan_steps_over_the_padding(directory: Path) -> None:
    segments = segments_in(directory)
    rng = random.Random(7)
    # Odd lengths leave every append with a padded last block; one append spans the
    # staging buffer several times over.
    batches = [[rng.randbytes(n) for n in sizes]
               for sizes in ([1], [65536, 100], [777] * 5, [STAGING_SIZE // 3] * 7, [4095])]
    written = []
    for bodies in batches:
        end = segments._current_size  # where the previous append's padding ended
        locations = segments.append([(chunk_hash(b), b) for b in bodies])
        start = locations[0].offset - HEADER.size
        assert start % ALIGN == 0
        if sum(HEADER.size + len(b) for b in bodies) >= LARGE_APPEND:
            # Started on a file system block, past the zeros up to it (the big append
            # follows one that ended inside a block).
            assert end % FS_BLOCK != 0 and start == end + (-end % FS_BLOCK)
        else:
            assert start == end
        written += list(zip(bodies, locations))
    for body, location in written:
        assert segments.read(location) == body
        out = bytearray(len(body))
        segments.read_into(location, memoryview(out))
        assert out == body
    segment = written[0][1].segment
    assert segments.scan(segment) == [
        (location.offset, chunk_hash(body), len(body)) for body, location in written]
    assert os.path.getsize(segments.path(segment)) % ALIGN == 0
    segments.close()


@pytest.mark.timeout(60)
def test_scan_stops_at_garbage_after_the_padding(tmp_path: Path) -> None:
    segments = segments_in(tmp_path)
    body = b"x" * 1000
    location = segments.append([(chunk_hash(body), body)])[0]
    segments.close()
    path = segments.path(location.segment)
    with open(path, "ab") as f:
        f.write(b"\xff" * 100)  # a torn tail that is neither a record nor padding
    assert segments_in(tmp_path).scan(location.segment) == [
        (location.offset, chunk_hash(body), len(body))]


@pytest.mark.timeout(60)
def test_a_flipped_bit_in_a_directly_written_body_is_caught(tmp_path: Path) -> None:
    segments = segments_in(tmp_path)
    body = random.Random(3).randbytes(65536)
    location = segments.append([(chunk_hash(body), body)])[0]
    with open(segments.path(location.segment), "r+b") as f:
        f.seek(location.offset + 1234)
        byte = f.read(1)
        f.seek(location.offset + 1234)
        f.write(bytes([byte[0] ^ 1]))
    reader = segments_in(tmp_path)
    with pytest.raises(Corrupt):
        reader.read(location)
    segments.close()
    reader.close()


@pytest.mark.timeout(60)
def test_reads_of_many_bodies_take_runs_across_appends_and_segments(tmp_path: Path) -> None:
    ids = iter(range(1, 1000))
    segments = LocalSegments(tmp_path, lambda previous: next(ids), seal_size=300_000)
    rng = random.Random(11)
    bodies = [rng.randbytes(rng.choice([65536, 4096, 1000])) for _ in range(40)]
    locations = []
    for start in range(0, len(bodies), 7):  # several appends, padded between, over segments
        batch = bodies[start:start + 7]
        locations += segments.append([(chunk_hash(b), b) for b in batch])
    assert len({loc.segment for loc in locations}) > 1
    buffers = [memoryview(bytearray(len(b))) for b in bodies]
    order = list(range(len(bodies)))
    rng.shuffle(order[len(order) // 2:])  # in order first, then out of order
    segments.read_many_into([(locations[i], buffers[i]) for i in order])
    assert [bytes(b) for b in buffers] == bodies
    with open(segments.path(locations[3].segment), "r+b") as f:
        f.seek(locations[3].offset)
        byte = f.read(1)[0]
        f.seek(locations[3].offset)
        f.write(bytes([byte ^ 0x80]))
    with pytest.raises(Corrupt):
        segments.read_many_into([(locations[i], buffers[i]) for i in range(len(bodies))])
    segments.close()


@pytest.mark.timeout(60)
def test_an_abandoned_append_leaves_whole_records_and_the_next_append_scans_on(
        tmp_path: Path) -> None:
    segments = segments_in(tmp_path)
    rng = random.Random(5)
    first = [rng.randbytes(65536) for _ in range(100)]  # more than one staging buffer
    kept = segments.append([(chunk_hash(b), b) for b in first[:3]])
    with pytest.raises(RuntimeError), segments.appending() as appender:
        orphans = appender.add([(chunk_hash(b), b) for b in first[3:]])
        raise RuntimeError("the caller gives up (NoSpace, say)")
    later = [rng.randbytes(1000) for _ in range(3)]
    after = segments.append([(chunk_hash(b), b) for b in later])
    segment = kept[0].segment
    assert {loc.segment for loc in orphans + after} == {segment}
    scanned = {offset: (digest, length) for offset, digest, length in segments.scan(segment)}
    for body, location in zip(first[:3] + first[3:] + later, kept + orphans + after):
        assert scanned[location.offset] == (chunk_hash(body), len(body))
        assert segments.read(location) == body
    segments.close()


@pytest.mark.timeout(60)
def test_several_adds_make_one_append_with_one_padding(tmp_path: Path) -> None:
    segments = segments_in(tmp_path)
    bodies = [bytes([i]) * (1000 + i) for i in range(1, 40)]
    with segments.appending() as appender:
        locations = []
        for start in range(0, len(bodies), 7):
            locations += appender.add([(chunk_hash(b), b) for b in bodies[start:start + 7]])
    # back to back: each record right after the one before, padding only at the very end
    for before, after in itertools.pairwise(locations):
        assert after.offset == before.offset + before.length + HEADER.size
    size = os.path.getsize(segments.path(locations[0].segment))
    end = locations[-1].offset + locations[-1].length
    assert size % ALIGN == 0 and end <= size < end + ALIGN
    assert [segments.read(loc) for loc in locations] == bodies
    segments.close()


@pytest.mark.timeout(60)
def test_a_full_disk_is_nospace_and_later_appends_start_a_new_segment(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "2m") as mnt:
        segments = segments_in(mnt)
        first = segments.append([(chunk_hash(b"a" * 100), b"a" * 100)])[0]
        ballast = fill_disk(mnt, block=65536)
        big = random.Random(2).randbytes(STAGING_SIZE // 2)
        with pytest.raises(NoSpace):  # a StoreError, not a bare OSError
            segments.append([(chunk_hash(big), big)])
        ballast.unlink()
        later = segments.append([(chunk_hash(b"b" * 100), b"b" * 100)])[0]
        assert later.segment != first.segment  # the torn one is sealed
        assert segments.read(first) == b"a" * 100 and segments.read(later) == b"b" * 100
        segments.close()


@pytest.mark.timeout(120)
def test_a_store_with_more_segments_than_open_files_allowed_reads_them_all(
        tmp_path: Path) -> None:
    # Read handles are cached per segment. A store of a few hundred GiB has thousands of
    # segments, and a shell's soft limit on open files is often 1024: the cache must stay
    # bounded, or reads fail with EMFILE once enough segments were read.
    count = 3 * max(MAX_READERS, MAX_MAPS) // 2
    ids = iter(range(1, count + 10))
    segments = LocalSegments(tmp_path, lambda previous: next(ids), seal_size=1)  # one each
    bodies = [os.urandom(1000) for _ in range(count)]
    locations = [segments.append([(chunk_hash(b), b)])[0] for b in bodies]
    assert len({loc.segment for loc in locations}) == count
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    # Each map holds a descriptor of its own too (Python's mmap keeps a dup of it).
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + MAX_READERS + MAX_MAPS + 32, hard))
    try:
        for _ in range(2):
            assert [segments.read(loc) for loc in locations] == bodies
            for loc, body in zip(locations, bodies):
                assert bytes(segments.view_cached(loc) or b"") == body
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        segments.close()


def test_a_read_handle_pushed_out_while_in_use_closes_only_after_its_read(
        tmp_path: Path) -> None:
    for segment in range(1, 6):
        (tmp_path / f"{segment}.seg").write_bytes(bytes([segment]) * 10)
    readers = SegmentReaders(lambda s: tmp_path / f"{s}.seg", str, limit=2)
    with readers.reading(1) as fd:
        for segment in (2, 3, 4):  # 1 is the least recently used: pushed out
            with readers.reading(segment):
                pass
        readers.forget({1})
        with open(tmp_path / "other", "wb"):  # a new open must not take 1's number
            assert os.pread(fd, 10, 0) == bytes([1]) * 10
    with pytest.raises(OSError):
        os.fstat(fd)  # closed once its read was done
    assert len(readers) <= 2
    readers.close()


def test_segments_rolled_past_under_a_hold_are_given_up_when_the_last_hold_ends(
        tmp_path: Path) -> None:
    """held_until_committed: a roll keeps the claim on a segment an open operation wrote to;
    the claim goes when every operation that wrote there has ended, in whatever order."""
    ids = itertools.count(1)
    disowned: list[int] = []
    given_up: list[int | None] = []

    def allocate(previous: int | None) -> int:
        given_up.append(previous)
        return next(ids)

    segments = LocalSegments(tmp_path, allocate, seal_size=1, disown=disowned.append)
    record = [(chunk_hash(b"x"), b"x")]
    with segments.held_until_committed():
        with segments.held_until_committed():  # two operations with equal (empty) holds
            segments.append(record)  # segment 1
        segments.append(record)  # rolls past 1: the outer operation wrote there too
        segments.claimed()  # waits for the spare being made meanwhile
        assert 1 not in given_up and disowned == []
    assert disowned == [1]
    segments.append(record)  # rolls past 2, which no open operation holds
    segments.claimed()  # the spare being made now gives 2 up
    assert 2 in given_up
    segments.close()


class Allocations:
    """An `allocate` for LocalSegments that records who asked and what was given up, and can
    be told to fail."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.made: list[tuple[int, str]] = []  # (segment, thread that made it)
        self.given_up: list[int] = []
        self.fail_in: set[str] = set()  # thread names whose calls fail with ENOSPC

    def __call__(self, previous: int | None) -> int:
        thread = threading.current_thread().name
        if any(thread.startswith(name) for name in self.fail_in):
            raise OSError(errno.ENOSPC, "no room for a segment record")
        if previous is not None:
            self.given_up.append(previous)
        segment = next(self.ids)
        self.made.append((segment, thread))
        return segment


def test_a_process_that_fills_a_segment_gets_the_next_made_in_the_background(
        tmp_path: Path) -> None:
    """Making a segment (an LMDB transaction and a directory fsync in a store) happens off
    the append path once a process fills segments: the roll takes the spare."""
    allocate = Allocations()
    segments = LocalSegments(tmp_path, allocate, seal_size=1)
    record = [(chunk_hash(b"x"), b"x")]
    used = [segments.append(record)[0].segment for _ in range(4)]
    assert segments.claimed() == [4, 5]  # the last one appended to, and the spare
    assert used == [1, 2, 3, 4]
    here = threading.current_thread().name
    # The first segment, and the first roll past a full one, are made in place; then spares.
    assert [thread == here for _, thread in allocate.made] == [True, True, False, False, False]
    assert allocate.given_up == [1, 2, 3]  # each filled one, as the next is made
    segments.close()


def test_a_spare_that_could_not_be_made_is_made_at_the_roll(tmp_path: Path) -> None:
    allocate = Allocations()
    allocate.fail_in.add("vfsd-segment-maker")
    segments = LocalSegments(tmp_path, allocate, seal_size=1)
    record = [(chunk_hash(b"x"), b"x")]
    used = [segments.append(record)[0].segment for _ in range(4)]
    assert used == [1, 2, 3, 4]
    assert allocate.given_up == [1, 2, 3]  # the failed spares' ones too
    segments.claimed()  # the spare being made now fails before the roll's own making does
    allocate.fail_in = {threading.current_thread().name}
    with pytest.raises(NoSpace):
        segments.append(record)  # the roll's own making fails: the appender hears it
    allocate.fail_in = set()
    # The failed roll left no descriptor behind to be closed twice, and kept the filled
    # segment to give up at the next making.
    assert segments.append(record)[0].segment == 5
    assert allocate.given_up == [1, 2, 3, 4]
    segments.close()


def test_a_process_at_rest_gives_up_the_segments_failed_makings_left_owned(
        tmp_path: Path) -> None:
    """gc leaves owned segments alone: a filled segment that failed makings could not give
    up must go when the process rests, or its dead bytes stay on a full disk for good."""
    allocate = Allocations()
    disowned: list[int] = []
    segments = LocalSegments(tmp_path, allocate, seal_size=1, disown=disowned.append)
    record = [(chunk_hash(b"x"), b"x")]
    segments.append(record)  # 1, made in place
    allocate.fail_in = {"vfsd-segment-maker", threading.current_thread().name}
    with pytest.raises(NoSpace):
        segments.append(record)  # rolls past 1, and no making succeeds
    assert segments.claimed() == [1]  # filled, owned, waiting for a making
    assert segments.let_go_if_idle(0.0, lambda segment, size: True) is False  # no current
    assert disowned == [1] and segments.claimed() == []
    segments.close()
