"""ETag records: an object's ETag (MD5 hex, or a multipart ETag) and the client's checksum,
kept in the internal xattr `vfsd.s3.etag` with the inode version they belong to and a
fingerprint of the chunk map, so a file changed through the mount is recognised (new version)
and revalidated by fingerprint (a metadata-only change) or recomputed."""

from __future__ import annotations

import struct

import blake3

from .chunks import StagedChunk, chunk_map
from .env import U64, Tx

ETAG_XATTR = b"vfsd.s3.etag"
_RECORD = struct.Struct(">Q32s")  # inode version, chunk-map fingerprint; then etag [" " checksum]
# A multipart object's part sizes, for GET/HEAD ?partNumber=N: the chunk-map fingerprint they
# were stitched into, then one u64 per part. They hold while the ETag record has the same
# fingerprint (a file rewritten through the mount gets a plain MD5 ETag and loses its parts).
PARTS_XATTR = b"vfsd.s3.parts"
_FINGERPRINT = struct.Struct(">32s")
# The parts' checksums of a multipart object made with one (its algorithm's), for GET/HEAD
# ?partNumber=N with checksum mode: the fingerprint they were stitched into, then the
# base64 values, space-separated. They hold as the part sizes do.
PART_CHECKSUMS_XATTR = b"vfsd.s3.part-checksums"
# The multipart upload that made the object, and the inode version it made: a retried
# CompleteMultipartUpload (its first answer lost) finds the object it made and answers as
# the first time, as S3 does, while the object is unchanged since.
UPLOAD_XATTR = b"vfsd.s3.upload"


class NeedEtag(Exception):
    """Inside a transaction: an ETag is stale; compute it outside and start over."""

    def __init__(self, ino: int):
        self.ino = ino


def pack_record(version: int, fingerprint: bytes, etag: str,
                 checksum: tuple[str, str] | None) -> bytes:
    tail = etag if checksum is None else f"{etag} {checksum[0]}:{checksum[1]}"
    return _RECORD.pack(version, fingerprint) + tail.encode()


def unpack_record(raw: bytes | memoryview) -> tuple[int, bytes, str, tuple[str, str] | None]:
    version, fingerprint = _RECORD.unpack_from(raw)
    tail = bytes(raw[_RECORD.size:]).decode()
    etag, _, checksum = tail.partition(" ")
    algorithm, _, value = checksum.partition(":")
    return version, fingerprint, etag, (algorithm, value) if checksum else None


def pack_parts(fingerprint: bytes, sizes: list[int]) -> bytes:
    return _FINGERPRINT.pack(fingerprint) + struct.pack(f">{len(sizes)}Q", *sizes)


def stitched_into(raw: bytes | memoryview) -> bytes:
    """The chunk-map fingerprint a part-sizes or part-checksums record holds for."""
    return bytes(_FINGERPRINT.unpack_from(raw)[0])


def pack_part_checksums(fingerprint: bytes, values: list[str]) -> bytes:
    return _FINGERPRINT.pack(fingerprint) + " ".join(values).encode()


def unpack_part_checksums(raw: bytes | memoryview) -> tuple[bytes, tuple[str, ...]]:
    return stitched_into(raw), tuple(bytes(raw[_FINGERPRINT.size:]).decode().split(" "))


def pack_upload(version: int, upload_id: str) -> bytes:
    return U64.pack(version) + upload_id.encode()


def unpack_upload(raw: bytes | memoryview) -> tuple[int, str]:
    return U64.unpack_from(raw)[0], bytes(raw[U64.size:]).decode()


def unpack_parts(raw: bytes | memoryview) -> tuple[bytes, tuple[int, ...]]:
    count = (len(raw) - _FINGERPRINT.size) // 8
    return stitched_into(raw), struct.unpack_from(f">{count}Q", raw, _FINGERPRINT.size)


def fingerprint(tx: Tx, ino: int, size: int) -> bytes:
    """BLAKE3 over the size and the chunk map: equal exactly when the contents are equal."""
    h = blake3.blake3(U64.pack(size))
    for index, digest in chunk_map(tx, ino):
        h.update(index)
        h.update(digest)
    return h.digest()


def staged_fingerprint(staged: list[StagedChunk | None], size: int) -> bytes:
    h = blake3.blake3(U64.pack(size))
    for index, chunk in enumerate(staged):
        if chunk is not None:
            h.update(U64.pack(index))
            h.update(chunk.digest)
    return h.digest()
