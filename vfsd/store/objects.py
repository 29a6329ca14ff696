"""S3 object semantics over the tree (DESIGN.md, "The namespace").

A bucket is a top-level directory with a valid bucket name; an object is a regular file below
it, keyed by its path inside the bucket. Keys are bytes (S3 sends UTF-8; the mount may have
written anything). Each public call is one transaction, except that object bodies are staged
(hashed, appended, fdatasync'd) before the one write transaction that makes them visible, and
that reads of bodies happen outside any transaction, window by window, each window checked
against the version the read started from.

User metadata and content headers are `user.s3.*` xattrs (visible on the mount). The ETag is
kept in the internal xattr `vfsd.s3.etag` together with the inode version it was computed for
and a fingerprint of the chunk map; a file changed through the mount gets a new version, and
its ETag is recomputed (or revalidated by fingerprint) on the next request that needs it.
"""

from __future__ import annotations

import hashlib
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from . import changelog, chunks, etags, listing, namespace
from .chunks import StagedChunk
from .conditions import Conditions, needs_etag
from .env import U64, Tx
from .errors import (
    BadDigest,
    BucketExists,
    Busy,
    InvalidArgument,
    InvalidBucketName,
    InvalidName,
    IsADirectory,
    KeyConflict,
    KeyTooLong,
    MetadataTooLarge,
    NameTooLong,
    NoSuchBucket,
    NoSuchKey,
    NotADirectory,
    NotEmpty,
    NotFound,
    ObjectChanged,
    PermissionDenied,
    PreconditionFailed,
    ReadOnly,
)
from .files import check_file_writable
from .groupcommit import GroupCommit
from .listing import Listing
from .names import is_bucket_name, split_key
from .records import ROOT_INO, ChangeOp, Inode, InodeFlags, ino_key
from .segments import Extents
from .store import CAPABILITY_XATTR, Store

EMPTY_ETAG = listing.EMPTY_ETAG

CREATED_XATTR = b"vfsd.s3.created"
USER_PREFIX = b"user."
S3_PREFIX = b"user.s3."
INTERNAL_PREFIX = b"vfsd."  # xattrs of ours (ETag records, ...), hidden from the mount
META_PREFIX = b"user.s3.meta."
# Stored per object and returned on GET/HEAD when set.
CONTENT_HEADERS = ("content-type", "content-encoding", "content-disposition",
                   "content-language", "cache-control", "expires")
MAX_KEY = 1024
MAX_METADATA = 2048  # S3: user metadata (names + values) is at most 2 KiB
STAGE_BATCH_BYTES = 4 << 20  # bytes staged per fdatasync
READ_WINDOW = 1 << 20
FILE_MODE = stat.S_IFREG | 0o644
DIR_MODE = stat.S_IFDIR | 0o755
RELEASE_WAIT_SECONDS = 0.5  # see Objects._wait_for_release
_RETRIES = 5
T = TypeVar("T")


# --- values --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Bucket:
    name: str
    ino: int
    created_ns: int


@dataclass(slots=True)
class ObjectInfo:
    bucket: str
    key: bytes
    ino: int
    size: int
    mtime_ns: int
    version: int
    etag: str  # MD5 hex, unquoted
    metadata: dict[str, str] = field(default_factory=dict)  # x-amz-meta-<name> -> value
    headers: dict[str, str] = field(default_factory=dict)  # Content-Type & co, lower-case
    checksum: tuple[str, str] | None = None  # (algorithm, base64), as the client sent it
    part_sizes: tuple[int, ...] | None = None  # a multipart object's, while its ETag holds
    part_checksums: tuple[str, ...] | None = None  # its parts' (the `checksum` algorithm's)


# --- key and name checks ---------------------------------------------------------------------

def check_bucket_name(name: str) -> bytes:
    raw = name.encode()
    if not is_bucket_name(raw):
        raise InvalidBucketName(f"invalid bucket name {name!r}: 3-63 of a-z 0-9 . -, starting "
                                "and ending with a letter or digit, no '..', not an IP address")
    return raw


# --- the object store over the tree ----------------------------------------------------------

class Objects:
    """Buckets and objects of one store. Thread-safe: every call opens its own transactions."""

    def __init__(self, store: Store):
        self.store = store
        self.env = store.env
        self.origin = store.origin
        self.chunk_size = store.chunk_size
        self.group = GroupCommit(store.env)
        # The key index is keyed by bucket inode (8 bytes) + key; LMDB caps keys (511 bytes).
        self.max_key = min(MAX_KEY, store.env.lmdb.max_key_size() - 8)

    def check_key(self, key: bytes) -> list[bytes]:
        """A key's path components, or InvalidName/KeyTooLong for keys that cannot be a path."""
        if not key:
            raise InvalidName("the object key is empty")
        if len(key) > self.max_key:
            raise KeyTooLong(f"the key is {len(key)} bytes; this store takes keys of at most "
                             f"{self.max_key} bytes")
        try:
            return split_key(key)
        except NameTooLong:
            raise KeyTooLong("each '/'-separated part of a key is at most 255 bytes") from None
        except InvalidName:
            raise InvalidName(f"key {key.decode(errors='replace')!r} cannot be a path: no empty "
                              "parts ('//', leading or trailing '/'), no '.' or '..' parts, "
                              "no NUL") from None

    # --- buckets ---------------------------------------------------------------------------

    def bucket_inode(self, tx: Tx, name: str) -> Inode:
        raw = name.encode()
        entry = namespace.lookup(tx, ROOT_INO, raw) if is_bucket_name(raw) else None
        if entry is None or not stat.S_ISDIR(entry.mode_type):
            raise NoSuchBucket(f"no bucket {name}", bucket=name)
        return namespace.get_inode(tx, entry.ino)

    def _bucket_info(self, tx: Tx, inode: Inode) -> Bucket:
        raw = tx.get(tx.db.xattrs, namespace.xattr_key(inode.ino, CREATED_XATTR))
        created = U64.unpack(raw)[0] if raw and len(raw) == 8 else inode.mtime_ns
        return Bucket(inode.name.decode(), inode.ino, created)

    def list_buckets(self) -> list[Bucket]:
        """Top-level directories with valid bucket names, by name. One read transaction."""
        out = []
        with self.env.read() as tx:
            for entry in namespace.readdir(tx, ROOT_INO, 0, 1 << 62):
                if stat.S_ISDIR(entry.mode_type) and is_bucket_name(entry.name):
                    out.append(self._bucket_info(tx, namespace.get_inode(tx, entry.ino)))
        return sorted(out, key=lambda b: b.name)

    def head_bucket(self, name: str) -> Bucket:
        with self.env.read() as tx:
            return self._bucket_info(tx, self.bucket_inode(tx, name))

    def create_bucket(self, name: str) -> Bucket:
        """mkdir at the top level, recording the creation time. One write transaction."""
        raw = check_bucket_name(name)
        with self.env.write() as tx:
            if namespace.lookup(tx, ROOT_INO, raw) is not None:
                raise BucketExists(f"bucket {name} already exists")
            inode = namespace.make(tx, self.origin, ROOT_INO, raw, DIR_MODE, 0, 0)
            tx.put(tx.db.xattrs, namespace.xattr_key(inode.ino, CREATED_XATTR),
                   U64.pack(time.time_ns()))
            return self._bucket_info(tx, inode)

    def delete_bucket(self, name: str) -> None:
        """Remove a bucket that holds no objects; NotEmpty if it holds objects (an empty
        directory is one: a folder marker) or anything that is not a directory. Its unfinished
        multipart uploads go with it (as in S3). One transaction."""
        with self.env.write() as tx:
            bucket = self.bucket_inode(tx, name)
            prefix = U64.pack(bucket.ino)
            cursor = tx.cursor(tx.db.keys)
            if cursor.set_range(prefix) and cursor.key()[:8] == prefix:
                raise NotEmpty(f"bucket {name} is not empty")
            if not self._only_directories(tx, bucket.ino):
                raise NotEmpty(f"bucket {name} holds symlinks or special files")
            namespace.remove_tree(tx, self.origin, namespace.get_inode(tx, ROOT_INO),
                                  name.encode())
            from .multipart import drop_bucket_uploads  # multipart builds on this module
            drop_bucket_uploads(tx, name)

    def _only_directories(self, tx: Tx, ino: int) -> bool:
        for entry in namespace.readdir(tx, ino, 0, 1 << 62):
            if not stat.S_ISDIR(entry.mode_type) or not self._only_directories(tx, entry.ino):
                return False
        return True

    # --- reading ---------------------------------------------------------------------------

    def _lookup(self, tx: Tx, bucket: Inode, key: bytes) -> Inode | None:
        """The file a key names, or for a key ending in '/' (a folder marker) the directory:
        an empty one is in the key index; one holding objects is found in the tree."""
        if not key or len(key) > self.max_key:
            return None
        raw = tx.get(tx.db.keys, U64.pack(bucket.ino) + key)
        if raw:
            return namespace.get_inode(tx, U64.unpack(raw)[0])
        if key.endswith(b"/") and len(key) > 1:
            inode = bucket
            for part in key[:-1].split(b"/"):
                entry = namespace.lookup(tx, inode.ino, part)
                if entry is None or not stat.S_ISDIR(entry.mode_type):
                    return None
                inode = namespace.get_inode(tx, entry.ino)
            return inode
        return None

    def _info(self, tx: Tx, bucket: str, key: bytes, inode: Inode) -> tuple[ObjectInfo, bool]:
        """The object's attributes and xattrs; the flag says whether its ETag is current."""
        info = ObjectInfo(bucket, key, inode.ino, inode.size, inode.mtime_ns, inode.version, "")
        fresh = False
        fingerprint, parts, part_checksums = b"", None, None
        cursor = tx.cursor(tx.db.xattrs)
        prefix = ino_key(inode.ino)
        if cursor.set_range(prefix):
            for name, value in cursor:
                if name[:8] != prefix:
                    break
                name = bytes(name[8:])
                if name.startswith(META_PREFIX):
                    info.metadata[name[len(META_PREFIX):].decode(errors="surrogateescape")] = (
                        bytes(value).decode(errors="surrogateescape"))
                elif name.startswith(S3_PREFIX):
                    header = name[len(S3_PREFIX):].decode(errors="replace")
                    if header in CONTENT_HEADERS:
                        info.headers[header] = bytes(value).decode(errors="surrogateescape")
                elif name == etags.ETAG_XATTR:
                    version, fingerprint, etag, checksum = etags.unpack_record(value)
                    if version == inode.version:
                        info.etag, info.checksum, fresh = etag, checksum, True
                elif name == etags.PARTS_XATTR:
                    parts = etags.unpack_parts(value)
                elif name == etags.PART_CHECKSUMS_XATTR:
                    part_checksums = etags.unpack_part_checksums(value)
        if fresh and parts is not None and parts[0] == fingerprint and info.etag.endswith(
                f"-{len(parts[1])}"):
            info.part_sizes = parts[1]
            if (part_checksums is not None and part_checksums[0] == fingerprint
                    and len(part_checksums[1]) == len(parts[1]) and info.checksum is not None):
                info.part_checksums = part_checksums[1]
        if inode.is_dir:  # a folder marker: no bytes
            info.size, info.etag, info.checksum, info.part_sizes = 0, EMPTY_ETAG, None, None
            return info, True
        return info, fresh

    def head_object(self, bucket: str, key: bytes) -> ObjectInfo:
        """The object's attributes, metadata and ETag (recomputed first if the file changed
        through the mount since the ETag was stored)."""
        for _attempt in range(_RETRIES):
            with self.env.read() as tx:
                b = self.bucket_inode(tx, bucket)
                inode = self._lookup(tx, b, key)
                if inode is None:
                    raise NoSuchKey(f"no object {key.decode(errors='replace')!r} in {bucket}")
                info, fresh = self._info(tx, bucket, key, inode)
            if fresh:
                return info
            # Revalidated or recomputed for this version, the ETag record is fresh when read
            # again (with the part sizes, if a multipart object's ETag still holds).
            try:
                self.etag(info.ino)
            except NotFound:
                continue  # deleted meanwhile: the lookup above now says NoSuchKey
        raise ObjectChanged("the object kept changing while its ETag was computed")

    def read(self, ino: int, version: int, offset: int, size: int
             ) -> bytes | bytearray | memoryview:
        """Bytes [offset, offset+size) of the object as it was at `version`; ObjectChanged if
        it has changed since (a GET must never mix two versions). The version is checked in
        the transaction that finds the chunks, so the bodies read are that version's."""
        if size <= 0:
            with self.env.read() as tx:
                raw = tx.get(tx.db.inodes, ino_key(ino))
                if raw is None or not namespace.same_data(tx, Inode.unpack(ino, raw), version):
                    raise ObjectChanged("the object changed while it was being read")
            return b""
        try:
            return self.store.data.read(ino, offset, size, version)
        except NotFound:
            raise ObjectChanged("the object was deleted while it was being read") from None

    def extents(self, ino: int, version: int, offset: int, size: int) -> Extents:
        """`read` as extents of segment files to send with sendfile(2); the caller closes
        them."""
        try:
            return self.store.data.extents(ino, offset, size, version)
        except NotFound:
            raise ObjectChanged("the object was deleted while it was being read") from None

    def hold(self, ino: int) -> None:
        """A reader that will take several reads (a long GET): a DELETE or PUT of its key
        meanwhile parks the inode instead of freeing or rewriting it, so the reads go on
        with the bytes they started with, as on S3. Pair with `let_go`."""
        self.store.opens.hold(ino)

    def let_go(self, ino: int) -> None:
        """The reader of `hold` is done: free the inode if its name went meanwhile."""
        self.store.opens.release(ino)
        self.store.release_orphan(ino)

    def iter_read(self, ino: int, version: int, offset: int, length: int,
                  window: int = READ_WINDOW) -> Iterator[bytes | bytearray | memoryview]:
        end = offset + length
        while offset < end:
            piece = self.read(ino, version, offset, min(window, end - offset))
            if not piece:
                raise ObjectChanged("the object is shorter than it was")
            offset += len(piece)
            yield piece

    # --- ETags -----------------------------------------------------------------------------

    def etag(self, ino: int) -> tuple[str, int]:
        """(ETag, the inode version it belongs to). The stored one when its version is the
        inode's; else revalidated by chunk-map fingerprint (metadata-only change) or
        recomputed by reading the file, and stored again for next time."""
        for _attempt in range(_RETRIES):
            with self.env.read() as tx:
                inode = namespace.get_inode(tx, ino)
                raw = tx.get(tx.db.xattrs, namespace.xattr_key(ino, etags.ETAG_XATTR))
                record = etags.unpack_record(raw) if raw else None
                if record is not None and record[0] == inode.version:
                    return record[2], inode.version
                fingerprint = etags.fingerprint(tx, ino, inode.size)
            if record is not None and record[1] == fingerprint:
                etag, checksum = record[2], record[3]
            else:
                md5 = hashlib.md5()
                try:
                    for piece in self.iter_read(ino, inode.version, 0, inode.size):
                        md5.update(piece)
                except ObjectChanged:
                    continue
                etag, checksum = md5.hexdigest(), None
            with self.env.write() as tx:
                current = namespace.get_inode(tx, ino)
                if current.version != inode.version:
                    continue
                # A cache entry, not a change: no version tick, no change-log entry.
                tx.put(tx.db.xattrs, namespace.xattr_key(ino, etags.ETAG_XATTR),
                       etags.pack_record(inode.version, fingerprint, etag, checksum))
            return etag, inode.version
        raise ObjectChanged("the object kept changing while its ETag was computed")

    def _etag_in_tx(self, tx: Tx, inode: Inode) -> tuple[str, bytes, tuple[str, str] | None]:
        """(ETag, fingerprint, checksum) of `inode` if current; else etags.NeedEtag."""
        raw = tx.get(tx.db.xattrs, namespace.xattr_key(inode.ino, etags.ETAG_XATTR))
        if raw:
            version, fingerprint, etag, checksum = etags.unpack_record(raw)
            if version == inode.version:
                return etag, fingerprint, checksum
        raise etags.NeedEtag(inode.ino)

    # --- writing ---------------------------------------------------------------------------

    def _stage(self, bodies: Iterable[bytes | bytearray | memoryview]
               ) -> tuple[list[StagedChunk | None], int, bytes]:
        """Cut `bodies` (pieces of any size) into chunks and make them durable in batches.
        Returns (chunks, size, MD5 digest). No transaction is held meanwhile. Whole chunks
        are kept as views of the caller's buffers until staged: don't reuse a buffer."""
        cs = self.chunk_size
        is_zero = self.store.data.is_zero
        md5 = hashlib.md5()
        staged: list[StagedChunk | None] = []
        batch: list[bytes | memoryview] = []
        size = 0
        pending = bytearray()

        def flush() -> None:
            if not batch:
                return
            nonzero = [b for b in batch if not is_zero(b)]
            found = iter(chunks.stage(self.env, self.store.segments, nonzero,
                                      self.store.capacity_left()))
            staged.extend(None if is_zero(b) else next(found) for b in batch)
            batch.clear()

        for piece in bodies:
            view = memoryview(piece).cast("B")
            md5.update(view)
            size += len(view)
            if pending:
                take = min(cs - len(pending), len(view))
                pending += view[:take]
                view = view[take:]
                if len(pending) == cs:
                    batch.append(bytes(pending))
                    pending.clear()
            while len(view) >= cs:  # whole chunks of the caller's buffer: no copy
                batch.append(view[:cs])
                view = view[cs:]
            if len(view):
                pending += view
            if len(batch) * cs >= STAGE_BATCH_BYTES:
                flush()
        if pending:
            batch.append(bytes(pending))
        flush()
        return staged, size, md5.digest()

    def _place(self, tx: Tx, bucket: Inode, parts: list[bytes]) -> tuple[Inode, Inode | None]:
        """Inside a write transaction: make the key's implicit parent directories and return
        (parent directory, existing file or None). Refuses paths that need a file and a
        directory at one place, an empty directory (a folder marker) included."""
        parent = self._directories(tx, bucket, parts[:-1])
        name = parts[-1]
        entry = namespace.lookup(tx, parent.ino, name)
        if entry is None:
            return parent, None
        existing = namespace.get_inode(tx, entry.ino)
        key = b"/".join(parts).decode(errors="replace")
        if existing.is_dir:
            if namespace.readdir(tx, existing.ino, 0, 1):
                raise KeyConflict(f"{key + '/'!r} is a directory holding objects, so {key!r} "
                                  "cannot be an object")
            # An empty directory is the folder marker key/, an object of its own (a QA pass
            # found a PUT silently deleting one, and a shell's working directory with it).
            raise KeyConflict(f"{key + '/'!r} is a folder (an empty directory), so {key!r} "
                              "cannot be an object; delete the folder first")
        if not existing.is_file:
            raise KeyConflict(f"{key!r} is a symlink or special file")
        return parent, existing

    def _directories(self, tx: Tx, bucket: Inode, parts: list[bytes]) -> Inode:
        """The directory at `parts` below the bucket, made with its parents where missing."""
        directory = bucket
        for depth, part in enumerate(parts):
            entry = namespace.lookup(tx, directory.ino, part)
            if entry is None:
                directory = namespace.make(tx, self.origin, directory.ino, part, DIR_MODE, 0, 0)
                continue
            directory = namespace.get_inode(tx, entry.ino)
            if not directory.is_dir:
                path = b"/".join(parts[:depth + 1]).decode(errors="replace")
                raise KeyConflict(f"{path!r} is an object (or not a directory), so it cannot "
                                  "hold other objects")
        return directory

    def _install(self, tx: Tx, parent: Inode, existing: Inode | None, name: bytes,
                 key: bytes, metadata: Mapping[str, str], headers: Mapping[str, str],
                 staged: list[StagedChunk | None], size: int,
                 etag_record: tuple[bytes, str, tuple[str, str] | None],
                 part_sizes: list[int] | None = None,
                 part_checksums: list[str] | None = None) -> Inode:
        """Inside a PUT's or a multipart completion's transaction: make `name` in `parent`
        (new, or `existing` replaced) hold `staged`, with its S3 metadata and ETag record
        (fingerprint, etag, checksum), and a multipart object's part sizes and checksums."""
        inode = self._target(tx, parent, existing, name, key)
        self._set_s3_xattrs(tx, inode.ino, metadata, headers)
        inode = self.store.data.install(tx, inode.ino, staged, size)
        tx.put(tx.db.xattrs, namespace.xattr_key(inode.ino, etags.ETAG_XATTR),
               etags.pack_record(inode.version, *etag_record))
        if part_sizes is not None:
            tx.put(tx.db.xattrs, namespace.xattr_key(inode.ino, etags.PARTS_XATTR),
                   etags.pack_parts(etag_record[0], part_sizes))
        if part_checksums is not None:
            tx.put(tx.db.xattrs, namespace.xattr_key(inode.ino, etags.PART_CHECKSUMS_XATTR),
                   etags.pack_part_checksums(etag_record[0], part_checksums))
        return inode

    def _target(self, tx: Tx, parent: Inode, existing: Inode | None, name: bytes,
                key: bytes) -> Inode:
        """The inode a PUT, copy or completion writes `name`'s new contents into: always a
        new one, as rename(2) over the name would leave things. The old inode is freed, or
        kept by its other names, or parked while another process has it open (an open reader
        keeps the old bytes). Never the old inode rewritten in place: the mount's kernel may
        cache its size and pages until the change log tells it, and a reader opening it
        meanwhile read the new bytes cut at the old size. A kernel still naming the old
        inode now opens the old bytes (held or linked) or gets ESTALE (freed) and looks the
        name up again."""
        if existing is None:
            return namespace.make(tx, self.origin, parent.ino, name, FILE_MODE, 0, 0)
        self._check_replaceable(existing, key)
        # What the in-place rewrite kept stays: owner, permissions and extended attributes
        # outside S3's (user.*) and ours (vfsd.*); not setuid, setgid and file capabilities,
        # which a write drops. Who holds the old inode is asked inside the transaction: no
        # new holder can find it until the transaction ends.
        mode = stat.S_IFREG | stat.S_IMODE(existing.mode) & ~(stat.S_ISUID | stat.S_ISGID)
        kept = namespace.get_xattrs(
            tx, existing.ino, lambda n: not n.startswith((USER_PREFIX, INTERNAL_PREFIX))
            and n != CAPABILITY_XATTR)
        inode = namespace.replace_file(
            tx, self.origin, parent, name, existing, mode, existing.uid, existing.gid,
            still_open=not self.store.opens.replacing(tx, existing.ino))
        namespace.put_xattrs(tx, inode.ino, kept)
        return inode

    def _wait_for_release(self, ino: int) -> None:
        """Outside any transaction: the kernel sends FUSE's RELEASE after close() returns, so
        a writer on the mount that just closed the file may still hold its lease for a few
        milliseconds; a PUT or DELETE right after that close waits for it rather than
        answering 409. A file still open stays refused (checked again in the transaction)."""
        self.store.leases.settled_holder(ino, settle=RELEASE_WAIT_SECONDS)

    def _check_replaceable(self, inode: Inode, key: bytes) -> None:
        self.check_overwritable(inode, key)
        self.store.leases.check_free(inode.ino, key.decode(errors="replace"))

    def check_overwritable(self, inode: Inode, key: bytes) -> None:
        """What no S3 request may replace or delete: read-only files (snapshots, descriptors)
        and a VM's or volume's files. (A lease, checked at the change itself, may go.)"""
        check_file_writable(inode)
        if inode.flags & (InodeFlags.VM_FILE | InodeFlags.FIXED_SIZE):
            raise PermissionDenied(f"{key.decode(errors='replace')!r} belongs to a VM or "
                                   "volume; use `vfsd vm` / `vfsd volume`")

    def _set_s3_xattrs(self, tx: Tx, ino: int, metadata: Mapping[str, str],
                       headers: Mapping[str, str]) -> None:
        for old in namespace.list_xattrs(tx, ino):
            if old.startswith(USER_PREFIX) or old in (etags.ETAG_XATTR, etags.PARTS_XATTR,
                                                      etags.PART_CHECKSUMS_XATTR,
                                                      etags.UPLOAD_XATTR):
                tx.delete(tx.db.xattrs, namespace.xattr_key(ino, old))
        for name, value in _s3_xattrs(metadata, headers).items():
            tx.put(tx.db.xattrs, namespace.xattr_key(ino, name), value)

    def put_object(self, bucket: str, key: bytes,
                   bodies: Iterable[bytes | bytearray | memoryview], *,
                   metadata: Mapping[str, str] | None = None,
                   headers: Mapping[str, str] | None = None,
                   content_md5: bytes | None = None,
                   checksum: tuple[str, str] | Callable[[], tuple[str, str]] | None = None,
                   conditions: Conditions | None = None) -> ObjectInfo:
        """Create or replace an object. Bodies are staged first (an exception raised by the
        `bodies` iterator aborts the PUT with nothing visible); then one write transaction
        makes missing parent directories, creates the file or swaps its chunk map, and sets
        metadata and the ETag. After a crash the old object (or none) is there, never a mix.
        `checksum` is an (algorithm, value) pair the caller has verified; it is stored. It
        may be a callable giving the pair once the body is consumed (a trailing checksum)."""
        metadata, headers = dict(metadata or {}), dict(headers or {})
        _check_metadata(metadata)
        if key.endswith(b"/"):
            return self._put_folder(bucket, key, bodies, content_md5, checksum, conditions)
        parts = self.check_key(key)
        with self.env.read() as tx:  # fail fast, before reading a body
            existing = self._lookup(tx, self.bucket_inode(tx, bucket), key)
        if conditions and conditions.if_none_match == ("*",) and existing is not None:
            raise PreconditionFailed("the object exists (If-None-Match: *)")
        if existing is not None:
            self._wait_for_release(existing.ino)
        # A body longer than a segment must not lose its first segments to gc meanwhile.
        with self.store.segments.held_until_committed():
            staged, size, md5 = self._stage(bodies)
            if content_md5 is not None and content_md5 != md5:
                raise BadDigest("the Content-MD5 you specified did not match what was received")
            if callable(checksum):
                checksum = checksum()
            etag = md5.hex()
            fingerprint = etags.staged_fingerprint(staged, size)

            def commit(tx: Tx) -> ObjectInfo:
                b = self.bucket_inode(tx, bucket)
                parent, existing = self._place(tx, b, parts)
                self.check_write_conditions(tx, existing, conditions)
                inode = self._install(tx, parent, existing, parts[-1], key, metadata, headers,
                                      staged, size, (fingerprint, etag, checksum))
                return ObjectInfo(bucket, key, inode.ino, size, inode.mtime_ns,
                                  inode.version, etag, metadata, _lower(headers), checksum)

            # Concurrent PUTs share one durable commit (vfsd/store/groupcommit.py).
            return self.retrying_stale_etags(
                lambda: self.group.run(commit),
                "the object kept changing while its ETag was checked")

    def retrying_stale_etags(self, attempt: Callable[[], T], gave_up: str) -> T:
        """`attempt` (a write transaction that checks ETags) again each time it finds one
        stale (a file changed through the mount): the ETag is computed outside any
        transaction, then the attempt starts over; ObjectChanged(`gave_up`) after _RETRIES."""
        for _attempt in range(_RETRIES):
            try:
                return attempt()
            except etags.NeedEtag as need:
                try:
                    self.etag(need.ino)
                except NotFound:
                    continue  # replaced or deleted meanwhile: the attempt looks again
        raise ObjectChanged(gave_up)

    def check_write_conditions(self, tx: Tx, existing: Inode | None,
                               conditions: Conditions | None) -> None:
        """If-Match / If-None-Match of a write (PUT, completion) against the object it
        replaces, inside the transaction that replaces it."""
        if conditions:
            current = None
            if existing is not None and existing.is_dir:
                current = EMPTY_ETAG
            elif existing is not None:
                current = self._etag_in_tx(tx, existing)[0] if needs_etag(conditions) else ""
            conditions.check(current, existing.mtime_ns if existing else 0, reading=False)

    def _put_folder(self, bucket: str, key: bytes,
                    bodies: Iterable[bytes | bytearray | memoryview],
                    content_md5: bytes | None,
                    checksum: tuple[str, str] | Callable[[], tuple[str, str]] | None,
                    conditions: Conditions | None) -> ObjectInfo:
        """PUT of a key ending in '/', S3's folder marker (consoles, rclone, s3fs make them):
        the directory, made with its parents if missing. It holds no bytes; while empty it
        lists as that key, as a directory made on the mount does."""
        parts = self.check_key(key[:-1])
        if len(key) > self.max_key:  # the marker itself must fit the key index
            raise KeyTooLong(f"the key is {len(key)} bytes; this store takes keys of at most "
                             f"{self.max_key} bytes")
        for piece in bodies:  # read to the end: the body stream checks its signature there
            if len(piece):
                raise InvalidArgument("a key ending in '/' is a folder: it holds no bytes")
        if content_md5 is not None and content_md5 != hashlib.md5(b"").digest():
            raise BadDigest("the Content-MD5 you specified did not match what was received")
        if callable(checksum):
            checksum()
        with self.env.write() as tx:
            b = self.bucket_inode(tx, bucket)
            self.check_write_conditions(tx, self._lookup(tx, b, key), conditions)
            folder = self._directories(tx, b, parts)
        return ObjectInfo(bucket, key, folder.ino, 0, folder.mtime_ns, folder.version,
                          EMPTY_ETAG)

    def copy_object(self, src_bucket: str, src_key: bytes, dst_bucket: str, dst_key: bytes, *,
                    replace_metadata: bool = False,
                    metadata: Mapping[str, str] | None = None,
                    headers: Mapping[str, str] | None = None,
                    source_conditions: Conditions | None = None,
                    to_itself: bool = False) -> ObjectInfo:
        """CopyObject: the destination gets the source's chunk map by reference (no bytes
        move) and the source's metadata (COPY) or the given one (REPLACE), in one write
        transaction. Copying an object onto itself only changes its metadata; it needs
        `replace_metadata`, or `to_itself` when what changes is nothing the store keeps (S3
        allows such a copy to change the storage class)."""
        metadata, headers = dict(metadata or {}), dict(headers or {})
        if replace_metadata:
            _check_metadata(metadata)
        if src_key.endswith(b"/") or dst_key.endswith(b"/"):
            return self._copy_folder(src_bucket, src_key, dst_bucket, dst_key,
                                     source_conditions)
        parts = self.check_key(dst_key)

        def copy() -> ObjectInfo:
            with self.env.write() as tx:
                return self._copy(tx, src_bucket, src_key, dst_bucket, dst_key, parts,
                                  replace_metadata, metadata, headers, source_conditions,
                                  to_itself)

        return self.retrying_stale_etags(
            copy, "the source kept changing while its ETag was computed")

    def _copy_folder(self, src_bucket: str, src_key: bytes, dst_bucket: str, dst_key: bytes,
                     source_conditions: Conditions | None) -> ObjectInfo:
        """A folder marker copies to a folder marker (rclone copies empty directories so)."""
        if not (src_key.endswith(b"/") and dst_key.endswith(b"/")):
            raise InvalidArgument("a folder marker (a key ending in '/') copies only to "
                                  "another one")
        source = self.head_object(src_bucket, src_key)
        if source_conditions:
            source_conditions.check(source.etag, source.mtime_ns, reading=False)
        return self._put_folder(dst_bucket, dst_key, [], None, None, None)

    def _copy(self, tx: Tx, src_bucket: str, src_key: bytes, dst_bucket: str, dst_key: bytes,
              parts: list[bytes], replace_metadata: bool, metadata: dict[str, str],
              headers: dict[str, str], source_conditions: Conditions | None,
              to_itself: bool) -> ObjectInfo:
        src = self._lookup(tx, self.bucket_inode(tx, src_bucket), src_key)
        if src is None:
            raise NoSuchKey(f"no object {src_key.decode(errors='replace')!r} in {src_bucket}",
                            key=src_key)
        etag, fingerprint, checksum = self._etag_in_tx(tx, src)
        if source_conditions:
            source_conditions.check(etag, src.mtime_ns, reading=False)
        if not replace_metadata:
            info, _fresh = self._info(tx, src_bucket, src_key, src)
            metadata, headers = info.metadata, info.headers
            user = namespace.get_xattrs(
                tx, src.ino, lambda n: n.startswith(USER_PREFIX) and not n.startswith(S3_PREFIX))
        else:
            user = {}
        parent, existing = self._place(tx, self.bucket_inode(tx, dst_bucket), parts)
        if existing is not None and existing.ino == src.ino:
            if not replace_metadata and not to_itself:
                raise InvalidArgument("this copy request is illegal because it is trying to "
                                      "copy an object to itself without changing its metadata")
            self._check_replaceable(existing, dst_key)
            inode = existing
        else:
            inode = self._target(tx, parent, existing, parts[-1], dst_key)
            inode.stored = chunks.copy_chunks(tx, src.ino, inode.ino)
            inode.size = src.size
            changelog.record(tx, self.origin, ChangeOp.DATA, inode.ino)
        # A multipart object's part records go with the chunk map they describe (a self-copy
        # drops them with the other S3 xattrs, then gets them back here).
        src_parts = {name: bytes(raw) for name in (etags.PARTS_XATTR, etags.PART_CHECKSUMS_XATTR)
                     if (raw := tx.get(tx.db.xattrs, namespace.xattr_key(src.ino, name)))
                     is not None}
        self._set_s3_xattrs(tx, inode.ino, metadata, headers)
        namespace.put_xattrs(tx, inode.ino, user)
        now = time.time_ns()
        inode.mtime_ns = inode.ctime_ns = now
        namespace.put_inode(tx, inode)
        if existing is not None and existing.ino == src.ino:
            changelog.record(tx, self.origin, ChangeOp.ATTR, inode.ino)
        tx.put(tx.db.xattrs, namespace.xattr_key(inode.ino, etags.ETAG_XATTR),
               etags.pack_record(inode.version, fingerprint, etag, checksum))
        for name, raw in src_parts.items():
            if etags.stitched_into(raw) == fingerprint:
                tx.put(tx.db.xattrs, namespace.xattr_key(inode.ino, name), raw)
        return ObjectInfo(dst_bucket, dst_key, inode.ino, inode.size, inode.mtime_ns,
                          inode.version, etag, dict(metadata), _lower(headers), checksum)

    # --- deleting --------------------------------------------------------------------------

    def delete_object(self, bucket: str, key: bytes,
                      conditions: Conditions | None = None) -> bool:
        """Remove the object and the parent directories it leaves empty (not the bucket).
        True if there was an object. One write transaction, which also checks `conditions`
        (If-Match: a conditional delete) against the object it removes."""
        with self.env.read() as tx:
            existing = self._lookup(tx, self.bucket_inode(tx, bucket), key)
        if existing is not None:
            self._wait_for_release(existing.ino)

        def delete() -> bool:
            with self.env.write() as tx:
                b = self.bucket_inode(tx, bucket)
                if conditions:
                    self.check_write_conditions(tx, self._lookup(tx, b, key), conditions)
                return self._delete(tx, b, key)

        return self.retrying_stale_etags(
            delete, "the object kept changing while its ETag was checked")

    def delete_objects(self, bucket: str, keys: Iterable[bytes],
                       conditions: Mapping[bytes, Conditions] | None = None
                       ) -> list[tuple[bytes, Exception | None]]:
        """DeleteObjects: each key's outcome (None, or the error that kept it), in one write
        transaction; a key that fails changes nothing, the others still go. `conditions`
        holds the keys whose deletion is conditional (an ETag in the request)."""
        keys, wanted = list(keys), conditions or {}

        def delete() -> list[tuple[bytes, Exception | None]]:
            out: list[tuple[bytes, Exception | None]] = []
            with self.env.write() as tx:
                b = self.bucket_inode(tx, bucket)
                for key in keys:
                    try:
                        if key in wanted:
                            self.check_write_conditions(tx, self._lookup(tx, b, key),
                                                        wanted[key])
                        self._delete(tx, b, key)
                        out.append((key, None))
                    except (KeyConflict, PermissionDenied, ReadOnly, Busy, IsADirectory,
                            NotADirectory, PreconditionFailed,
                            NoSuchKey) as e:  # raised before anything changed
                        out.append((key, e))
            return out

        return self.retrying_stale_etags(
            delete, "objects kept changing while their ETags were checked")

    def _delete(self, tx: Tx, bucket: Inode, key: bytes) -> bool:
        # Every check comes before the first change, so a refusal leaves the tx clean.
        inode = self._lookup(tx, bucket, key)
        if inode is None:
            return False
        if inode.is_dir:
            return self._delete_folder(tx, bucket, key, inode)
        parts = key.split(b"/")
        chain = self._chain(tx, bucket, parts[:-1])
        self._check_replaceable(inode, key)
        namespace.check_writable_dir(chain[-1])
        # A file the mount (or another process) has open is parked, not freed under its reads;
        # one nobody has open cannot be opened until this transaction has ended.
        namespace.unlink(tx, self.origin, chain[-1].ino, parts[-1],
                         still_open=not self.store.opens.replacing(tx, inode.ino))
        self._remove_emptied(tx, chain, parts)
        return True

    def _delete_folder(self, tx: Tx, bucket: Inode, key: bytes, folder: Inode) -> bool:
        """DELETE of a folder marker: the directory goes if it is empty (it is the marker);
        one that holds objects stays, as those objects stay on S3."""
        if namespace.readdir(tx, folder.ino, 0, 1):
            return True
        parts = key[:-1].split(b"/")
        chain = self._chain(tx, bucket, parts[:-1])
        if folder.flags & InodeFlags.READONLY:
            raise ReadOnly(f"{key.decode(errors='replace')!r} is read-only")
        namespace.check_writable_dir(chain[-1])
        namespace.rmdir(tx, self.origin, chain[-1].ino, parts[-1])
        self._remove_emptied(tx, chain, parts)
        return True

    def _chain(self, tx: Tx, bucket: Inode, parts: list[bytes]) -> list[Inode]:
        """The bucket and the directories at `parts` below it, in order (a key's parents)."""
        chain = [bucket]
        for part in parts:
            entry = namespace.lookup(tx, chain[-1].ino, part)
            if entry is None:
                raise KeyConflict("the key index and the tree disagree")  # fsck would say
            chain.append(namespace.get_inode(tx, entry.ino))
        return chain

    def _remove_emptied(self, tx: Tx, chain: list[Inode], parts: list[bytes]) -> None:
        """The implicit parent directories a deletion left empty go too (not the bucket)."""
        for depth in range(len(chain) - 1, 0, -1):
            directory = namespace.get_inode(tx, chain[depth].ino)
            if directory.flags & InodeFlags.READONLY or namespace.readdir(tx, directory.ino, 0, 1):
                break
            namespace.rmdir(tx, self.origin, chain[depth - 1].ino, parts[depth - 1])

    # --- listing ---------------------------------------------------------------------------

    def list_objects(self, bucket: str, prefix: bytes = b"", delimiter: bytes = b"",
                     start_after: bytes = b"", max_keys: int = 1000) -> Listing:
        """See listing.list_objects."""
        return listing.list_objects(self, bucket, prefix, delimiter, start_after, max_keys)


# --- helpers -------------------------------------------------------------------------------

def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _check_metadata(metadata: Mapping[str, str]) -> None:
    total = sum(len(k.encode(errors="surrogateescape")) + len(v.encode(errors="surrogateescape"))
                for k, v in metadata.items())
    if total > MAX_METADATA:
        raise MetadataTooLarge(f"user metadata is {total} bytes; the limit is {MAX_METADATA}")
    for name in metadata:
        if not name or len(name) > 200 or "\0" in name:
            raise InvalidArgument(f"invalid metadata name {name!r}")


def _s3_xattrs(metadata: Mapping[str, str], headers: Mapping[str, str]) -> dict[bytes, bytes]:
    out = {}
    for name, value in headers.items():
        if name.lower() in CONTENT_HEADERS and value:
            out[S3_PREFIX + name.lower().encode()] = value.encode(errors="surrogateescape")
    for name, value in metadata.items():
        out[META_PREFIX + name.lower().encode(errors="surrogateescape")] = value.encode(
            errors="surrogateescape")
    return out
