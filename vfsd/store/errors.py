"""The core's exceptions: one class per way a request can fail.

The front ends translate these in one table each (errno for the mount, S3 codes for the gateway),
so every class here names a condition, not a transport. Anything else escaping the core is a bug.
"""


class StoreError(Exception):
    """Base of every expected failure of a core call."""


class NotAStore(StoreError):
    """The path is not a vfsd store, or its store.toml is missing or unreadable."""


class FormatMismatch(StoreError):
    """The store was written by an incompatible format version."""


class NotFound(StoreError):
    """No such file, directory, VM, volume, user or chunk."""


class Exists(StoreError):
    """The name is already taken."""


class NotEmpty(StoreError):
    """A directory that must be empty is not."""


class IsADirectory(StoreError):
    """A file operation was asked of a directory."""


class NotADirectory(StoreError):
    """A directory operation was asked of something else."""


class InvalidName(StoreError):
    """A name with '/', NUL, '.' or '..', or empty."""


class NameTooLong(StoreError):
    """A name over 255 bytes."""


class ReadOnly(StoreError):
    """The file or directory may not be changed (VMDK descriptors, snapshots)."""


class FileTooBig(StoreError):
    """A write or resize beyond a fixed-size file's end."""


class NoSpace(StoreError):
    """The storage pool (quota, or the backing file system) is full."""


class InvalidArgument(StoreError):
    """An argument out of range: a bad size, a rename into its own subtree, a bad flag."""


class PermissionDenied(StoreError):
    """The operation is never allowed on this object (shrinking a disk, unlinking '.')."""


class Busy(StoreError):
    """The object is in use: a leased disk, an attached volume."""


class Corrupt(StoreError):
    """Stored bytes failed their checksum or an index entry is dangling."""


class DiskError(StoreError):
    """The disk under the store failed a segment write or sync; nothing was committed."""


class NoAttribute(StoreError):
    """No such extended attribute (ENODATA)."""


# --- S3 object semantics (vfsd/store/objects.py) -------------------------------------------

class NoSuchBucket(NotFound):
    """No bucket by that name: no top-level directory with a valid bucket name."""

    def __init__(self, message: str, bucket: str | None = None):
        super().__init__(message)
        self.bucket = bucket  # which one (CopyObject names two)


class NoSuchKey(NotFound):
    """No object at that key: no regular file at that path inside the bucket."""

    def __init__(self, message: str, key: bytes | None = None):
        super().__init__(message)
        self.key = key  # which one (CopyObject names two)


class InvalidBucketName(InvalidName):
    """A bucket name that breaks S3's naming rules."""


class BucketExists(Exists):
    """CreateBucket of a name that is already taken at the top level."""


class KeyConflict(Exists):
    """A key that would need a file and a directory at one path (`a/b` while `a/b/` holds
    objects, or `a/b/c` while `a/b` is an object)."""


class KeyTooLong(NameTooLong):
    """An object key longer than the store can index (1024 bytes, or LMDB's key limit)."""


class PreconditionFailed(StoreError):
    """A conditional request's condition (If-Match, If-None-Match, …) does not hold."""


class NotModified(StoreError):
    """A conditional read whose object has not changed (If-None-Match, If-Modified-Since)."""


class BadDigest(StoreError):
    """The body does not match the digest the client sent with it (Content-MD5)."""


class MetadataTooLarge(InvalidArgument):
    """User metadata over S3's 2 KiB limit."""


class ObjectChanged(StoreError):
    """The object was replaced or changed while it was being read; the read must start over."""


class NoSuchUpload(NotFound):
    """A multipart upload id that does not exist (never did, completed, or aborted)."""


class InvalidPart(StoreError):
    """CompleteMultipartUpload names a part that was not uploaded, or with another ETag."""


class InvalidPartOrder(StoreError):
    """CompleteMultipartUpload's part list is not in ascending part-number order."""


class EntityTooSmall(StoreError):
    """A multipart part other than the last is smaller than the minimum part size."""


class InvalidRequest(StoreError):
    """A request that cannot go with the state it meets (a multipart upload's checksum mode)."""
