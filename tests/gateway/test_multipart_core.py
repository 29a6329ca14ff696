"""vfsd.store.multipart without HTTP: stitching parts of any size into fixed-size chunks,
references held by parts (gc keeps them, fsck counts them), aligned parts not copied."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfsd.store import Store, fsck, gc
from vfsd.store.chunks import LOGICAL
from vfsd.store.errors import (
    EntityTooSmall,
    InvalidPart,
    InvalidPartOrder,
    NoSpace,
    NoSuchBucket,
    NoSuchUpload,
)
from vfsd.store.multipart import Uploads, multipart_etag
from vfsd.store.objects import Objects

pytestmark = pytest.mark.timeout(120)
CS = 4096


@pytest.fixture
def store(tmp_path: Path):
    s = Store.init(tmp_path / "s", chunk_size=CS)
    yield s
    s.close()


@pytest.fixture
def uploads(store: Store) -> Uploads:
    objects = Objects(store)
    objects.create_bucket("bkt")
    return Uploads(objects, min_part_size=1)


def read_all(uploads: Uploads, key: bytes) -> bytes:
    info = uploads.objects.head_object("bkt", key)
    return b"".join(bytes(p) for p in uploads.objects.iter_read(info.ino, info.version, 0,
                                                                   info.size))


def pieces(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def complete(uploads: Uploads, key: bytes, parts: list[bytes]):
    upload = uploads.create("bkt", key)
    listed = []
    for number, body in enumerate(parts, 1):
        part = uploads.upload_part("bkt", key, upload.upload_id, number, pieces(body))
        listed.append((number, f'"{part.etag}"'))
    return uploads.complete("bkt", key, upload.upload_id, listed)


def part_body(draw_kind: int, size: int) -> bytes:
    if draw_kind == 0:
        return bytes(size)  # holes
    if draw_kind == 1:
        return (b"abcd" * (size // 4 + 1))[:size]  # dedups with itself
    return os.urandom(size)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 2),
                          st.sampled_from([1, CS - 1, CS, CS + 1, 2 * CS, 3 * CS + 17, 5000])),
                min_size=1, max_size=6))
def test_stitch_any_part_sizes(uploads, specs):
    parts = [part_body(kind, size) for kind, size in specs]
    key = hashlib.sha1(repr(specs).encode()).hexdigest().encode()
    info = complete(uploads, key, parts)
    assert info.etag == multipart_etag(hashlib.md5(p).digest() for p in parts)
    assert read_all(uploads, key) == b"".join(parts)
    assert uploads.objects.head_object("bkt", key).etag == info.etag
    report = fsck.check(uploads.store)
    assert report.clean, report.damage


def test_aligned_parts_are_not_copied(uploads, store, monkeypatch):
    """Chunk-multiple parts are stitched by reference: complete reads back only the last
    part's short tail chunk (dedup would hide a copy in the space figures, so count reads)."""
    parts = [os.urandom(3 * CS), os.urandom(2 * CS), os.urandom(CS + 5)]
    upload = uploads.create("bkt", b"k")
    listed = []
    for number, body in enumerate(parts, 1):
        listed.append((number, uploads.upload_part("bkt", b"k", upload.upload_id, number,
                                                   [body]).etag))
    reads = []
    real_read = store.segments.read
    monkeypatch.setattr(store.segments, "read", lambda loc: reads.append(loc) or real_read(loc))
    before = sum(store.segments.segment_sizes().values())
    uploads.complete("bkt", b"k", upload.upload_id, listed)
    assert len(reads) == 1
    assert sum(store.segments.segment_sizes().values()) == before  # no body written
    monkeypatch.undo()
    assert read_all(uploads, b"k") == b"".join(parts)


def test_unaligned_part_rechunks_what_follows(uploads, store):
    parts = [os.urandom(2 * CS + 1), os.urandom(2 * CS)]
    info = complete(uploads, b"k", parts)
    assert read_all(uploads, b"k") == b"".join(parts)
    assert info.size == 4 * CS + 1
    report = fsck.check(store)
    assert report.clean, report.damage


def test_parts_survive_gc_and_abort_releases(uploads, store):
    upload = uploads.create("bkt", b"k")
    body = os.urandom(8 * CS)
    part = uploads.upload_part("bkt", b"k", upload.upload_id, 1, [body])
    gc.collect(store, grace=0, dead_ratio=0.0)
    gc.collect(store, grace=0, dead_ratio=0.0)
    with store.env.read() as tx:
        assert tx.counter(LOGICAL) == len(body)
    report = fsck.check(store)
    assert report.clean, report.damage
    uploads.abort("bkt", b"k", upload.upload_id)
    with store.env.read() as tx:
        assert tx.counter(LOGICAL) == 0
        assert tx.entries(tx.db.uploads) == 0
    with pytest.raises(NoSuchUpload):
        uploads.complete("bkt", b"k", upload.upload_id, [(1, part.etag)])
    # a completed upload survives gc too
    info = complete(uploads, b"k2", [body, body[:100]])
    gc.collect(store, grace=0, dead_ratio=0.0)
    assert read_all(uploads, b"k2") == body + body[:100]
    assert info.size == len(body) + 100
    report = fsck.check(store)
    assert report.clean, report.damage


def test_replacing_a_part_drops_the_old_references(uploads, store):
    upload = uploads.create("bkt", b"k")
    uploads.upload_part("bkt", b"k", upload.upload_id, 1, [os.urandom(4 * CS)])
    new = uploads.upload_part("bkt", b"k", upload.upload_id, 1, [os.urandom(2 * CS)])
    with store.env.read() as tx:
        assert tx.counter(LOGICAL) == 2 * CS
    uploads.complete("bkt", b"k", upload.upload_id, [(1, new.etag)])
    with store.env.read() as tx:
        assert tx.counter(LOGICAL) == 2 * CS  # now held by the object only
    assert fsck.check(store).clean


def test_complete_errors(store):
    objects = Objects(store)
    objects.create_bucket("bkt")
    uploads = Uploads(objects, min_part_size=2 * CS)
    upload = uploads.create("bkt", b"k")
    small = uploads.upload_part("bkt", b"k", upload.upload_id, 1, [b"x" * CS])
    last = uploads.upload_part("bkt", b"k", upload.upload_id, 2, [b"y"])
    with pytest.raises(EntityTooSmall):
        uploads.complete("bkt", b"k", upload.upload_id, [(1, small.etag), (2, last.etag)])
    with pytest.raises(InvalidPartOrder):
        uploads.complete("bkt", b"k", upload.upload_id, [(2, last.etag), (1, small.etag)])
    with pytest.raises(InvalidPartOrder):
        uploads.complete("bkt", b"k", upload.upload_id, [(1, small.etag), (1, small.etag)])
    with pytest.raises(InvalidPart):
        uploads.complete("bkt", b"k", upload.upload_id, [(1, last.etag)])
    with pytest.raises(NoSuchUpload):
        uploads.upload_part("bkt", b"other", upload.upload_id, 3, [b"z"])
    with pytest.raises(NoSuchUpload):
        uploads.upload_part("bkt", b"k", "not-an-id", 3, [b"z"])
    with pytest.raises(NoSuchBucket):
        uploads.create("nope", b"k")
    # nothing became visible, and the upload is intact
    assert len(uploads.list_parts("bkt", b"k", upload.upload_id)[1]) == 2
    assert uploads.objects.list_objects("bkt").objects == []
    assert fsck.check(store).clean


def test_deleting_a_bucket_drops_its_uploads(uploads, store):
    uploads.objects.create_bucket("other")
    gone = uploads.create("bkt", b"k")
    kept = uploads.create("other", b"k")
    for upload, bucket in ((gone, "bkt"), (kept, "other")):
        uploads.upload_part(bucket, b"k", upload.upload_id, 1, [os.urandom(3 * CS)])
    uploads.objects.delete_bucket("bkt")
    with store.env.read() as tx:
        assert tx.counter(LOGICAL) == 3 * CS  # only the other bucket's part is held
    uploads.objects.create_bucket("bkt")
    with pytest.raises(NoSuchUpload):
        uploads.list_parts("bkt", b"k", gone.upload_id)
    assert [u.upload_id for u in uploads.list_uploads("other")[0]] == [kept.upload_id]
    assert fsck.check(store).clean


def test_a_part_past_the_pool_quota_is_refused_whole(store: Store, uploads: Uploads) -> None:
    """A part is staged in 16 MiB batches, each checked against the pool as it stood; a part
    of several batches went past the quota (a QA pass: a 300 MiB pool held 324.9 MiB after
    40 MiB parts). The part's commit now judges it whole, as a PUT's does."""
    store.set_quota(store.physical_bytes() + (20 << 20))  # each batch fits, 30 MiB does not
    upload = uploads.create("bkt", b"big")
    physical = store.physical_bytes()
    with pytest.raises(NoSpace):
        uploads.upload_part("bkt", b"big", upload.upload_id, 1,
                            pieces(os.urandom(30 << 20), 1 << 20))
    assert store.physical_bytes() == physical
    uploads.upload_part("bkt", b"big", upload.upload_id, 1, pieces(os.urandom(8 << 20), 1 << 20))
    assert physical < store.physical_bytes() <= (store.quota() or 0)
    assert [p.number for p in uploads.list_parts("bkt", b"big", upload.upload_id)[1]] == [1]
    assert fsck.check(store).clean


def test_an_upload_to_a_key_s3_may_not_replace_is_refused_at_create(store: Store,
                                                                      uploads: Uploads) -> None:
    """A VM's files and read-only files refuse PUT at once; a multipart upload to them was
    refused only at Complete, after its parts had taken pool space (a QA pass)."""
    from vfsd.store.errors import PermissionDenied, ReadOnly
    from vfsd.store.vms import Vms

    Vms(store).create("web", 1 << 20, 64 << 20)
    for key in (b"web/web-flat.vmdk", b"web/web.vmdk"):
        with pytest.raises((PermissionDenied, ReadOnly)):
            uploads.create("vms", key)
    assert uploads.create("vms", b"web/notes.txt").key == b"web/notes.txt"  # not a VM file
