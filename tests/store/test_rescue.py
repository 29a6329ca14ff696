"""A body staged from a chunk that dies and is compacted before the commit that references it
again is copied out of the retired segment, not lost (Store._rescue)."""

import os

import pytest

from vfsd.store import ROOT_INO, Store, fsck, gc
from vfsd.store.chunks import stage

pytestmark = pytest.mark.timeout(60)
CS = 64 * 1024


def test_staged_chunk_survives_its_segment_being_retired(tmp_path):
    with Store.init(tmp_path / "s") as store:
        body = os.urandom(CS)
        a = store.create(ROOT_INO, b"a")
        store.write(a.ino, 0, body)
        staged = stage(store.env, store.segments, [body])  # finds the existing chunk
        store.segments._seal_size = 0  # roll, so gc may take the segment holding it
        store.write(store.create(ROOT_INO, b"roll").ino, 0, b"x")
        store.unlink(ROOT_INO, b"a")  # the chunk dies
        report = gc.collect(store, grace=60)  # its segment is retired (still on disk)
        assert report.retired >= 1
        b = store.create(ROOT_INO, b"b")
        with store.env.write() as tx:  # the commit that references the staged chunk again
            store.data.install(tx, b.ino, staged, CS)
        gc.collect(store, grace=0)  # now the retired segment's file is deleted
        assert bytes(store.read(b.ino, 0, CS)) == body
        assert fsck.check(store).clean
