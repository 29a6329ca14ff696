"""gc gives disk space back: deleted and overwritten data leave the segment files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from vfsd.store import ROOT_INO, Store, fsck, gc

pytestmark = pytest.mark.timeout(300)
MiB = 1 << 20
GiB = 1 << 30


def disk_use(path: Path) -> int:
    return sum(e.stat().st_blocks * 512 for e in os.scandir(path / "segments"))


def collect_fully(store: Store) -> None:
    store.segments._seal_size = 0  # roll: the segments written so far become collectable
    store.write(store.create(ROOT_INO, b".roll").ino, 0, b"x")
    gc.collect(store, grace=0.2)
    time.sleep(0.3)
    gc.collect(store, grace=0.2)


def test_delete_one_gib_and_gc_returns_the_space(tmp_path):
    with Store.init(tmp_path / "s") as store:
        start = disk_use(tmp_path / "s")
        f = store.create(ROOT_INO, b"big")
        for i in range(GiB // (4 * MiB)):
            store.write(f.ino, i * 4 * MiB, os.urandom(4 * MiB))
        assert disk_use(tmp_path / "s") >= GiB
        store.unlink(ROOT_INO, b"big")
        collect_fully(store)
        assert disk_use(tmp_path / "s") - start < 0.05 * GiB
        assert fsck.check(store).clean


def test_overwriting_a_disk_three_times_keeps_it_near_its_size(tmp_path):
    with Store.init(tmp_path / "s") as store:
        disk = store.create(ROOT_INO, b"disk")
        store.truncate(disk.ino, GiB)
        for _round in range(3):
            for i in range(GiB // (4 * MiB)):
                store.write(disk.ino, i * 4 * MiB, os.urandom(4 * MiB))
            gc.collect(store, grace=0.0)
        collect_fully(store)
        assert store.physical_bytes() == GiB + 1  # the disk, and collect_fully's 1-byte file
        assert disk_use(tmp_path / "s") < 1.1 * GiB
        assert fsck.check(store).clean
