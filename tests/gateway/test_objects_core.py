"""vfsd.store.objects without HTTP: S3 semantics over the tree, checked against the core."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfsd.store import Store, fsck
from vfsd.store.conditions import Conditions
from vfsd.store.errors import (
    BadDigest,
    BucketExists,
    Busy,
    InvalidArgument,
    InvalidBucketName,
    InvalidName,
    KeyConflict,
    KeyTooLong,
    MetadataTooLarge,
    NoSuchBucket,
    NoSuchKey,
    NotEmpty,
    NotFound,
    NotModified,
    ObjectChanged,
    PreconditionFailed,
)
from vfsd.store.leases import Holder, process_start_time
from vfsd.store.listing import successor
from vfsd.store.objects import Objects

pytestmark = pytest.mark.timeout(60)
CS = 4096


@pytest.fixture
def store(tmp_path: Path):
    s = Store.init(tmp_path / "s", chunk_size=CS)
    yield s
    s.close()


@pytest.fixture
def objs(store: Store) -> Objects:
    o = Objects(store)
    o.create_bucket("bkt")
    return o


def put(objs: Objects, key: bytes, data: bytes, bucket: str = "bkt", **kw):
    return objs.put_object(bucket, key, [data], **kw)


def clean(store: Store) -> None:
    report = fsck.check(store)
    assert report.clean, report.damage


def test_buckets(objs: Objects, store: Store):
    assert [b.name for b in objs.list_buckets()] == ["bkt"]
    with pytest.raises(BucketExists):
        objs.create_bucket("bkt")
    for bad in ("ab", "Upper", "a..b", "192.168.1.1", "-ab", "x" * 64):
        with pytest.raises(InvalidBucketName):
            objs.create_bucket(bad)
    store.makedirs("not_a_bucket")  # '_' is not allowed: a directory, not a bucket
    assert [b.name for b in objs.list_buckets()] == ["bkt"]
    put(objs, b"a/b/c", b"x")
    with pytest.raises(NotEmpty):
        objs.delete_bucket("bkt")
    objs.delete_object("bkt", b"a/b/c")
    store.makedirs("bkt/empty/dirs")  # an empty directory is a folder marker: an object
    with pytest.raises(NotEmpty):
        objs.delete_bucket("bkt")
    assert objs.delete_object("bkt", b"empty/dirs/")  # and the emptied parent with it
    objs.delete_bucket("bkt")
    with pytest.raises(NoSuchBucket):
        objs.head_bucket("bkt")
    clean(store)


def test_put_get_and_core_agree(objs: Objects, store: Store):
    data = os.urandom(3 * CS + 17) + bytes(2 * CS) + b"tail"
    info = put(objs, b"dir/sub/file.bin", data, metadata={"Color": "blue"},
               headers={"Content-Type": "text/plain"})
    assert info.etag == hashlib.md5(data).hexdigest()
    assert store.read_file("bkt/dir/sub/file.bin") == data
    head = objs.head_object("bkt", b"dir/sub/file.bin")
    assert (head.etag, head.size, head.metadata, head.headers["content-type"]) == (
        info.etag, len(data), {"color": "blue"}, "text/plain")
    assert b"".join(objs.iter_read(head.ino, head.version, 0, head.size, window=5000)) == data
    ino = store.resolve("bkt/dir/sub/file.bin").ino
    assert b"user.s3.meta.color" in store.list_xattrs(ino)
    # Pieces of any size are re-cut into chunks: same chunks, same ETag.
    pieces = [data[i:i + 1000] for i in range(0, len(data), 1000)]
    again = objs.put_object("bkt", b"dir/sub/file.bin", pieces)
    assert again.etag == info.etag and again.ino != info.ino  # as rename(2) over it
    assert objs.head_object("bkt", b"dir/sub/file.bin").metadata == {}
    clean(store)


def test_a_put_over_a_file_writes_a_new_inode_with_its_owner_and_permissions(
        objs: Objects, store: Store):
    """As rename(2) over the name: the mount's kernel may still cache the old inode's size
    and pages, which must never meet the new bytes (tests/gateway/test_mount_coherence.py).
    The file keeps what the in-place rewrite kept: owner, permissions, extended attributes
    outside user.* (S3 metadata, replaced by the PUT's own); not setuid/setgid or file
    capabilities, as after a write. The old inode is freed, nobody having it open."""
    old = put(objs, b"tool", b"version 1", metadata={"old": "1"})
    store.setattr(old.ino, mode=0o6750, uid=1000, gid=100)
    for name in (b"trusted.label", b"security.capability", b"user.note"):
        store.set_xattr(old.ino, name, b"value")
    new = put(objs, b"tool", b"version 2, longer")
    inode = store.getattr(new.ino)
    assert new.ino != old.ino and store.read_file("bkt/tool") == b"version 2, longer"
    assert (stat.S_IMODE(inode.mode), inode.uid, inode.gid) == (0o750, 1000, 100)
    assert [n for n in store.list_xattrs(new.ino) if not n.startswith(b"vfsd.")] == [
        b"trusted.label"]
    assert store.get_xattr(new.ino, b"trusted.label") == b"value"
    assert objs.head_object("bkt", b"tool").metadata == {}
    with pytest.raises(NotFound):
        store.getattr(old.ino)
    clean(store)


def test_keys_that_cannot_be_paths(objs: Objects):
    for bad in (b"", b"/a", b"/", b"a//", b"a//b", b"a/./b", b"../a", b"a/../", b"a\0b"):
        with pytest.raises(InvalidName):
            put(objs, bad, b"x")
    with pytest.raises(InvalidArgument):  # a folder marker holds no bytes
        put(objs, b"a/", b"x")
    with pytest.raises(KeyTooLong):
        put(objs, b"x" * 256, b"x")
    with pytest.raises(KeyTooLong):
        put(objs, b"/".join([b"y" * 200] * 6), b"x")
    with pytest.raises(NoSuchBucket):
        put(objs, b"k", b"x", bucket="nobucket")


def test_file_and_directory_conflicts(objs: Objects, store: Store):
    put(objs, b"a/b/c", b"1")
    with pytest.raises(KeyConflict):
        put(objs, b"a/b", b"2")  # a/b/ holds an object
    with pytest.raises(KeyConflict):
        put(objs, b"a/b/c/d", b"3")  # a/b/c is an object
    store.makedirs("bkt/empty")
    with pytest.raises(KeyConflict):  # an empty directory is the folder marker empty/
        put(objs, b"empty", b"4")
    assert store.resolve("bkt/empty").is_dir
    clean(store)


def test_delete_removes_implicit_directories(objs: Objects, store: Store):
    put(objs, b"a/b/c/d", b"1")
    put(objs, b"a/x", b"2")
    assert objs.delete_object("bkt", b"a/b/c/d")
    assert [e.name for e in store.readdir(store.resolve("bkt/a").ino)] == [b"x"]
    assert objs.delete_object("bkt", b"a/x")
    assert store.readdir(store.resolve("bkt").ino) == []
    assert not objs.delete_object("bkt", b"a/x")
    clean(store)


def test_etag_follows_changes_through_the_core(objs: Objects, store: Store):
    info = put(objs, b"f", b"hello")
    ino = info.ino
    store.set_xattr(ino, b"user.other", b"v")  # metadata-only change: fingerprint revalidates
    assert objs.head_object("bkt", b"f").etag == info.etag
    store.write(ino, 5, b" world")  # contents change: recomputed
    assert objs.head_object("bkt", b"f").etag == hashlib.md5(b"hello world").hexdigest()
    store.write_file("bkt/g", b"from the mount")
    listing = objs.list_objects("bkt")
    assert {e.key: e.etag for e in listing.objects} == {
        b"f": hashlib.md5(b"hello world").hexdigest(),
        b"g": hashlib.md5(b"from the mount").hexdigest()}


def test_read_detects_a_replaced_object(objs: Objects):
    info = put(objs, b"f", b"a" * 3 * CS)
    reader = objs.iter_read(info.ino, info.version, 0, info.size, window=CS)
    next(reader)
    put(objs, b"f", b"b" * 3 * CS)
    with pytest.raises(ObjectChanged):
        next(reader)


def test_conditions(objs: Objects):
    info = put(objs, b"f", b"x")
    with pytest.raises(PreconditionFailed):
        put(objs, b"f", b"y", conditions=Conditions(if_none_match=("*",)))
    put(objs, b"new", b"y", conditions=Conditions(if_none_match=("*",)))
    with pytest.raises(PreconditionFailed):
        put(objs, b"f", b"y", conditions=Conditions(if_match=("0" * 32,)))
    with pytest.raises(NoSuchKey):
        put(objs, b"absent", b"y", conditions=Conditions(if_match=(info.etag,)))
    put(objs, b"f", b"z", conditions=Conditions(if_match=(info.etag,)))
    mtime = info.mtime_ns // 10**9
    with pytest.raises(NotModified):
        Conditions(if_none_match=(info.etag,)).check(info.etag, info.mtime_ns)
    with pytest.raises(NotModified):
        Conditions(if_modified_since=mtime).check(info.etag, info.mtime_ns)
    Conditions(if_modified_since=mtime - 1).check(info.etag, info.mtime_ns)
    with pytest.raises(PreconditionFailed):
        Conditions(if_unmodified_since=mtime - 1).check(info.etag, info.mtime_ns)
    # If-Match wins over If-Unmodified-Since (RFC 7232, S3)
    Conditions(if_match=(info.etag,), if_unmodified_since=mtime - 1).check(info.etag, info.mtime_ns)


def test_bad_digest_and_metadata_limits_leave_nothing(objs: Objects, store: Store):
    with pytest.raises(BadDigest):
        put(objs, b"f", b"data", content_md5=hashlib.md5(b"other").digest())
    with pytest.raises(MetadataTooLarge):
        put(objs, b"f", b"data", metadata={"big": "v" * 2100})
    with pytest.raises(NoSuchKey):
        objs.head_object("bkt", b"f")
    clean(store)


def test_failing_body_leaves_old_version(objs: Objects, store: Store):
    put(objs, b"f", b"old")

    def body():
        yield os.urandom(5 * CS)
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        objs.put_object("bkt", b"f", body())
    assert store.read_file("bkt/f") == b"old"
    clean(store)


def test_leased_object_is_refused(objs: Objects, store: Store):
    info = put(objs, b"disk", b"x")
    # A lease is re-entrant for its holder's own process: let another live process (our
    # parent) hold it.
    parent = os.getppid()
    other = Holder(parent, process_start_time(parent) or 0, "mount")
    store.leases.acquire(info.ino, other)
    try:
        with pytest.raises(Busy):
            put(objs, b"disk", b"y")
        with pytest.raises(Busy):
            objs.delete_object("bkt", b"disk")
        result = objs.delete_objects("bkt", [b"disk"])
        assert isinstance(result[0][1], Busy)
    finally:
        store.leases.release(info.ino, other)
    assert objs.delete_object("bkt", b"disk")


def test_a_lease_released_just_after_the_request_came_is_waited_for(objs: Objects,
                                                                     store: Store):
    """The kernel sends FUSE's RELEASE after close() returns: a PUT or DELETE sent right
    after a close on the mount may find the lease still there for a few milliseconds."""
    parent = os.getppid()
    other = Holder(parent, process_start_time(parent) or 0, "mount")
    for call in (lambda: put(objs, b"disk", b"y"), lambda: objs.delete_object("bkt", b"disk")):
        info = put(objs, b"disk", b"x")
        store.leases.acquire(info.ino, other)
        releasing = threading.Timer(0.1, store.leases.release, (info.ino, other))
        releasing.start()
        try:
            call()
        finally:
            releasing.join()


def test_a_copy_whose_source_is_replaced_while_its_etag_is_computed_copies_the_new_one(
        objs: Objects, store: Store, monkeypatch: pytest.MonkeyPatch):
    """A source changed outside S3 has no fresh ETag: it is computed between two tries of
    the copy's transaction. A PUT that replaced the source in between freed the inode being
    hashed (a PUT writes a new inode), and the copy answered NoSuchKey for a key that never
    went away (review, session 16): it now tries again and copies the new object."""
    put(objs, b"src", b"old bytes")
    store.write(store.resolve("bkt/src").ino, 0, b"OLD")  # through the core: ETag stale
    compute = objs.etag

    def replaced_first(ino: int):
        monkeypatch.setattr(objs, "etag", compute)
        put(objs, b"src", b"new bytes")
        return compute(ino)

    monkeypatch.setattr(objs, "etag", replaced_first)
    info = objs.copy_object("bkt", b"src", "bkt", b"dst")
    assert store.read_file("bkt/dst") == b"new bytes"
    assert info.etag == hashlib.md5(b"new bytes").hexdigest()
    clean(store)


def test_copy_shares_chunks(objs: Objects, store: Store):
    data = os.urandom(10 * CS)
    src = put(objs, b"src", data, metadata={"a": "1"}, headers={"content-type": "x/y"})
    physical = store.physical_bytes()
    objs.create_bucket("other")
    dst = objs.copy_object("bkt", b"src", "other", b"deep/dst")
    assert store.physical_bytes() == physical
    assert store.read_file("other/deep/dst") == data
    assert (dst.etag, dst.metadata, dst.headers) == (src.etag, {"a": "1"}, {"content-type": "x/y"})
    repl = objs.copy_object("bkt", b"src", "bkt", b"src", replace_metadata=True,
                            metadata={"b": "2"})
    assert repl.ino == src.ino and objs.head_object("bkt", b"src").metadata == {"b": "2"}
    with pytest.raises(Exception, match="itself"):
        objs.copy_object("bkt", b"src", "bkt", b"src")
    with pytest.raises(PreconditionFailed):
        objs.copy_object("bkt", b"src", "bkt", b"c2",
                         source_conditions=Conditions(if_none_match=(src.etag,)))
    clean(store)


def test_successor():
    assert successor(b"a/") == b"a0"
    assert successor(b"a\xff\xff") == b"b"
    assert successor(b"\xff") is None


def model_list(keys, prefix, delimiter, start_after, max_keys):
    items = []
    for key in sorted(keys):
        if not key.startswith(prefix) or (start_after and key <= start_after):
            continue
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        if cut >= 0:
            common = key[:cut + len(delimiter)]
            if start_after and common <= start_after:
                continue
            if items and items[-1] == ("p", common):
                continue
            items.append(("p", common))
        else:
            items.append(("k", key))
    return items[:max_keys], len(items) > max_keys


_parts = st.sampled_from([b"a", b"b", b"ab", b"a-b", b"z", b"\xc3\xa9"])
_keys = st.lists(st.lists(_parts, min_size=1, max_size=3).map(b"/".join), max_size=25,
                 unique=True)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(keys=_keys, prefix=st.sampled_from([b"", b"a", b"a/", b"b/a"]),
       delimiter=st.sampled_from([b"", b"/", b"-", b"b"]), max_keys=st.integers(1, 6))
def test_listing_pages_match_a_model(tmp_path_factory, keys, prefix, delimiter, max_keys):
    with Store.init(tmp_path_factory.mktemp("l") / "s", chunk_size=CS) as store:
        objs = Objects(store)
        objs.create_bucket("bkt")
        created = set()
        for key in keys:
            try:
                put(objs, key, b"v")
                created.add(key)
            except KeyConflict:
                pass
        # Walk the pages the way a client does and compare with the model page by page.
        start = b""
        seen = []
        for _page in range(100):
            listing = objs.list_objects("bkt", prefix, delimiter, start, max_keys)
            got = sorted([("k", e.key) for e in listing.objects] +
                         [("p", p) for p in listing.prefixes], key=lambda x: x[1])
            want, truncated = model_list(created, prefix, delimiter, start, max_keys)
            assert got == want
            assert listing.truncated == truncated
            seen += got
            if not listing.truncated:
                break
            start = listing.last
        all_items, _ = model_list(created, prefix, delimiter, b"", 10**6)
        assert seen == all_items


class CountingCursor:
    """Wraps an LMDB cursor and counts the steps a listing takes."""

    def __init__(self, cursor, steps):
        self.cursor, self.steps = cursor, steps

    def set_range(self, key):
        self.steps.append("seek")
        return self.cursor.set_range(key)

    def next(self):
        self.steps.append("next")
        return self.cursor.next()

    def key(self):
        return self.cursor.key()

    def value(self):
        return self.cursor.value()


def test_listing_skips_a_common_prefix_in_one_seek(objs: Objects, store: Store, monkeypatch):
    for i in range(300):
        put(objs, b"big/%03d" % i, b"")
    put(objs, b"c", b"")
    put(objs, b"d/1", b"")
    steps: list[str] = []
    tx_class = type(store.env.read().__enter__())
    original = tx_class.cursor
    monkeypatch.setattr(tx_class, "cursor",
                        lambda self, db: CountingCursor(original(self, db), steps))
    listing = objs.list_objects("bkt", delimiter=b"/")
    assert listing.prefixes == [b"big/", b"d/"] and [e.key for e in listing.objects] == [b"c"]
    assert len(steps) < 10, steps  # not 300: the 300 keys under big/ are jumped over


def test_a_file_deleted_while_its_etag_is_computed_is_no_such_key_and_left_out_of_lists(
        store: Store, objs: Objects, monkeypatch):
    """A file written on the mount has no ETag yet: HEAD and listings compute it, outside the
    lookup's transaction. Deleted in between, it is NoSuchKey (a listing keeps it as its page
    showed it), not the inode's NotFound (a 404 for the whole listing, as a QA pass saw under
    load)."""
    for name in ("mounted", "other"):  # as the mount writes: no ETag record
        store.write(store.write_file(f"bkt/{name}", b"").ino, 0, b"written on the mount")
    real_etag = Objects.etag
    victims = {store.resolve("bkt/mounted").ino}

    def deleted_first(self: Objects, ino: int):
        if ino in victims:
            victims.discard(ino)
            store.unlink(store.resolve("bkt").ino, b"mounted")
        return real_etag(self, ino)

    monkeypatch.setattr(Objects, "etag", deleted_first)
    listing = objs.list_objects("bkt")  # as the page was read: the key was there
    assert [e.key for e in listing.objects] == [b"mounted", b"other"]
    assert store.resolve("bkt/other") and not victims  # it did go meanwhile
    victims.add(ino := store.write_file("bkt/mounted", b"").ino)
    store.write(ino, 0, b"again")
    with pytest.raises(NoSuchKey):
        objs.head_object("bkt", b"mounted")
