"""The fsync journal: bytes a writer fsynced, made durable by one synchronous append.

Committing dirty data to the store costs three device syncs (segment, LMDB data, LMDB meta)
and about a millisecond of CPU (read the stored chunk, lay the write on it, hash, append,
commit). For a small fsync (a guest's flush, a database's commit) the mount instead appends
the bytes written since the file's previous record to its own journal file, opened O_DSYNC:
one write and one device flush, then it answers. The write-back cache still commits the data
to the store at its next flush, like any dirty data; the journal only has to outlive a crash.

A record (a *set*) holds one file's writes since its previous set, its size and mtime, and
its *base version*: the inode's version in the store when the set was written.

Which sets a recovery replays. While a file has sets in the journal, every commit its writer
makes to the inode also writes, in the same transaction, a mark in `journals`: the version
that commit stamps, and the newest set whose bytes the store now holds (`covered`: a flush of
all the file's dirty data covers every set written before it). After a crash, the sets of
an inode newer than `covered` are replayed, oldest first, if the inode is still as its writer
left it: its version is the newest set's base version or the mark's version. Any other
version means another process changed the file after the writer died (a PUT over it): that
change is newer, and the sets are dropped.

A commit that covers nothing (a background batch of some of the file's chunks) still holds,
in each chunk it writes, every write made before it was taken, so every set up to the newest
one then. Laying those sets back over such a chunk would undo the unsynced writes the batch
committed after them and mix old and new bytes within the chunk, a state the file never
held. Such a commit therefore also writes, per chunk, a *chunk mark*: the newest set its body
includes. A replay lays a set's bytes only on chunks whose mark is older than the set, so
after a crash each chunk reads as the file had it at the newest set or at its newest commit,
whichever came later: fsynced bytes are never lost, and unsynced ones come back old or new
per chunk. Chunk marks go once their sets are covered; at each new lap every mark of a file
without a set in the ring goes.

A journal is named after its process (pid and start time, as leases are): only the journals
of dead processes are replayed (vfsd/store/journalrecovery.py), by the next mount, gateway or
CLI command.

The file is a ring of RING_BYTES written with zeros when it is made, so that a record
overwrites blocks the file system has already allocated: an O_DSYNC write then costs one
device flush (~60 µs here) instead of a file-system journal commit for the new size (~90 µs
and more). Records go through a second descriptor opened O_DIRECT where the file system
takes it: the write then skips the page cache and its writeback, 4 KiB in ~50 µs against ~80
(`_RecordWriter`). Its first block says which lap of the ring is current; records carry their lap,
so those of an earlier lap further on are ignored. The ring starts a new lap once every set
in it is covered; until then a record that does not fit grows the file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import crc32c

from . import namespace
from .env import Tx
from .errors import NotFound, StoreError
from .leases import Holder
from .records import Inode, ino_key
from .segments import store_errors, sync_directory

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("vfsd.journal")

JOURNAL_DIR = "journal"
MAGIC = b"VJR1"
ALIGN = 512  # records start on these boundaries, so a scan can step past a torn one
SPARE = "spare"  # a clean unmount's ring, for the next mount
RING_BYTES = 16 << 20  # ~1.5 s of 4 KiB fsyncs at full speed, more than a commit interval
FILE_MAGIC = b"VJF1"
_FILE_HEADER = struct.Struct(">4sIQ")  # magic, crc32c of the lap, lap
# magic, crc32c of the rest, lap, seq, ino, base version, size, mtime_ns, extents, data bytes
_HEADER = struct.Struct(">4sIQQQQqqII")
_EXTENT = struct.Struct(">QI")  # file offset, length
_MARK = struct.Struct(">QQ")  # version stamped by the writer's commit, covered seq
_CHUNK = struct.Struct(">Q")  # a chunk mark's key (after the inode's mark key): chunk index
_INCLUDES = struct.Struct(">Q")  # a chunk mark's value: the newest set the chunk's body holds
_OWNER = struct.Struct(">IQ")  # pid, process start time


@dataclass(frozen=True)
class JournalSet:
    seq: int
    ino: int
    base_version: int
    size: int
    mtime_ns: int
    extents: list[tuple[int, bytes]]


@dataclass(frozen=True)
class HeldSets:
    """Which journal sets a commit of an inode's chunks holds (see `Journal.committing`)."""
    ino: int
    chunks: Iterable[int]
    covers: int
    includes: int


def encode(lap: int, seq: int, ino: int, base_version: int, size: int, mtime_ns: int,
           extents: list[tuple[int, bytes | memoryview]]) -> bytes:
    data_len = sum(len(data) for _, data in extents)
    body = b"".join([
        _HEADER.pack(MAGIC, 0, lap, seq, ino, base_version, size, mtime_ns, len(extents),
                     data_len),
        *(_EXTENT.pack(offset, len(data)) for offset, data in extents),
        *(data for _, data in extents),
    ])
    crc = crc32c.crc32c(memoryview(body)[8:])
    padding = _record_size(extents) - len(body)
    return body[:4] + struct.pack(">I", crc) + body[8:] + bytes(padding)


def _record_size(extents: list[tuple[int, bytes | memoryview]]) -> int:
    size = _HEADER.size + len(extents) * _EXTENT.size + sum(len(data) for _, data in extents)
    return size + (-size % ALIGN)


def file_header(lap: int) -> bytes:
    lap_bytes = struct.pack(">Q", lap)
    return _FILE_HEADER.pack(FILE_MAGIC, crc32c.crc32c(lap_bytes), lap).ljust(ALIGN, b"\0")


def scan(data: bytes | memoryview) -> Iterator[JournalSet]:
    """The intact sets of the current lap in a journal file's bytes, in file order. A torn or
    unwritten record (a crash during its write, never acknowledged) is stepped over."""
    view = memoryview(data)
    lap = _lap_of(view[:ALIGN])
    records = []
    pos = ALIGN
    while pos + _HEADER.size <= len(view):
        (magic, crc, record_lap, seq, ino, base, size, mtime, count,
         data_len) = _HEADER.unpack_from(view, pos)
        end = pos + _HEADER.size + count * _EXTENT.size + data_len
        if magic != MAGIC or end > len(view) or crc32c.crc32c(view[pos + 8:end]) != crc:
            pos += ALIGN
            continue
        extents = []
        at = pos + _HEADER.size + count * _EXTENT.size
        for i in range(count):
            offset, length = _EXTENT.unpack_from(view, pos + _HEADER.size + i * _EXTENT.size)
            extents.append((offset, bytes(view[at:at + length])))
            at += length
        records.append((record_lap, JournalSet(seq, ino, base, size, mtime, extents)))
        pos = end + (-end % ALIGN)
    if lap is None and records:  # a torn first block: the newest lap there is
        lap = max(record_lap for record_lap, _ in records)
    yield from (s for record_lap, s in records if record_lap == lap)


def _name(holder: Holder) -> str:
    return f"{holder.pid}-{holder.start_time}"


def owner_key(pid: int, start_time: int) -> bytes:
    return _OWNER.pack(pid, start_time)


class Journal:
    """This process's journal file and the state that says which of its sets still matter.
    Appends run in worker threads; the store calls `_mark` inside every inode write."""

    def __init__(self, store: Store, holder: Holder):
        self.env = store.env
        directory = store.config.path / JOURNAL_DIR
        directory.mkdir(exist_ok=True)
        self.path = directory / _name(holder)
        self.key = owner_key(holder.pid, holder.start_time)
        with store_errors(f"making the fsync journal {self.path}"):
            self.fd, self.lap = _take_spare(directory, self.path)
            self.writer = _RecordWriter(self.path, self.fd)
        sync_directory(directory)
        self.lock = threading.Lock()
        self.end = ALIGN
        self.seq = 0
        self.newest: dict[int, int] = {}  # ino -> seq of its newest set
        self.covered: dict[int, int] = {}  # ino -> newest set whose bytes need no replay
        # ino -> newest set a chunk mark of it names. Changed only inside write transactions,
        # which LMDB runs one at a time: `_put_chunk_marks` and its callers need no lock.
        self.chunk_marked: dict[int, int] = {}
        self.unmarked: set[int] = set()  # covered in memory only: see `dropped`
        self.local = threading.local()  # `commit`: what a flush in this thread holds
        store.env.inode_hook = self._mark

    def uncovered(self, ino: int) -> bool:
        return self.newest.get(ino, 0) > self.covered.get(ino, 0)

    def newest_set(self, ino: int) -> int:
        return self.newest.get(ino, 0)

    def uncovered_files(self) -> list[int]:
        """The inodes with sets a recovery would replay."""
        with self.lock:
            return [ino for ino, seq in self.newest.items() if seq > self.covered.get(ino, 0)]

    def append(self, ino: int, extents: list[tuple[int, bytes | memoryview]], size: int,
               mtime_ns: int) -> int:
        """In a worker: make these writes to `ino` durable; returns the set's seq. The caller
        has let every earlier commit of `ino` finish and starts none until this returns."""
        size_on_disk = _record_size(extents)
        with self.lock:
            if self.end + size_on_disk > RING_BYTES and self._idle():
                self._new_lap()
            self.seq += 1
            seq = self.seq
            # From here on, commits to `ino` write marks, so the version read below stays
            # recognisable as this writer's own whatever it commits next.
            self.newest[ino] = seq
            self.covered.setdefault(ino, 0)
        with self.env.read() as tx:
            version = namespace.get_inode(tx, ino).version
        with self.lock:
            # No new lap can start before this record is covered: `newest` holds its seq.
            record = encode(self.lap, seq, ino, version, size, mtime_ns, extents)
            offset = self.end
            self.end += len(record)
        with store_errors("writing the fsync journal"):
            written = self.writer.pwrite(record, offset)
        if written != len(record):
            raise StoreError("cannot write the journal: short write")
        return seq

    @contextlib.contextmanager
    def committing(self, ino: int, chunks: Iterable[int], *, covers: int = 0,
                   includes: int = 0) -> Iterator[None]:
        """Around a commit (in its worker thread) of these chunks of `ino`, taken when
        `includes` was the file's newest set. `covers`: the commit holds the bytes of every
        set up to it (a flush of all the file's dirty data), so its mark says so and once it
        returns those sets need no replay. A commit that covers less marks its chunks: a
        replay must not lay sets up to `includes` over them."""
        self.local.commit = HeldSets(ino, chunks, covers, includes)
        try:
            yield
        finally:
            self.local.commit = None
        if covers:
            self.covered_without_commit(ino, covers)

    def cover(self, ino: int, seq: int) -> None:
        """In a worker: the store holds every byte of `ino` up to set `seq`, committed by
        commits that covered nothing (background batches), and the writer is about to say so
        (an fsync or a close with nothing left dirty). Write the mark now: a recovery would
        otherwise lay those older sets over the newer bytes the batches committed, undoing
        data an fsync has acknowledged."""
        key = self.key + ino_key(ino)
        with self.env.write() as tx:
            try:
                version = namespace.get_inode(tx, ino).version
            except NotFound:
                version = None  # deleted: a recovery drops its sets anyway
            raw = tx.get(tx.db.journals, key)
            if version is not None and (raw is None or _MARK.unpack(raw)[1] < seq):
                tx.put(tx.db.journals, key, _MARK.pack(version, seq))
            self._drop_moot_chunk_marks(tx, ino, seq)
        self.covered_without_commit(ino, seq)
        if seq >= self.newest.get(ino, 0):
            self.unmarked.discard(ino)

    def covered_without_commit(self, ino: int, seq: int) -> None:
        """The store already holds everything of `ino` up to `seq`."""
        with self.lock:
            self.covered[ino] = max(self.covered.get(ino, 0), seq)

    def dropped(self, ino: int, seq: int) -> None:
        """The writes of `ino` up to set `seq` are moot: the file is deleted, and a recovery
        drops the sets of a file that no longer exists. While it still exists (parked until
        a handle elsewhere closes) the store's mark names older sets, so the ring keeps their
        records (`_idle`) until it is gone. (A writer that drops writes of a live file, an
        O_TRUNC or a swap file's last close, makes the change that drops them cover the sets
        in its own commit instead: vfsd/fs/writeback.py, `drop_contents`.)"""
        with self.lock:
            self.covered[ino] = max(self.covered.get(ino, 0), seq)
            self.unmarked.add(ino)

    def mark_chunks(self, ino: int, chunks: Iterable[int]) -> None:
        """In a worker: a hole was just punched in these chunks of `ino`. Chunk marks, in a
        transaction of their own, keep a replay from laying the file's sets so far over it.
        (A crash before they commit brings the older bytes back, as it may for any change
        not yet fsynced.) The store's punch cannot carry them: past the stored size it
        commits nothing, while the sets may hold bytes there."""
        includes = self.newest.get(ino, 0)
        if includes <= self.covered.get(ino, 0):
            return
        with self.env.write() as tx:
            self._put_chunk_marks(tx, ino, chunks, includes)

    def _mark(self, tx: Tx, inode: Inode) -> None:
        ino = inode.ino
        if ino not in self.newest:
            return
        commit: HeldSets | None = getattr(self.local, "commit", None)
        if commit is not None and commit.ino != ino:
            commit = None
        covered = self.covered.get(ino, 0)
        if commit is not None:
            covered = max(covered, commit.covers)
        key = self.key + ino_key(ino)
        tx.put(tx.db.journals, key, _MARK.pack(inode.version, covered))
        if covered >= self.newest.get(ino, 0):
            self.unmarked.discard(ino)
        if commit is not None and commit.includes > covered:
            self._put_chunk_marks(tx, ino, commit.chunks, commit.includes)
        else:
            self._drop_moot_chunk_marks(tx, ino, covered)

    def _put_chunk_marks(self, tx: Tx, ino: int, chunks: Iterable[int], includes: int) -> None:
        """Say that the bodies of these chunks of `ino` hold every set up to `includes`."""
        key = self.key + ino_key(ino)
        value = _INCLUDES.pack(includes)
        for index in chunks:
            tx.put(tx.db.journals, key + _CHUNK.pack(index), value)
        self.chunk_marked[ino] = max(self.chunk_marked.get(ino, 0), includes)

    def _drop_moot_chunk_marks(self, tx: Tx, ino: int, covered: int) -> None:
        """Chunk marks name sets a replay skips anyway once they are covered: they go, so a
        long-lived mount's marks stay as few as its uncovered sets. (A mark left by a
        transaction that aborted after this stays true of its chunk, so it does no harm.)"""
        if self.chunk_marked.get(ino, covered + 1) <= covered:
            del self.chunk_marked[ino]
            drop_marks(tx, self.key + ino_key(ino) + _CHUNK.pack(0), self.key + ino_key(ino))

    @property
    def half_full(self) -> bool:
        return self.end >= RING_BYTES // 2

    def new_lap_if_idle(self) -> bool:
        """Go back to the ring's start if no set in it needs replaying (the flusher calls
        this after its commits, so appends rarely have to wait for the ring to fill)."""
        with self.lock:
            if not self._idle():
                return False
            grown = self.end > RING_BYTES
            self._new_lap()
        if grown:
            os.ftruncate(self.fd, RING_BYTES)  # records past the ring are of an old lap now
        try:
            self._drop_marks_outside_the_ring()
        except StoreError as e:  # a full disk: they go at a later lap, or at unmount
            log.warning("event=journal-marks-kept error=%s", e)
        return True

    def _drop_marks_outside_the_ring(self) -> None:
        """At a new lap: drop the marks of files with no set in the ring. A recovery reads
        a file's marks only for its sets of the current lap, and a file that gets one later
        gets a fresh mark from its next commit (the set's base version covers the time
        before). Without this a mount kept one mark per file it ever fsynced until it
        unmounted: per transaction for SQLite's rollback journal (deleted), per file for a
        maildir, a package install or git's objects (kept)."""
        prefix = len(self.key)
        with self.env.read() as tx:
            cursor = tx.cursor(tx.db.journals)
            stale = set()
            if cursor.set_range(self.key):
                for raw_key in cursor.iternext(values=False):
                    if raw_key[:prefix] != self.key:
                        break
                    ino = struct.unpack_from(">Q", raw_key, prefix)[0]
                    if ino not in self.newest:
                        stale.add(ino)
        if not stale:
            return
        with self.env.write() as tx:
            for ino in stale:
                # Asked again inside the transaction: a commit writes a mark only for a file
                # with a set in the ring (`_mark`), and no other commit runs meanwhile.
                if ino not in self.newest:
                    drop_marks(tx, self.key + ino_key(ino))
                    self.chunk_marked.pop(ino, None)

    def _idle(self) -> bool:
        """Whether no set in the ring needs replaying: all are covered, and the store's
        marks say so, but for files gone since (a recovery drops their sets)."""
        if any(seq > self.covered.get(ino, 0) for ino, seq in self.newest.items()):
            return False
        if self.unmarked:
            with self.env.read() as tx:
                for ino in list(self.unmarked):
                    try:
                        namespace.get_inode(tx, ino)
                    except NotFound:
                        self.unmarked.discard(ino)
        return not self.unmarked

    def _new_lap(self) -> None:
        """Under the lock, with every set covered: the next record goes to the ring's start,
        once the first block says its lap is the current one."""
        with store_errors("writing the fsync journal"):
            os.pwrite(self.fd, file_header(self.lap + 1), 0)
        self.lap += 1
        self.end = ALIGN
        self.newest.clear()
        self.covered.clear()

    def close(self) -> None:
        """At a clean unmount, after the last flush: with every set covered the file and its
        marks go; otherwise they stay for the next mount to replay."""
        self.env.inode_hook = None
        self.writer.close()
        os.close(self.fd)
        if not self._idle():
            log.warning("event=journal-kept path=%s reason=uncommitted-sets", self.path)
            return
        with self.env.write() as tx:
            drop_marks(tx, self.key)
        # Every record in it is covered and its marks are gone: the next mount may reuse the
        # ring (a new lap) instead of writing 16 MiB of zeros again.
        spare = self.path.with_name(SPARE)
        if spare.exists():
            self.path.unlink(missing_ok=True)
        else:
            self.path.rename(spare)


class _RecordWriter:
    """Writes records with O_DIRECT | O_DSYNC where the file system allows it, else through
    the ring's buffered O_DSYNC descriptor. Records start and end on ALIGN boundaries; a
    device whose sectors are larger refuses them (EINVAL), and from then on every record
    goes the buffered way. O_DIRECT also wants aligned memory: each thread copies its record
    into a page-aligned buffer of its own (a copy of a few KiB costs far less than the page
    cache's)."""

    def __init__(self, path: Path, buffered_fd: int):
        self.buffered_fd = buffered_fd
        try:
            self.direct_fd: int | None = os.open(
                path, os.O_RDWR | os.O_DSYNC | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self.direct_fd = None  # a file system without O_DIRECT
        self.direct = self.direct_fd is not None
        self.buffers = threading.local()

    def pwrite(self, record: bytes, offset: int) -> int:
        if self.direct_fd is not None and self.direct:
            buffer = self._aligned(len(record))
            buffer[:len(record)] = record
            try:
                return os.pwrite(self.direct_fd, buffer[:len(record)], offset)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                log.info("event=journal-direct-write-refused action=buffered")
                self.direct = False  # the descriptor stays open: another thread may be using it
        return os.pwrite(self.buffered_fd, record, offset)

    def _aligned(self, size: int) -> memoryview:
        view: memoryview | None = getattr(self.buffers, "view", None)
        if view is None or len(view) < size:
            capacity = max(size + (-size % mmap.PAGESIZE), 64 * 1024)
            view = self.buffers.view = memoryview(mmap.mmap(-1, capacity))
        return view

    def close(self) -> None:
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None


def _take_spare(directory: Path, path: Path) -> tuple[int, int]:
    """Open this process's ring at `path`: the spare a clean unmount left, in a lap after
    all of its records, or else a new file of zeros. Returns the descriptor and the lap."""
    flags = os.O_RDWR | os.O_DSYNC | os.O_CLOEXEC
    taking = path.with_name(path.name + ".taking")  # a name recovery never reads
    try:
        os.rename(directory / SPARE, taking)  # atomic: one mount gets it
    except FileNotFoundError:
        pass
    else:
        fd = os.open(taking, flags)
        try:
            lap = _lap_of(os.pread(fd, ALIGN, 0))
            if lap is not None and os.fstat(fd).st_size == RING_BYTES:
                # The new lap is on disk before the file gets a name recovery reads.
                os.pwrite(fd, file_header(lap + 1), 0)
                os.rename(taking, path)
                return fd, lap + 1
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        taking.unlink()
    fd = os.open(path, flags | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.pwrite(fd, file_header(1) + bytes(RING_BYTES - ALIGN), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd, 1


def _lap_of(block: bytes | memoryview) -> int | None:
    if len(block) < _FILE_HEADER.size:
        return None
    magic, crc, lap = _FILE_HEADER.unpack_from(block)
    if magic != FILE_MAGIC or crc32c.crc32c(struct.pack(">Q", lap)) != crc:
        return None
    return lap


def drop_marks(tx: Tx, start: bytes, prefix: bytes | None = None) -> None:
    """Delete the marks from `start` on whose keys begin with `prefix` (default: `start`)."""
    prefix = start if prefix is None else prefix
    cursor = tx.cursor(tx.db.journals)
    if cursor.set_range(start):
        while cursor.key()[:len(prefix)] == prefix:
            if not cursor.delete():
                break


def read_marks(tx: Tx, key: bytes
                ) -> tuple[dict[int, tuple[int, int]], dict[int, dict[int, int]]]:
    """A journal's marks: per inode (version, covered), and per inode and chunk the newest
    set that chunk's body includes."""
    marks = {}
    chunk_marks: dict[int, dict[int, int]] = {}
    cursor = tx.cursor(tx.db.journals)
    if cursor.set_range(key):
        for raw_key, value in cursor:
            if raw_key[:len(key)] != key:
                break
            rest = raw_key[len(key):]
            ino = struct.unpack_from(">Q", rest)[0]
            if len(rest) == 8:
                marks[ino] = _MARK.unpack(value)
            else:
                index = _CHUNK.unpack_from(rest, 8)[0]
                chunk_marks.setdefault(ino, {})[index] = _INCLUDES.unpack(value)[0]
    return marks, chunk_marks
