"""Helpers shared by the core's tests: fresh stores in tmp_path and counters read from LMDB.

Fixture names are specific (`new_store`, not `store`) so a test module's own `store` fixture
keeps working next to them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vfsd.store import Store, fsck
from vfsd.store.records import ChunkLocation

# tests/fs/mounting.py's disk helpers (tmpfs, fill_disk) for the full-disk tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fs"))


@pytest.fixture
def new_store(tmp_path: Path) -> Iterator[Callable[..., Store]]:
    """`new_store(chunk_size=...)` makes a store under tmp_path; all are closed at teardown."""
    opened: list[Store] = []

    def make(chunk_size: int = 65536, name: str | None = None) -> Store:
        store = Store.init(tmp_path / (name or f"store{len(opened)}"), chunk_size=chunk_size)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()  # closing twice is harmless, so tests may close their own


class Probe:
    """Looks inside a store the way fsck does, for assertions (a fixture, so test modules need
    no import path to share it)."""

    @staticmethod
    def chunk_count(store: Store) -> int:
        """Entries in the `chunks` index: distinct stored bodies."""
        with store.env.read() as tx:
            return tx.entries(tx.db.chunks)

    @staticmethod
    def segment_bytes(store: Store) -> int:
        """Apparent size of the segment files: everything appended, orphans included."""
        directory = store.config.segments_dir
        return sum(e.stat().st_size for e in os.scandir(directory) if e.name.endswith(".seg"))

    @staticmethod
    def fsck_clean(store: Store) -> fsck.FsckReport:
        report = fsck.check(store)
        assert report.clean, "fsck found damage:\n" + "\n".join(report.damage)
        return report

    @staticmethod
    def flip_bit(store: Store, location: ChunkLocation, at: int) -> None:
        """Damage a stored body: flip the low bit of its byte `at`, through the page cache
        (what later reads of the record see, as after a bad sector)."""
        fd = os.open(store.segments.path(location.segment), os.O_RDWR)
        try:
            byte = os.pread(fd, 1, location.offset + at)
            os.pwrite(fd, bytes([byte[0] ^ 1]), location.offset + at)
        finally:
            os.close(fd)

    @staticmethod
    def key_index(store: Store) -> list[bytes]:
        """The raw keys of the S3 key index: 8-byte bucket inode + object key."""
        with store.env.read() as tx:
            return [bytes(k) for k in tx.cursor(tx.db.keys).iternext(values=False)]


@pytest.fixture
def probe() -> Probe:
    return Probe()
