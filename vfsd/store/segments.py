"""Segment files: append-only logs of chunk bodies.

A record is `header(magic, hash, length, codec, crc32c) + body`. Each process appends only to
segments it allocated itself (ids come from LMDB), so no two writers share a file and a torn
tail left by a crash lies in a segment nobody appends to again. Bodies become reachable only when
a later LMDB commit records their location, after `fdatasync`; bytes whose commit never happened
are orphans that fsck counts and compaction reclaims.

Appends bypass the page cache (O_DIRECT): the kernel's copy of written data into page cache
cost half of the mount's CPU in a sequential write here, while a user-space copy into one
aligned staging buffer, which the device then reads by DMA, costs far less. O_DIRECT wants
aligned offsets and lengths, so each append starts on an ALIGN boundary and its last block is
padded with zeros; records inside an append are packed as before, and `scan` steps over the
padding. Where O_DIRECT is refused (tmpfs), the same writes go through the page cache.

`SegmentStore` is the interface; `LocalSegments` keeps segments as files in one directory. A
distributed object store can stand behind the same interface later (DESIGN.md, "Beyond one
machine").
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import crc32c

from .errors import Corrupt, DiskError, NoSpace
from .mapped import MappedSegments
from .readers import SegmentReaders
from .records import ChunkLocation
from .segmentmaker import SegmentMaker

MAGIC = b"VCK1"
HEADER = struct.Struct(">4s32sIBI")  # magic, blake3 hash, body length, codec, crc32c of body
CODEC_RAW = 0
Body = bytes | bytearray | memoryview
DEFAULT_SEAL_SIZE = 64 * 1024 * 1024
ALIGN = 512  # O_DIRECT's unit on this machine class's disks (logical block size); see append
# A large append starts on a file system block: ext4 takes direct writes that begin inside a
# block at half the speed (measured: 64 MiB in 82-94 ms against 33-43 ms started on a block).
# Small appends keep ALIGN, where up to a block of padding each would cost space, not time.
FS_BLOCK = 4096
LARGE_APPEND = 256 * 1024
STAGING_SIZE = 4 * 1024 * 1024  # bytes per direct write: device-friendly, little memory
MAX_RUN = 512  # records per preadv: two buffers each, within IOV_MAX (1024)


def segment_name(segment: int) -> str:
    return f"{segment:016x}.seg"


class HeldSegment:
    """A segment file held open for sending records out of it: a duplicated descriptor (a
    segment gc deletes meanwhile stays readable) and a map of the span the records lie in,
    whose CRCs have been checked through it. Pages of the map count in the process's RSS
    until `close`."""

    __slots__ = ("_map", "base", "fd", "view")

    def __init__(self, fd: int, base: int, mapped: mmap.mmap):
        self.fd = fd
        self.base = base  # the segment offset the map starts at
        self._map = mapped
        self.view = memoryview(mapped)

    def body(self, location: ChunkLocation, lo: int, hi: int) -> memoryview:
        at = location.offset - self.base
        return self.view[at + lo:at + hi]

    def close(self) -> None:
        self.view.release()
        with contextlib.suppress(BufferError):  # a view still held: the map goes with it
            self._map.close()
        os.close(self.fd)


class Extents:
    """A byte range of a file as pieces to send: (descriptor, offset, bytes), the bytes in
    place in a map of the segment file at that offset, verified, or zeros (descriptor -1).
    Held until `close`: see HeldSegment."""

    __slots__ = ("_held", "pieces")

    def __init__(self, pieces: list[tuple[int, int, memoryview]], held: Iterable[HeldSegment]):
        self.pieces = pieces
        self._held = list(held)

    def __len__(self) -> int:
        return sum(len(view) for _fd, _offset, view in self.pieces)

    def close(self) -> None:
        pieces, self.pieces = self.pieces, []
        for _fd, _offset, view in pieces:
            view.release()
        held, self._held = self._held, []
        for segment in held:
            segment.close()


class SegmentStore(Protocol):
    def append(self, bodies: Sequence[tuple[bytes, Body]]) -> list[ChunkLocation]:
        """Append (hash, body) records and make them durable before returning their places."""
        ...

    def appending(self) -> contextlib.AbstractContextManager[Appender]:
        """Several `add`s of records as one append, durable when the block is left."""
        ...

    def held_until_committed(self) -> contextlib.AbstractContextManager[None]:
        """Around staging and the commit that refers to it: gc keeps away from the segments
        it appended to until then (see LocalSegments)."""
        ...

    def read(self, location: ChunkLocation) -> bytes:
        """Return a body, verified against its CRC; raise Corrupt if it does not match."""
        ...

    def view_cached(self, location: ChunkLocation) -> memoryview | None:
        """The verified body, in place in the page cache, if it holds the whole record, else
        None; never waits for the disk."""
        ...

    def views_cached(self, locations: Sequence[ChunkLocation]) -> list[memoryview] | None:
        """`view_cached` of each, or None if any one is not to be had that way."""
        ...

    def hold(self, locations: Sequence[ChunkLocation]) -> dict[int, HeldSegment]:
        """Hold the segments these records lie in (see HeldSegment) and verify the records in
        place; may wait for the disk. The caller closes what it gets."""
        ...

    def read_into(self, location: ChunkLocation, buffer: memoryview) -> None:
        """Read a body straight into `buffer` (exactly `location.length` bytes), verified as
        `read` verifies it; raise Corrupt if it does not match."""
        ...

    def read_many_into(self, reads: Sequence[tuple[ChunkLocation, memoryview]]) -> None:
        """`read_into` for several bodies at once (records back to back in a segment come in
        one system call)."""
        ...

    def prefetch(self, locations: Iterable[ChunkLocation]) -> None:
        """Hint that these records will be read soon (reads may start in the background)."""
        ...

    def read_header(self, location: ChunkLocation) -> tuple[bytes, bytes, int, int, int]:
        ...

    def scan(self, segment: int) -> list[tuple[int, bytes, int]]:
        """(body offset, digest, length) of each whole record, stopping at a torn tail."""
        ...

    def current(self) -> int | None:
        """The segment this process appends to, if any."""
        ...

    def claimed(self) -> list[int]:
        """The segments this process holds for its appends (gc leaves them alone)."""
        ...

    def write_alone(self, segment: int, digest: bytes, body: Body) -> ChunkLocation:
        """One record in a new segment, without the append lock (see LocalSegments)."""
        ...

    def remove(self, segment: int) -> int:
        """Delete a retired segment; returns the bytes it held."""
        ...

    def forget(self, segments: set[int]) -> None:
        """Drop cached read handles of segments that may be deleted."""
        ...

    def segment_sizes(self) -> dict[int, int]:
        ...

    def close(self) -> None:
        ...


class LocalSegments:
    """Segment files in a directory. Thread-safe: appends serialise on one lock.

    `allocate(previous)` returns a new segment id for this process and gives up its claim on
    `previous` (None at first), so gc may compact the segments a process has moved past.
    `disown(segment)` gives up a claim later: on a segment rolled past while an operation that
    appended to it had not committed yet (see `held_until_committed`)."""

    def __init__(
        self,
        directory: Path,
        allocate: Callable[[int | None], int],
        seal_size: int = DEFAULT_SEAL_SIZE,
        disown: Callable[[int], None] | None = None,
    ):
        self.directory = Path(directory)
        self._disown = disown
        self._holds_lock = threading.Lock()
        self._holds: list[_Hold] = []  # one per operation in held_until_committed
        self._deferred: set[int] = set()  # rolled past, still claimed for such an operation
        self._thread_holds = threading.local()
        self._seal_size = seal_size
        self._append_lock = threading.Lock()
        self._current: int | None = None
        self._current_fd = -1
        self._current_size = 0
        self._last_append = time.monotonic()
        self._direct = False
        self._staging_buffers: list[mmap.mmap] = []
        self._writer_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._maker = SegmentMaker(allocate, disown, self.path, self._sync_directory)
        self._readers = SegmentReaders(self.path, segment_name)
        self._mapped = MappedSegments(self._readers.reading, HEADER.size, _header_crc)
        # The mount's event loop calls these for every read it answers: no wrapper frame.
        self.view_cached = self._mapped.view_cached
        self.views_cached = self._mapped.views_cached

    @property
    def seal_size(self) -> int:
        """The size at which a segment is sealed and the next one started."""
        return self._seal_size

    def path(self, segment: int) -> Path:
        return self.directory / segment_name(segment)

    def append(self, bodies: Sequence[tuple[bytes, Body]]) -> list[ChunkLocation]:
        with self.appending() as appender:
            return appender.add(bodies)

    @contextlib.contextmanager
    def appending(self) -> Iterator[Appender]:
        """One durable append made of several `add`s: each returns its records' locations
        at once while their bytes go to the disk in the background, so the caller can hash
        the next bodies meanwhile. The locations are durable once the block is left (the
        last bytes written, then fdatasync); an exception leaves them orphans."""
        with self._append_lock:
            appender = Appender(self)
            try:
                yield appender
            except BaseException:
                appender.finish(durable=False)
                raise
            appender.finish(durable=True)

    @contextlib.contextmanager
    def held_until_committed(self) -> Iterator[None]:
        """Around an operation that stages records (in this thread) and commits them later,
        such as a PUT that stages its whole body before its one commit. A segment it fills
        and rolls past holds nothing committed yet, so gc would see it as empty, retire it and
        delete it a few seconds later; the commit would then find its records gone. This
        process keeps its claim on such segments (gc leaves claimed segments alone) until
        every operation that appended to them has ended. A crash ends the claims with the
        process, and the records become the orphans they are."""
        hold = _Hold()
        stack = self._thread_holds.__dict__.setdefault("stack", [])
        stack.append(hold)
        with self._holds_lock:
            self._holds.append(hold)
        try:
            yield
        finally:
            stack.pop()
            with self._holds_lock:
                self._holds.remove(hold)  # by identity: _Hold has no value equality
                released = {segment for segment in self._deferred & hold.segments
                            if not any(segment in other.segments for other in self._holds)}
                self._deferred -= released
            if self._disown is not None:
                for segment in sorted(released):
                    self._disown(segment)

    def let_go_if_idle(self, idle: float, mostly_dead: Callable[[int, int], bool]) -> bool:
        """Close and give up the segment this process appends to when nothing was appended
        for `idle` seconds and `mostly_dead(segment, size)` says gc would take it: gc leaves
        an owned segment alone, so an idle process kept a segment's worth of deleted data on
        the disk for ever (a QA pass: 224 MiB for 12 live bytes). The next append starts a
        new segment. Filled segments that failed makings left owned (a full disk) are given
        up too. Never waits for an append in progress (then it is not idle)."""
        if not self._append_lock.acquire(blocking=False):
            return False
        segment = None
        try:
            if time.monotonic() - self._last_append < idle:
                return False
            if self._current is not None and mostly_dead(self._current, self._current_size):
                segment = self._current
                os.close(self._current_fd)
                self._current, self._current_fd, self._current_size = None, -1, 0
                with self._holds_lock:
                    if any(segment in hold.segments for hold in self._holds):
                        self._deferred.add(segment)  # disowned when those operations end
                        return True
        finally:
            self._append_lock.release()
            self._maker.give_up_rolled_past()
        if segment is not None and self._disown is not None:
            self._disown(segment)
        return segment is not None

    def _note_append(self, segment: int) -> None:
        self._last_append = time.monotonic()
        stack = getattr(self._thread_holds, "stack", None)
        if stack:
            with self._holds_lock:
                for hold in stack:
                    hold.segments.add(segment)

    def write_alone(self, segment: int, digest: bytes, body: Body) -> ChunkLocation:
        """Write one record into a new segment of its own, durably, taking no lock and no
        transaction (the caller's transaction allocated `segment`): the rescue path runs inside
        a write transaction, where rolling the shared segment would wait for that very lock."""
        header = HEADER.pack(MAGIC, digest, len(body), CODEC_RAW, crc32c.crc32c(body))
        with store_errors("rescuing a chunk into a segment of its own"):
            fd = os.open(self.path(segment), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.pwritev(fd, [header, body], 0)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            self._sync_directory()
        return ChunkLocation(segment, HEADER.size, len(body))

    def _write_staged(self, buffer: mmap.mmap, length: int, offset: int) -> None:
        """In the writer thread: one staging buffer's bytes at `offset` (both aligned)."""
        done = 0
        # The view is released even when a write fails: a traceback that kept it alive would
        # keep the staging buffer from being closed.
        with memoryview(buffer) as whole:
            while done < length:
                try:
                    written = os.pwrite(self._current_fd, whole[done:length], offset + done)
                except OSError as e:
                    if e.errno != errno.EINVAL or not self._direct:
                        raise
                    self._reopen_buffered()  # the device wants a coarser alignment
                    continue
                if done + written < length and written % ALIGN:
                    raise OSError(errno.ENOSPC, "short write to a segment")
                done += written

    def _reopen_buffered(self) -> None:
        assert self._current is not None
        os.close(self._current_fd)
        self._current_fd = os.open(self.path(self._current), os.O_WRONLY)
        self._direct = False

    def _staging(self, which: int) -> mmap.mmap:
        # Anonymous mmap memory is page-aligned, as O_DIRECT needs; made on first use.
        while len(self._staging_buffers) <= which:
            self._staging_buffers.append(mmap.mmap(-1, STAGING_SIZE))
        return self._staging_buffers[which]

    def _writer(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._writer_pool is None:
            self._writer_pool = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="vfsd-segment-writer")
        return self._writer_pool

    def _roll(self) -> None:
        """Move on to a new segment (vfsd/store/segmentmaker.py: made one roll ahead once
        this process fills segments)."""
        previous = self._current
        if self._current_fd >= 0:
            os.close(self._current_fd)
        self._current, self._current_fd, self._current_size = None, -1, 0
        if previous is not None:
            with self._holds_lock:
                held = any(previous in hold.segments for hold in self._holds)
                if held:
                    self._deferred.add(previous)  # disowned when those operations end
            if not held:
                self._maker.rolled_past(previous)
        self._current, self._current_fd, self._direct = self._maker.next(
            ahead=previous is not None)

    def read(self, location: ChunkLocation) -> bytes:
        start = location.offset - HEADER.size
        with self._readers.reading(location.segment) as fd:
            raw = os.pread(fd, HEADER.size + location.length, start)
        if len(raw) != HEADER.size + location.length:
            raise Corrupt(f"segment {segment_name(location.segment)} is short at {start}")
        crc = _header_crc(raw, 0, location)
        body = raw[HEADER.size:]
        if crc is None or crc32c.crc32c(body) != crc:
            raise Corrupt(f"chunk at {segment_name(location.segment)}:{start} fails its checksum")
        return body

    def hold(self, locations: Sequence[ChunkLocation]) -> dict[int, HeldSegment]:
        by_segment: dict[int, list[ChunkLocation]] = {}
        for location in locations:
            by_segment.setdefault(location.segment, []).append(location)
        held: dict[int, HeldSegment] = {}
        try:
            for segment, records in by_segment.items():
                with self._readers.reading(segment) as fd:
                    fd = os.dup(fd)
                try:
                    held[segment] = _hold_verified(fd, records)
                except BaseException:
                    os.close(fd)
                    raise
        except BaseException:
            for holding in held.values():
                holding.close()
            raise
        return held

    def read_into(self, location: ChunkLocation, buffer: memoryview) -> None:
        # One preadv puts the header in a small buffer and the body where the caller wants it:
        # no intermediate `bytes` for the record and none for the body.
        self._read_run([(location, buffer)])

    def read_many_into(self, reads: Sequence[tuple[ChunkLocation, memoryview]]) -> None:
        # A file written in order lies in order in its segments: one preadv per run of
        # records that follow each other (headers into small buffers, bodies in place)
        # instead of one per chunk.
        first = 0
        while first < len(reads):
            stop = first + 1
            while (stop < len(reads) and stop - first < MAX_RUN
                   and _follows(reads[stop - 1][0], reads[stop][0])):
                stop += 1
            self._read_run(reads[first:stop])
            first = stop

    def _read_run(self, run: Sequence[tuple[ChunkLocation, memoryview]]) -> None:
        headers = [bytearray(HEADER.size) for _ in run]
        buffers: list[bytearray | memoryview] = []
        for header, (location, buffer) in zip(headers, run):
            if buffer.nbytes != location.length:
                raise ValueError("each buffer must be exactly as long as its body")
            buffers += (header, buffer)
        start = run[0][0].offset - HEADER.size
        with self._readers.reading(run[0][0].segment) as fd:
            got = os.preadv(fd, buffers, start)
        if got != sum(HEADER.size + location.length for location, _ in run):
            raise Corrupt(f"segment {segment_name(run[0][0].segment)} is short at {start}")
        for header, (location, buffer) in zip(headers, run):
            crc = _header_crc(header, 0, location)
            if crc is None or crc32c.crc32c(buffer) != crc:
                raise Corrupt(f"chunk at {segment_name(location.segment)}:"
                              f"{location.offset - HEADER.size} fails its checksum")

    def prefetch(self, locations: Iterable[ChunkLocation]) -> None:
        for location in locations:
            with self._readers.reading(location.segment) as fd:
                os.posix_fadvise(fd, location.offset - HEADER.size,
                                 HEADER.size + location.length, os.POSIX_FADV_WILLNEED)

    def read_header(self, location: ChunkLocation) -> tuple[bytes, bytes, int, int, int]:
        start = location.offset - HEADER.size
        with self._readers.reading(location.segment) as fd:
            raw = os.pread(fd, HEADER.size, start)
        if len(raw) != HEADER.size:
            raise Corrupt(f"segment {segment_name(location.segment)} is short at {start}")
        return HEADER.unpack(raw)

    def scan(self, segment: int) -> list[tuple[int, bytes, int]]:
        """(body offset, digest, length) of each whole record, stopping at a torn tail."""
        out = []
        with open(self.path(segment), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            offset = 0
            while offset + HEADER.size <= size:
                f.seek(offset)
                magic, digest, length, _codec, _crc = HEADER.unpack(f.read(HEADER.size))
                if magic != MAGIC:
                    # Zeros up to the next ALIGN boundary pad the end of an append.
                    boundary = _align_up(offset + 1)
                    f.seek(offset)
                    if boundary < size and not any(f.read(boundary - offset)):
                        offset = boundary
                        continue
                    break
                if offset + HEADER.size + length > size:
                    break
                out.append((offset + HEADER.size, digest, length))
                offset += HEADER.size + length
        return out

    def current(self) -> int | None:
        return self._current

    def claimed(self) -> list[int]:
        """The current segment, the spare (waiting for it if it is being made) and filled
        ones not given up yet."""
        with self._append_lock:
            current = [self._current] if self._current is not None else []
            return current + self._maker.claimed()

    def remove(self, segment: int) -> int:
        """Delete a retired segment's file; returns the bytes it held."""
        self._mapped.forget({segment})
        self._readers.forget({segment})
        try:
            size = self.path(segment).stat().st_size
            self.path(segment).unlink()
        except FileNotFoundError:
            return 0
        # Before the caller forgets the segment in the index: a file that came back after a
        # crash with no entry would never be collected.
        self._sync_directory()
        return size

    def _sync_directory(self) -> None:
        sync_directory(self.directory)

    def forget(self, segments: set[int]) -> None:
        """Close cached read handles of segments others may delete (they pin disk space)."""
        self._mapped.forget(segments)
        self._readers.forget(segments)

    def segment_sizes(self) -> dict[int, int]:
        sizes = {}
        for entry in os.scandir(self.directory):
            if entry.name.endswith(".seg"):
                sizes[int(entry.name[:-4], 16)] = entry.stat().st_size
        return sizes

    def close(self) -> None:
        with self._append_lock:
            if self._current_fd >= 0:
                os.close(self._current_fd)
                self._current_fd = -1
                self._current = None
            for buffer in self._staging_buffers:
                with contextlib.suppress(BufferError):  # a view lives on somewhere: GC frees it
                    buffer.close()
            self._staging_buffers.clear()
            if self._writer_pool is not None:
                self._writer_pool.shutdown()
                self._writer_pool = None
            self._maker.close()
        self._mapped.close()
        self._readers.close()


def _hold_verified(fd: int, locations: Sequence[ChunkLocation]) -> HeldSegment:
    """Map the span the records lie in and check their CRCs there: the CRC reads the page
    cache itself, with no copy, and a sender can hand the same pages to the socket. The map is
    made for the holder and goes with it (MappedSegments keeps its maps: a gateway streaming
    many objects would show gigabytes of page cache as its own). MAP_POPULATE maps the pages
    in one pass rather than fault by fault; pages not in memory are read from the disk."""
    start = min(location.offset for location in locations) - HEADER.size
    end = max(location.offset + location.length for location in locations)
    base = start - start % mmap.ALLOCATIONGRANULARITY
    try:
        mapped = mmap.mmap(fd, end - base, mmap.MAP_SHARED | mmap.MAP_POPULATE, mmap.PROT_READ,
                           offset=base)
    except (OSError, ValueError) as e:  # ValueError: the file is shorter than the span
        raise Corrupt(f"segment {segment_name(locations[0].segment)} cannot be read at "
                      f"{start}..{end}: {e}") from None
    held = HeldSegment(fd, base, mapped)
    for location in locations:
        crc = _header_crc(held.view, location.offset - base - HEADER.size, location)
        with held.body(location, 0, location.length) as body:
            whole = crc is not None and crc32c.crc32c(body) == crc
        if not whole:
            held.view.release()
            mapped.close()  # the caller closes the descriptor
            raise Corrupt(f"chunk at {segment_name(location.segment)}:"
                          f"{location.offset - HEADER.size} fails its checksum")
    return held


def _header_crc(buffer: Body, start: int, location: ChunkLocation) -> int | None:
    """The body CRC of the record header at `start`, if it describes `location`."""
    magic, _digest, length, _codec, crc = HEADER.unpack_from(buffer, start)
    return crc if magic == MAGIC and length == location.length else None


def _follows(before: ChunkLocation, after: ChunkLocation) -> bool:
    return (after.segment == before.segment
            and after.offset == before.offset + before.length + HEADER.size)


def _align_up(n: int, unit: int = ALIGN) -> int:
    return -(-n // unit) * unit


def sync_directory(directory: Path) -> None:
    """fsync a directory: the names made or removed in it survive a crash."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class _Hold:
    """The segments one uncommitted operation appended to."""

    __slots__ = ("segments",)

    def __init__(self) -> None:
        self.segments: set[int] = set()


class Appender:
    """Records of one append, copied into staging buffers that a writer thread sends to the
    disk while the caller prepares the next ones (two buffers: one filling, one writing).
    Made and finished by `LocalSegments.appending`, under its append lock."""

    def __init__(self, segments: LocalSegments):
        self._segments = segments
        self._offset = -1  # where the next record byte goes (-1: nothing added yet)
        self._buffer_at = -1  # where the buffer being filled goes on disk (aligned)
        self._filled = 0  # bytes in the buffer being filled
        self._which = 0  # the buffer being filled
        self._pending: list[concurrent.futures.Future[None] | None] = [None, None]
        self._failed = False  # a write failed: later records go to a new segment

    def add(self, bodies: Sequence[tuple[bytes, Body]]) -> list[ChunkLocation]:
        if not bodies:
            return []
        with store_errors("appending to a segment"):
            return self._add(bodies)

    def _add(self, bodies: Sequence[tuple[bytes, Body]]) -> list[ChunkLocation]:
        segments = self._segments
        if self._offset < 0:
            if segments._current is None or segments._current_size >= segments._seal_size:
                segments._roll()
            start = segments._current_size
            if sum(HEADER.size + len(body) for _, body in bodies) >= LARGE_APPEND:
                start = _align_up(start, FS_BLOCK)  # the gap reads as zeros: scan steps over it
            self._offset = self._buffer_at = start
        assert segments._current is not None
        segments._note_append(segments._current)
        locations = []
        for digest, body in bodies:
            self._put(HEADER.pack(MAGIC, digest, len(body), CODEC_RAW, crc32c.crc32c(body)))
            locations.append(ChunkLocation(segments._current, self._offset, len(body)))
            self._put(body)
        return locations

    def _put(self, piece: Body) -> None:
        view = memoryview(piece).cast("B")
        self._offset += len(view)
        while view:
            if self._filled == 0:
                self._wait(self._which)  # its last write must be done before we refill it
            staging = self._segments._staging(self._which)
            take = min(len(view), STAGING_SIZE - self._filled)
            staging[self._filled:self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == STAGING_SIZE:
                self._send(STAGING_SIZE)

    def _send(self, length: int) -> None:
        which, segments = self._which, self._segments
        self._pending[which] = segments._writer().submit(
            segments._write_staged, segments._staging(which), length, self._buffer_at)
        self._buffer_at += length
        self._which, self._filled = 1 - which, 0

    def _wait(self, which: int) -> None:
        future, self._pending[which] = self._pending[which], None
        if future is not None:
            try:
                future.result()
            except OSError:
                self._failed = True  # finish() seals the segment
                raise

    def finish(self, durable: bool) -> None:
        with store_errors("writing a segment"):
            self._finish(durable)

    def _finish(self, durable: bool) -> None:
        if self._offset < 0:
            return  # nothing was added: no roll, no write, no sync
        segments = self._segments
        errors: list[OSError] = []
        try:
            if self._filled:
                # Even an append the caller gave up on (NoSpace) writes out its whole
                # records, as orphans, so that a scan of the segment reads on past them.
                # The last buffer is written here: we wait for it anyway, and a small
                # append (an fsync of a few chunks) saves the hand-over to the writer.
                padded = _align_up(self._filled)
                staging = segments._staging(self._which)
                staging[self._filled:padded] = bytes(padded - self._filled)
                at, self._buffer_at, self._filled = self._buffer_at, self._buffer_at + padded, 0
                self._wait(1 - self._which)  # one writer at a time (the EINVAL reopen)
                segments._write_staged(staging, padded, at)
        except OSError as e:
            errors.append(e)
        finally:
            for which in (0, 1):
                try:
                    self._wait(which)
                except OSError as e:
                    errors.append(e)
            segments._current_size = self._buffer_at
            if errors or self._failed:
                # A torn write would stop a scan of this segment: later records go to a
                # new one.
                segments._current_size = max(segments._current_size, segments._seal_size)
        if errors:
            raise errors[0]
        if durable:
            os.fdatasync(segments._current_fd)


@contextlib.contextmanager
def store_errors(doing: str) -> Iterator[None]:
    """The disk's errors as the core's: callers handle StoreError (the mount keeps the data
    dirty and answers EIO or ENOSPC; the gateway answers 500 or 507)."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(f"the disk under the store is full ({doing})") from e
        raise DiskError(f"{doing}: {e.strerror or e}") from e
