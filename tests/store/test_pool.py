"""The storage pool: a quota caps physical bytes; writes past it fail with NoSpace and leave
nothing visible (no partial file contents, no counted bytes); stats report thin overcommit."""

from __future__ import annotations

import random

import pytest

from vfsd.store import ROOT_INO, stats
from vfsd.store.errors import InvalidArgument, NoSpace, NotFound
from vfsd.store.vms import Vms

pytestmark = pytest.mark.timeout(60)
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CS = 64 * KiB


def test_core_write_past_the_quota_fails_whole(new_store, probe) -> None:
    store = new_store()
    f = store.create(ROOT_INO, b"f")
    store.write(f.ino, 0, random.Random(1).randbytes(MiB))
    store.set_quota(store.physical_bytes() + 2 * MiB)
    before = (store.physical_bytes(), store.getattr(f.ino).size, store.read(f.ino, 0, MiB))
    big = random.Random(2).randbytes(4 * MiB)
    with pytest.raises(NoSpace):
        store.write(f.ino, 512 * KiB, big)  # overlaps existing data and grows the file
    assert (store.physical_bytes(), store.getattr(f.ino).size,
            store.read(f.ino, 0, MiB)) == before
    probe.fsck_clean(store)
    # what fits still goes in; rewriting known chunks (dedup) or zeros costs nothing
    store.write(f.ino, MiB, big[:MiB])
    store.write(f.ino, 3 * MiB, big[:MiB])
    store.write(f.ino, 5 * MiB, bytes(4 * MiB))
    assert store.getattr(f.ino).size == 9 * MiB
    probe.fsck_clean(store)


def test_replace_past_the_quota_leaves_the_old_contents(new_store, probe) -> None:
    """replace() stages in batches; a quota smaller than the whole body but larger than each
    batch must still refuse it (found: each batch used to be checked on its own)."""
    store = new_store()
    old = random.Random(3).randbytes(256 * KiB)
    store.write_file("b/obj", old)
    store.set_quota(store.physical_bytes() + 6 * MiB)
    parent = store.resolve("b").ino
    body = random.Random(4).randbytes(16 * MiB)  # 256 chunks = 4 staging batches of 4 MiB
    physical = store.physical_bytes()
    with pytest.raises(NoSpace):
        store.replace(parent, b"obj", (body[i:i + CS] for i in range(0, len(body), CS)))
    assert store.read_file("b/obj") == old
    assert store.physical_bytes() == physical
    with pytest.raises(NoSpace):
        store.replace(parent, b"new", (body[i:i + CS] for i in range(0, len(body), CS)))
    assert [e.name for e in store.readdir(parent)] == [b"obj"]
    probe.fsck_clean(store)
    store.set_quota(None)
    store.replace(parent, b"obj", (body[i:i + CS] for i in range(0, len(body), CS)))
    assert store.read_file("b/obj") == body
    probe.fsck_clean(store)


def test_write_chunks_past_the_quota_fails_whole(new_store, probe) -> None:
    store = new_store()
    f = store.create(ROOT_INO, b"f")
    store.set_quota(store.physical_bytes() + 3 * CS + 100)
    rng = random.Random(5)
    with pytest.raises(NoSpace):
        store.write_chunks(f.ino, {i: rng.randbytes(CS) for i in range(8)}, size=8 * CS)
    assert store.getattr(f.ino).size == 0 and store.getattr(f.ino).stored == 0
    probe.fsck_clean(store)


def test_a_commit_past_the_quota_to_a_deleted_file_is_not_found(new_store) -> None:
    """The mount retries a commit the full pool refused; to a file deleted meanwhile it must
    hear NotFound (and drop the data), not NoSpace again for as long as the pool is full."""
    store = new_store()
    ino = store.write_file("f", b"x").ino
    store.unlink(ROOT_INO, b"f")
    store.set_quota(store.physical_bytes() + CS)
    with pytest.raises(NotFound):
        store.write_chunks(ino, {i: random.randbytes(CS) for i in range(4)}, size=None)


def test_quota_must_be_positive(new_store) -> None:
    store = new_store()
    with pytest.raises(InvalidArgument):
        store.set_quota(0)
    store.set_quota(5 * GiB)
    assert store.quota() == 5 * GiB and store.capacity() == 5 * GiB
    store.set_quota(None)
    assert store.quota() is None and store.capacity() > store.physical_bytes()


def test_stats_overcommit(new_store) -> None:
    """Thin disks promise more than the pool holds: overcommit > 1 is what `vfsd stats` warns
    about. Snapshots are read-only and never grow, so they promise nothing more."""
    store = new_store()
    store.set_quota(10 * GiB)
    vms = Vms(store)
    vms.create("a", 4 * GiB, GiB)
    st = stats.collect(store)
    assert st.provisioned_bytes == 4 * GiB + GiB + 8684  # disk + swap + BIOS nvram
    assert st.overcommit < 1
    vms.create("b", 8 * GiB, GiB)
    st = stats.collect(store)
    assert st.overcommit > 1 and st.capacity_bytes == 10 * GiB
    assert st.physical_bytes < MiB  # thin: nothing written yet
    from vfsd.store.snapshots import Snapshots
    Snapshots(store).create("b", "s1")
    assert stats.collect(store).provisioned_bytes == st.provisioned_bytes
