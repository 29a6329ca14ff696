"""S3 multipart uploads over the chunk store.

An upload lives in the `uploads` db until it is completed or aborted:

    upload id (32 ASCII hex bytes) + part number (u32 BE)  ->  record

Part number 0 is the upload's header (bucket, key, metadata, content headers, initiation
time) as JSON; parts 1..10000 are part manifests: size, mtime, MD5, an optional client
checksum and the part's chunk digests (an all-zero digest is a hole). A part's chunks are
staged like a PUT's (durable in segments before the transaction that records the part) and
the manifest holds one reference on each, so garbage collection keeps them; `fsck` counts
these references (`chunk_references`).

The completed object keeps the upload's id and the inode version it made (xattr
`vfsd.s3.upload`), so a retried CompleteMultipartUpload, whose first answer was lost, is
answered as the first was while the object is unchanged; otherwise NoSuchUpload.

CompleteMultipartUpload stitches the parts' chunk lists into the object's chunk map in one
write transaction. Where every part before a given one is a multiple of the chunk size, that
part's chunks are reused as they are (no body is read or written); after a part that is not,
the rest of the object's bytes sit at other offsets in its fixed-size chunks, so from there on
bodies are read back and re-chunked (staged before the final transaction).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from . import checksums, chunks, namespace
from .chunks import StagedChunk
from .conditions import Conditions
from .env import Tx
from .errors import (
    BadDigest,
    EntityTooSmall,
    InvalidArgument,
    InvalidPart,
    InvalidPartOrder,
    InvalidRequest,
    NoSuchUpload,
    ObjectChanged,
    PreconditionFailed,
)
from .etags import UPLOAD_XATTR, pack_upload, staged_fingerprint, unpack_upload
from .objects import (
    STAGE_BATCH_BYTES,
    ObjectInfo,
    Objects,
    _check_metadata,
    _lower,
)
from .records import ChunkLocation

MIN_PART_SIZE = 5 << 20  # S3's: every part but the last is at least 5 MiB
MAX_PART_NUMBER = 10_000
_PART = struct.Struct(">QQ16sIH")  # size, mtime ns, md5, chunk count, checksum text length
_U32 = struct.Struct(">I")
_ZERO = bytes(32)
_ID_LENGTH = 32


@dataclass(slots=True)
class Upload:
    upload_id: str
    bucket: str
    key: bytes
    initiated_ns: int
    metadata: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    checksum_algorithm: str | None = None
    checksum_type: str | None = None  # COMPOSITE or FULL_OBJECT, with an algorithm


@dataclass(slots=True)
class Part:
    number: int
    size: int
    mtime_ns: int
    md5: bytes
    digests: list[bytes | None]  # None: a hole (all-zero chunk)
    checksum: tuple[str, str] | None = None

    @property
    def etag(self) -> str:
        return self.md5.hex()


def _key(upload_id: str, number: int) -> bytes:
    return upload_id.encode() + _U32.pack(number)


def _check_id(upload_id: str) -> None:
    if len(upload_id) != _ID_LENGTH or any(c not in "0123456789abcdef" for c in upload_id):
        raise NoSuchUpload("The specified upload does not exist. The upload ID may be invalid, "
                           "or the upload may have been aborted or completed.")


def _pack_header(upload: Upload) -> bytes:
    return json.dumps({
        "bucket": upload.bucket, "key": upload.key.hex(), "initiated": upload.initiated_ns,
        "metadata": upload.metadata, "headers": upload.headers,
        "checksum": upload.checksum_algorithm, "checksum_type": upload.checksum_type},
        ensure_ascii=False).encode("utf-8", errors="surrogateescape")


def _unpack_header(upload_id: str, raw: bytes | memoryview) -> Upload:
    d = json.loads(bytes(raw).decode("utf-8", errors="surrogateescape"))
    algorithm = d["checksum"]
    checksum_type = d.get("checksum_type") or (  # uploads begun before session 10
        checksums.default_type(algorithm) if algorithm else None)
    return Upload(upload_id, d["bucket"], bytes.fromhex(d["key"]), d["initiated"],
                  d["metadata"], d["headers"], algorithm, checksum_type)


def _pack_part(part: Part) -> bytes:
    checksum = f"{part.checksum[0]}:{part.checksum[1]}".encode() if part.checksum else b""
    return (_PART.pack(part.size, part.mtime_ns, part.md5, len(part.digests), len(checksum))
            + checksum + b"".join(d or _ZERO for d in part.digests))


def _unpack_part(number: int, raw: bytes | memoryview) -> Part:
    raw = bytes(raw)
    size, mtime, md5, count, clen = _PART.unpack_from(raw)
    at = _PART.size
    checksum_text = raw[at:at + clen].decode()
    at += clen
    digests: list[bytes | None] = []
    for i in range(count):
        d = raw[at + 32 * i: at + 32 * (i + 1)]
        digests.append(None if d == _ZERO else d)
    algorithm, _, value = checksum_text.partition(":")
    return Part(number, size, mtime, md5, digests, (algorithm, value) if clen else None)


def _part_digests(raw: bytes | memoryview) -> Iterator[bytes]:
    raw = bytes(raw)
    _size, _mtime, _md5, count, clen = _PART.unpack_from(raw)
    at = _PART.size + clen
    for i in range(count):
        d = raw[at + 32 * i: at + 32 * (i + 1)]
        if d != _ZERO:
            yield d


def chunk_references(tx: Tx) -> Iterator[bytes]:
    """Every chunk reference held by parts of unfinished uploads (for fsck)."""
    for key, raw in tx.cursor(tx.db.uploads):
        if _U32.unpack(bytes(key[-4:]))[0] != 0:
            yield from _part_digests(raw)


def drop_uploads_missing_chunks(tx: Tx) -> list[str]:
    """For repair: unfinished uploads with a part whose chunk is no longer indexed (its
    body was lost) cannot complete; drop them, without touching reference counts (repair
    recounts them). Returns them as 'bucket/key (upload id)'."""
    doomed: dict[str, str] = {}
    headers: dict[str, str] = {}
    for key, raw in tx.cursor(tx.db.uploads):
        upload_id = bytes(key[:_ID_LENGTH]).decode()
        if _U32.unpack(bytes(key[-4:]))[0] == 0:
            upload = _unpack_header(upload_id, raw)
            headers[upload_id] = f"{upload.bucket}/{upload.key.decode(errors='replace')}"
        elif upload_id not in doomed and any(
                tx.get(tx.db.chunks, digest) is None for digest in _part_digests(raw)):
            doomed[upload_id] = ""
    for upload_id in doomed:
        doomed[upload_id] = f"{headers.get(upload_id, '?')} ({upload_id})"
        _drop(tx, upload_id, references=False)
    return list(doomed.values())


def drop_bucket_uploads(tx: Tx, bucket: str) -> int:
    """Inside a write transaction deleting `bucket`: drop its unfinished uploads and their
    references (S3 deletes a bucket with uploads in progress; they go with it)."""
    doomed = []
    for key, raw in tx.cursor(tx.db.uploads):
        if _U32.unpack(bytes(key[-4:]))[0] == 0:
            upload_id = bytes(key[:_ID_LENGTH]).decode()
            if _unpack_header(upload_id, raw).bucket == bucket:
                doomed.append(upload_id)
    for upload_id in doomed:
        _drop(tx, upload_id)
    return len(doomed)


def _records(tx: Tx, upload_id: str) -> Iterator[tuple[int, bytes]]:
    """The part records of an upload (not its header), by part number."""
    prefix = upload_id.encode()
    cursor = tx.cursor(tx.db.uploads)
    if cursor.set_range(_key(upload_id, 1)):
        for key, raw in cursor:
            if bytes(key[:_ID_LENGTH]) != prefix:
                break
            yield _U32.unpack(bytes(key[_ID_LENGTH:]))[0], bytes(raw)


def _drop(tx: Tx, upload_id: str, *, references: bool = True) -> None:
    """Delete an upload's records and (unless repair recounts them) the chunk references its
    parts hold."""
    for number, raw in list(_records(tx, upload_id)):
        for digest in _part_digests(raw) if references else ():
            chunks.decref(tx, digest)
        tx.delete(tx.db.uploads, _key(upload_id, number))
    tx.delete(tx.db.uploads, _key(upload_id, 0))


def _object_checksum(upload: Upload, parts: list[Part], claimed: tuple[str, str] | None,
                     claimed_type: str | None) -> tuple[str, str] | None:
    """The object's (algorithm, checksum) made of its parts' (None for an upload begun
    without an algorithm), checked against the one the client claims, if any."""
    algorithm, kind = upload.checksum_algorithm, upload.checksum_type
    if claimed_type is not None and claimed_type != kind:
        raise InvalidRequest(f"The upload was created using the {kind or 'null'} checksum "
                             "mode. The complete request must use the same checksum mode.")
    if claimed is not None and claimed[0] != algorithm:
        raise InvalidRequest(f"The upload was created using a {algorithm or 'null'} checksum. "
                             "The complete request must use the same checksum algorithm.")
    if algorithm is None or kind is None:
        return None
    sums = [(p.checksum[1], p.size) for p in parts
            if p.checksum is not None and p.checksum[0] == algorithm]
    if len(sums) < len(parts):  # parts sent without one (UploadPartCopy, older clients)
        if claimed is not None:
            raise InvalidRequest(f"Every part needs a {algorithm.upper()} checksum for the "
                                 "object's to be checked.")
        return None
    value = checksums.combine(algorithm, kind, sums)
    if claimed is not None and claimed[1].partition("-")[0] != value.partition("-")[0]:
        raise BadDigest(f"The {algorithm.upper()} you specified did not match the calculated "
                        "checksum.")
    return algorithm, value


def multipart_etag(md5s: Iterable[bytes]) -> str:
    """S3's ETag of a multipart object: MD5 of the parts' binary MD5s, then -<part count>."""
    md5s = list(md5s)
    return f"{hashlib.md5(b''.join(md5s)).hexdigest()}-{len(md5s)}"


class Uploads:
    """Multipart uploads of one store. Thread-safe: every call opens its own transactions."""

    def __init__(self, objects: Objects, min_part_size: int = MIN_PART_SIZE):
        self.objects = objects
        self.store = objects.store
        self.env = objects.env
        self.chunk_size = objects.chunk_size
        self.min_part_size = min_part_size

    # --- lookups ---------------------------------------------------------------------------

    def _upload(self, tx: Tx, bucket: str, key: bytes, upload_id: str) -> Upload:
        _check_id(upload_id)
        raw = tx.get(tx.db.uploads, _key(upload_id, 0))
        upload = _unpack_header(upload_id, raw) if raw is not None else None
        if upload is None or upload.bucket != bucket or upload.key != key:
            raise NoSuchUpload("The specified upload does not exist. The upload ID may be "
                               "invalid, or the upload may have been aborted or completed.")
        return upload

    def _completed(self, tx: Tx, bucket: str, key: bytes, upload_id: str) -> bool:
        """Whether `upload_id` made the object `key` now holds, unchanged since: a retried
        CompleteMultipartUpload whose first answer the client never got."""
        inode = self.objects._lookup(tx, self.objects.bucket_inode(tx, bucket), key)
        if inode is None:
            return False
        raw = tx.get(tx.db.xattrs, namespace.xattr_key(inode.ino, UPLOAD_XATTR))
        return raw is not None and unpack_upload(raw) == (inode.version, upload_id)

    # --- create, parts, abort --------------------------------------------------------------

    def create(self, bucket: str, key: bytes, *, metadata: Mapping[str, str] | None = None,
               headers: Mapping[str, str] | None = None,
               checksum_algorithm: str | None = None,
               checksum_type: str | None = None) -> Upload:
        """CreateMultipartUpload: one write transaction recording the upload's header.
        With a checksum algorithm, every part carries that checksum and the object gets one
        made of them (`checksum_type`: COMPOSITE or FULL_OBJECT, default by algorithm)."""
        metadata = dict(metadata or {})
        _check_metadata(metadata)
        if key.endswith(b"/"):
            raise InvalidArgument("a key ending in '/' is a folder marker: it holds no bytes, "
                                  "so it cannot be uploaded in parts")
        self.objects.check_key(key)
        if checksum_type is not None:
            if checksum_algorithm is None:
                raise InvalidRequest("x-amz-checksum-type needs x-amz-checksum-algorithm")
            if not checksums.type_allowed(checksum_algorithm, checksum_type):
                raise InvalidRequest(f"The {checksum_type} checksum type cannot be used with "
                                     f"the {checksum_algorithm.upper()} checksum algorithm.")
        elif checksum_algorithm is not None:
            checksum_type = checksums.default_type(checksum_algorithm)
        upload = Upload(secrets.token_hex(_ID_LENGTH // 2), bucket, key, time.time_ns(),
                        metadata, _lower(headers or {}), checksum_algorithm, checksum_type)
        with self.env.write() as tx:
            existing = self.objects._lookup(tx, self.objects.bucket_inode(tx, bucket), key)
            if existing is not None:  # refused now, not after the parts filled the pool
                self.objects.check_overwritable(existing, key)
            tx.put(tx.db.uploads, _key(upload.upload_id, 0), _pack_header(upload))
        return upload

    def upload_part(self, bucket: str, key: bytes, upload_id: str, number: int,
                    bodies: Iterable[bytes | bytearray | memoryview], *,
                    content_md5: bytes | None = None,
                    checksum: tuple[str, str] | Callable[[], tuple[str, str]] | None = None
                    ) -> Part:
        """UploadPart: stage the body's chunks (durable before anything refers to them), then
        one write transaction records the part, taking a reference on each chunk and dropping
        those of a part it replaces. A crash before the commit leaves only orphan bodies."""
        if not 1 <= number <= MAX_PART_NUMBER:
            raise InvalidArgument(f"Part number must be an integer between 1 and "
                                  f"{MAX_PART_NUMBER}, inclusive")
        with self.env.read() as tx:  # fail fast, before reading a body
            upload = self._upload(tx, bucket, key, upload_id)
        with self.store.segments.held_until_committed():
            staged, size, md5 = self.objects._stage(bodies)
            if content_md5 is not None and content_md5 != md5:
                raise BadDigest("The Content-MD5 you specified did not match what was "
                                "received.")
            if callable(checksum):  # a trailing checksum, known once the body is consumed
                checksum = checksum()
            expected = upload.checksum_algorithm
            if expected is not None and checksum is not None and checksum[0] != expected:
                raise InvalidRequest(f"Checksum Type mismatch occurred, expected checksum "
                                     f"Type: {expected}, actual checksum Type: {checksum[0]}")
            return self._record_part(bucket, key, upload_id, number, staged, size, md5,
                                     checksum)

    def _record_part(self, bucket: str, key: bytes, upload_id: str, number: int,
                     staged: list[StagedChunk | None], size: int, md5: bytes,
                     checksum: tuple[str, str] | None) -> Part:
        part = Part(number, size, time.time_ns(), md5,
                    [c.digest if c is not None else None for c in staged], checksum)
        with self.env.write() as tx:
            self._upload(tx, bucket, key, upload_id)
            old = tx.get(tx.db.uploads, _key(upload_id, number))
            for chunk in staged:
                if chunk is not None:
                    chunks.incref(tx, chunk)
            if old is not None:
                for digest in _part_digests(old):
                    chunks.decref(tx, digest)
            # Staging checked each batch against the pool as it stood; the part as a whole,
            # and parts staged side by side, are judged here, as a PUT's commit is.
            chunks.check_pool(tx)
            tx.put(tx.db.uploads, _key(upload_id, number), _pack_part(part))
        return part

    def upload_part_copy(self, bucket: str, key: bytes, upload_id: str, number: int,
                         src_bucket: str, src_key: bytes, span: tuple[int, int] | None = None,
                         source_conditions: Conditions | None = None) -> Part:
        """UploadPartCopy: a range [start, end) of an existing object becomes a part. The
        bytes are read and staged again (dedup makes that cost no space)."""
        if not 1 <= number <= MAX_PART_NUMBER:
            raise InvalidArgument(f"Part number must be an integer between 1 and "
                                  f"{MAX_PART_NUMBER}, inclusive")
        with self.env.read() as tx:
            self._upload(tx, bucket, key, upload_id)
        for _attempt in range(5):
            info = self.objects.head_object(src_bucket, src_key)
            if source_conditions:
                source_conditions.check(info.etag, info.mtime_ns, reading=False)
            start, end = span if span is not None else (0, info.size)
            if end > info.size or start > end:
                raise InvalidArgument("The x-amz-copy-source-range value must be of the form "
                                      "bytes=first-last where first and last are the zero-based "
                                      "offsets of the first and last bytes to copy")
            with self.store.segments.held_until_committed():
                try:
                    staged, size, md5 = self.objects._stage(
                        self.objects.iter_read(info.ino, info.version, start, end - start))
                except ObjectChanged:
                    continue
                return self._record_part(bucket, key, upload_id, number, staged, size, md5,
                                         None)
        raise ObjectChanged("the source kept changing while it was copied")

    def abort(self, bucket: str, key: bytes, upload_id: str) -> None:
        """AbortMultipartUpload: one write transaction dropping the upload and every reference
        its parts hold (their bodies become garbage for gc)."""
        with self.env.write() as tx:
            self._upload(tx, bucket, key, upload_id)
            _drop(tx, upload_id)

    # --- listing ---------------------------------------------------------------------------

    def list_parts(self, bucket: str, key: bytes, upload_id: str, marker: int = 0,
                   max_parts: int = 1000) -> tuple[Upload, list[Part], bool]:
        """(upload, parts after `marker` in number order, truncated?). One read transaction."""
        with self.env.read() as tx:
            upload = self._upload(tx, bucket, key, upload_id)
            parts: list[Part] = []
            for number, raw in _records(tx, upload_id):
                if number <= marker:
                    continue
                if len(parts) == max_parts:
                    return upload, parts, max_parts > 0  # see listing.list_objects
                parts.append(_unpack_part(number, raw))
        return upload, parts, False

    def list_uploads(self, bucket: str, prefix: bytes = b"", key_marker: bytes = b"",
                     upload_id_marker: str = "", max_uploads: int = 1000,
                     delimiter: bytes = b"") -> tuple[list[Upload | bytes], bool]:
        """Unfinished uploads of `bucket` by (key, initiation time), and with a delimiter the
        common prefixes (bytes) that stand for the uploads below them, in key order, as
        ListObjects has them. One read transaction; scans every upload header (uploads are
        few)."""
        found = []
        with self.env.read() as tx:
            self.objects.bucket_inode(tx, bucket)
            for raw_key, raw in tx.cursor(tx.db.uploads):
                if _U32.unpack(bytes(raw_key[-4:]))[0] != 0:
                    continue
                upload = _unpack_header(bytes(raw_key[:_ID_LENGTH]).decode(), raw)
                if upload.bucket == bucket and upload.key.startswith(prefix):
                    found.append(upload)
        found.sort(key=lambda u: (u.key, u.initiated_ns, u.upload_id))
        if key_marker:
            if upload_id_marker:
                marker = next((u for u in found if u.key == key_marker
                               and u.upload_id == upload_id_marker), None)
                found = [u for u in found if u.key > key_marker or (
                    u.key == key_marker and marker is not None
                    and (u.initiated_ns, u.upload_id) > (marker.initiated_ns, marker.upload_id))]
            else:
                found = [u for u in found if u.key > key_marker]
            if delimiter and key_marker.endswith(delimiter):  # a common prefix: past it
                found = [u for u in found if not u.key.startswith(key_marker)]
        listed: list[Upload | bytes] = []
        for upload in found:
            cut = upload.key.find(delimiter, len(prefix)) if delimiter else -1
            entry: Upload | bytes = upload if cut < 0 else upload.key[:cut + len(delimiter)]
            if isinstance(entry, bytes) and listed and listed[-1] == entry:
                continue
            if len(listed) == max_uploads:
                return listed, max_uploads > 0
            listed.append(entry)
        return listed, False

    # --- complete --------------------------------------------------------------------------

    def complete(self, bucket: str, key: bytes, upload_id: str,
                 wanted: list[tuple[int, str]], *,
                 listed_checksums: Mapping[int, tuple[str, str]] | None = None,
                 checksum: tuple[str, str] | None = None, checksum_type: str | None = None,
                 conditions: Conditions | None = None) -> ObjectInfo:
        """CompleteMultipartUpload. Checks the part list (InvalidPartOrder, InvalidPart,
        EntityTooSmall; `listed_checksums`: part number -> the (algorithm, value) the list
        gives it), the object's checksum made of the parts' (`checksum`, `checksum_type`: what
        the client says it is) and the write conditions (If-Match, If-None-Match), re-chunks
        what follows a part that is not a chunk multiple (staged outside any write
        transaction), then one write transaction makes the object (as a PUT does) and drops
        the upload and the references its parts held. A crash before that commit leaves the
        upload as it was; after it, the object."""
        parts_key = self.objects.check_key(key)
        if not wanted:
            raise InvalidArgument("You must specify at least one part")
        numbers = [n for n, _ in wanted]
        if any(b <= a for a, b in itertools.pairwise(numbers)):
            raise InvalidPartOrder("The list of parts was not in ascending order. The parts "
                                   "list must be specified in order by part number.")
        with self.env.read() as tx:
            try:
                upload = self._upload(tx, bucket, key, upload_id)
            except NoSuchUpload:
                if not self._completed(tx, bucket, key, upload_id):
                    raise
                return self.objects.head_object(bucket, key)
            if conditions and conditions.if_none_match == ("*",) and self.objects._lookup(
                    tx, self.objects.bucket_inode(tx, bucket), key) is not None:
                raise PreconditionFailed("the object exists (If-None-Match: *)")
            raws: dict[int, bytes] = {}
            for number, etag in wanted:
                raw = tx.get(tx.db.uploads, _key(upload_id, number))
                if raw is None or _unpack_part(number, raw).etag != etag.strip('"').lower():
                    raise InvalidPart("One or more of the specified parts could not be found. "
                                      "The part may not have been uploaded, or the specified "
                                      "entity tag may not match the part's entity tag.")
                raws[number] = bytes(raw)
            parts = [_unpack_part(n, raws[n]) for n in numbers]
            locations = {}
            for part in parts:
                for digest in part.digests:
                    if digest is not None and digest not in locations:
                        found = chunks.lookup(tx, digest)
                        if found is None:
                            raise NoSuchUpload("a part's chunk is missing")
                        locations[digest] = found[0]
        for part in parts:
            listed = (listed_checksums or {}).get(part.number)
            if listed is not None and listed != part.checksum:
                raise InvalidPart(f"The checksum of part {part.number} in the list does not "
                                  "match the part's.")
        for part in parts[:-1]:
            if part.size < self.min_part_size:
                raise EntityTooSmall("Your proposed upload is smaller than the minimum allowed "
                                     "object size.")
        object_checksum = _object_checksum(upload, parts, checksum, checksum_type)
        # With an object checksum, every part has one of its algorithm (checked just now).
        part_checksums = ([p.checksum[1] for p in parts if p.checksum is not None]
                          if object_checksum else None)
        staged, size = self._stitch(parts, locations)
        etag = multipart_etag(p.md5 for p in parts)
        fingerprint = staged_fingerprint(staged, size)
        objects = self.objects

        def commit() -> ObjectInfo:
            with self.env.write() as tx:
                current = self._upload(tx, bucket, key, upload_id)
                for number, raw in raws.items():
                    if tx.get(tx.db.uploads, _key(upload_id, number)) != raw:
                        raise ObjectChanged("a part was replaced while the upload was "
                                            "being completed")
                b = objects.bucket_inode(tx, bucket)
                parent, existing = objects._place(tx, b, parts_key)
                objects.check_write_conditions(tx, existing, conditions)
                inode = objects._install(tx, parent, existing, parts_key[-1], key,
                                         current.metadata, current.headers, staged, size,
                                         (fingerprint, etag, object_checksum),
                                         [part.size for part in parts], part_checksums)
                _drop(tx, upload_id)
                tx.put(tx.db.xattrs, namespace.xattr_key(inode.ino, UPLOAD_XATTR),
                       pack_upload(inode.version, upload_id))
                return ObjectInfo(bucket, key, inode.ino, size, inode.mtime_ns,
                                  inode.version, etag, dict(current.metadata),
                                  dict(current.headers), object_checksum)

        return objects.retrying_stale_etags(
            commit, "the object kept changing while the upload was completed")

    def _stitch(self, parts: list[Part], locations: dict[bytes, ChunkLocation]
                ) -> tuple[list[StagedChunk | None], int]:
        """The object's chunk list. Chunks of parts that start on a chunk boundary and are
        whole are reused; from the first unaligned byte on, bodies are read and re-chunked."""
        cs = self.chunk_size
        is_zero = self.store.data.is_zero
        staged: list[StagedChunk | None] = []
        tail = bytearray()  # bytes read back, not yet cut into chunks
        batch: list[bytes] = []
        size = 0
        realigned = False

        def flush() -> None:
            nonzero = [b for b in batch if not is_zero(b)]
            found = iter(chunks.stage(self.env, self.store.segments, nonzero,
                                      self.store.capacity_left()))
            staged.extend(None if is_zero(b) else next(found) for b in batch)
            batch.clear()

        for part in parts:
            for index, digest in enumerate(part.digests):
                length = min(cs, part.size - index * cs)
                if not realigned and length == cs:
                    staged.append(None if digest is None
                                  else StagedChunk(digest, locations[digest]))
                    continue
                realigned = True
                if digest is None:
                    tail += bytes(length)
                else:
                    body = self.store.segments.read(locations[digest])
                    tail += body
                    if len(body) < length:
                        tail += bytes(length - len(body))
                while len(tail) >= cs:
                    batch.append(bytes(tail[:cs]))
                    del tail[:cs]
                if len(batch) * cs >= STAGE_BATCH_BYTES:
                    flush()
            size += part.size
        if tail:
            batch.append(bytes(tail))
        if batch:
            flush()
        return staged, size
