"""The LMDB environment: its named databases and short transactions over them.

This module and its siblings in vfsd/store are the only code that imports lmdb. Every public
store call is one `read()` or `write()` block; a write block commits durably (LMDB syncs its
meta page) when it exits without an exception, and aborts otherwise.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import lmdb

from .errors import Corrupt, NoSpace
from .records import SEGMENT_RETIRED, ChunkLocation, Inode, SegmentInfo

# Sparse: LMDB only reserves address space; the file grows with the data.
MAP_SIZE = 1 << 40
FULL_DISK_BYTES = 1 << 20  # less room than this: a short write of the index is the disk's fill
U64 = struct.Struct(">Q")


@dataclass(frozen=True)
class Databases:
    """Handles of the named databases; DESIGN.md's schema table says what each holds."""

    meta: Any
    inodes: Any
    dirents: Any
    dircookies: Any
    xattrs: Any
    symlinks: Any
    chunkmap: Any
    chunks: Any
    segments: Any
    keys: Any
    uploads: Any
    changes: Any
    leases: Any
    orphans: Any
    users: Any
    peers: Any
    repl: Any
    journals: Any


class Tx:
    """One LMDB transaction plus the store's running counters for it.

    Counter deltas (bytes referenced, bytes stored, live bytes per segment) are gathered while the
    transaction works and written once, just before it commits, so a call touching a thousand
    chunks updates each counter once.
    """

    __slots__ = ("changes", "db", "deltas", "ended", "inode_hook", "rescue", "segment_deltas",
                 "stored_inodes", "txn", "version", "write")

    # Every transaction is begun with buffers=False (lmdb's default), so keys and values are
    # bytes that outlive it, never memoryviews into the map.
    def __init__(self, txn: lmdb.Transaction[bytes], db: Databases, write: bool,
                 rescue: Callable[[Tx, ChunkLocation], ChunkLocation] | None = None,
                 inode_hook: Callable[[Tx, Inode], None] | None = None):
        self.txn = txn
        self.db = db
        self.write = write
        self.deltas: dict[bytes, int] = {}
        self.segment_deltas: dict[int, int] = {}
        self.version = 0
        self.changes = 0
        self.rescue = rescue  # see Store._rescue
        self.inode_hook = inode_hook  # see journal.Journal._mark
        self.stored_inodes: set[int] = set()  # for Environment.on_commit
        # Called once the transaction has committed or aborted (Opens.replacing's locks).
        self.ended: list[Callable[[], None]] = []

    def get(self, db: Any, key: bytes) -> bytes | None:
        return self.txn.get(key, db=db)

    def put(self, db: Any, key: bytes, value: bytes, overwrite: bool = True) -> bool:
        return self.txn.put(key, value, db=db, overwrite=overwrite)

    def delete(self, db: Any, key: bytes) -> bool:
        return self.txn.delete(key, db=db)

    def cursor(self, db: Any) -> lmdb.Cursor[bytes]:
        return self.txn.cursor(db=db)

    def entries(self, db: Any) -> int:
        return self.txn.stat(db)["entries"]

    def add(self, counter: bytes, delta: int) -> None:
        self.deltas[counter] = self.deltas.get(counter, 0) + delta

    def counter(self, name: bytes) -> int:
        raw = self.txn.get(name, db=self.db.meta)
        return (U64.unpack(raw)[0] if raw else 0) + self.deltas.get(name, 0)

    def next_id(self, name: bytes) -> int:
        """Allocate the next value of a persistent sequence (inode numbers, segment ids…)."""
        raw = self.txn.get(name, db=self.db.meta)
        value = U64.unpack(raw)[0] if raw else 1
        self.txn.put(name, U64.pack(value + 1), db=self.db.meta)
        return value

    def segment_retired(self, segment: int) -> bool:
        raw = self.txn.get(U64.pack(segment), db=self.db.segments)
        return raw is None or SegmentInfo.unpack(segment, raw).state == SEGMENT_RETIRED

    def flush_counters(self) -> None:
        for name, delta in self.deltas.items():
            if delta:
                raw = self.txn.get(name, db=self.db.meta)
                value = (U64.unpack(raw)[0] if raw else 0) + delta
                self.txn.put(name, U64.pack(value), db=self.db.meta)
        self.deltas.clear()
        for seg, delta in self.segment_deltas.items():
            if delta:
                key = U64.pack(seg)
                raw = self.txn.get(key, db=self.db.segments)
                info = SegmentInfo.unpack(seg, raw) if raw else SegmentInfo(seg, 0, 0, 0)
                info.live += delta
                self.txn.put(key, info.pack(), db=self.db.segments)
        self.segment_deltas.clear()


class Environment:
    """The store's LMDB environment, opened once per process and shared by its threads."""

    def __init__(self, path: Path):
        try:
            self._open(path)
        except lmdb.Error as e:
            raise Corrupt(f"cannot open the index in {path}: {e}") from None

    def _open(self, path: Path) -> None:
        self.path = path
        self.lmdb = lmdb.open(
            str(path),
            map_size=MAP_SIZE,
            max_dbs=len(fields(Databases)) + 4,
            max_readers=1024,
            subdir=True,
            readahead=False,
            meminit=False,
        )
        with self.lmdb.begin(write=True) as txn:
            handles = {
                f.name: self.lmdb.open_db(f.name.encode(), txn=txn, create=True)
                for f in fields(Databases)
            }
        self.db = Databases(**handles)
        self.rescue: Callable[[Tx, ChunkLocation], ChunkLocation] | None = None
        # Called with every inode a write transaction of this process stores: the fsync
        # journal marks its files' commits (vfsd/store/journal.py).
        self.inode_hook: Callable[[Tx, Inode], None] | None = None
        # Called after each commit with the inodes it stored: the mount forgets where their
        # chunks lay (vfsd/fs/readmap.py).
        self.on_commit: Callable[[set[int]], None] | None = None
        # Called after each commit that recorded change-log entries: rings the mount's
        # change-log tail awake (vfsd/store/changebell.py). The mount itself rings nobody.
        self.on_change: Callable[[], None] | None = None

    def begin_write(self, txn: lmdb.Transaction[bytes]) -> Tx:
        return Tx(txn, self.db, write=True, rescue=self.rescue, inode_hook=self.inode_hook)

    def committed(self, stored_inodes: set[int], changes: int) -> None:
        if self.on_commit is not None and stored_inodes:
            self.on_commit(stored_inodes)
        if self.on_change is not None and changes:
            self.on_change()

    def close(self) -> None:
        self.lmdb.close()

    @contextmanager
    def read(self) -> Iterator[Tx]:
        txn = self.lmdb.begin(buffers=False)
        try:
            yield Tx(txn, self.db, write=False)
        finally:
            txn.abort()

    @contextmanager
    def write(self) -> Iterator[Tx]:
        txn = self.lmdb.begin(write=True)
        tx = self.begin_write(txn)
        try:
            try:
                yield tx
                tx.flush_counters()
            except BaseException:
                txn.abort()
                raise
            txn.commit()
        except lmdb.Error as e:
            error = as_store_error(e, self.path)
            if error is e:
                raise
            raise error from e
        finally:
            run_ended(tx)
        self.committed(tx.stored_inodes, tx.changes)


def as_store_error(e: BaseException, directory: Path | None = None) -> BaseException:
    """What a failed transaction tells its caller: the disk under the store full (ENOSPC,
    lmdb's DiskError, when the commit or a page spill writes) or the map full is NoSpace,
    which the mount answers with ENOSPC and the gateway with 507, like a full segment.
    LMDB reports a short write as EIO, and a write that fills the disk halfway is one: with
    the index's `directory` given, EIO on a disk with no room left is NoSpace too.
    LMDB has aborted the transaction: nothing of it is visible."""
    if isinstance(e, (lmdb.DiskError, lmdb.MapFullError)) or (
            directory is not None and _short_write_on_a_full_disk(e, directory)):
        return NoSpace(f"the disk under the store is full (committing the index: {e})")
    return e


def _short_write_on_a_full_disk(e: BaseException, directory: Path) -> bool:
    if type(e) is not lmdb.Error or not str(e).endswith(os.strerror(errno.EIO)):
        return False
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < FULL_DISK_BYTES


def run_ended(tx: Tx) -> None:
    """The transaction has committed or aborted: run what waited for that."""
    hooks, tx.ended = tx.ended, []
    for hook in hooks:
        hook()
