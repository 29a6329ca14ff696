"""Fixed binary layouts of LMDB keys and values.

Integer keys are big-endian so LMDB's byte order is numeric order: a file's chunks, a
directory's entries and the change log are range scans.
"""

from __future__ import annotations

import enum
import stat
import struct
from dataclasses import dataclass, field

ROOT_INO = 1

U64 = struct.Struct(">Q")
INO_INDEX = struct.Struct(">QQ")
# An orphan's versions: before its last name went, and the one that unlink stamped (a reader
# of the older one may go on: only the name changed). Stores before session 10 wrote b"".
ORPHAN = struct.Struct(">QQ")


class InodeFlags(enum.IntFlag):
    NONE = 0
    READONLY = 1  # contents and attributes refuse change (descriptors, snapshots)
    EPHEMERAL = 2  # contents dropped when the last writer closes; never snapshotted (swap)
    FIXED_SIZE = 4  # writes past the end fail with EFBIG; only `vm resize` changes the size
    VM_FILE = 8  # belongs to a VM's layout, managed by `vfsd vm`
    DESCRIPTOR = 16  # a VMDK descriptor: read-only but for QEMU's rewrite of its CID line


# mode, flags, uid, gid, size, nlink, rdev, atime, mtime, ctime, parent, version, generation,
# stored (bytes of chunk bodies the file references: its thin, pre-dedup use, for st_blocks)
_INODE = struct.Struct(">IIIIQIIqqqQQQQ")


@dataclass(slots=True)
class Inode:
    """An inode's attributes. Directories also carry their parent and their own name, so a path
    (and an S3 key) can be rebuilt by walking up without scanning directories."""

    ino: int
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    nlink: int = 1
    rdev: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    parent: int = 0
    version: int = 0
    generation: int = 0
    flags: InodeFlags = InodeFlags.NONE
    name: bytes = field(default=b"")
    stored: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def pack(self) -> bytes:
        return (
            _INODE.pack(
                self.mode,
                int(self.flags),
                self.uid,
                self.gid,
                self.size,
                self.nlink,
                self.rdev,
                self.atime_ns,
                self.mtime_ns,
                self.ctime_ns,
                self.parent,
                self.version,
                self.generation,
                self.stored,
            )
            + self.name
        )

    @classmethod
    def unpack(cls, ino: int, raw: bytes) -> Inode:
        (mode, flags, uid, gid, size, nlink, rdev, at, mt, ct, parent, version, gen, stored) = (
            _INODE.unpack_from(raw)
        )
        return cls(
            ino, mode, uid, gid, size, nlink, rdev, at, mt, ct, parent, version, gen,
            InodeFlags(flags), bytes(raw[_INODE.size:]), stored,
        )


def ino_key(ino: int) -> bytes:
    return U64.pack(ino)


def chunk_key(ino: int, index: int) -> bytes:
    return INO_INDEX.pack(ino, index)


def dirent_key(parent: int, name: bytes) -> bytes:
    return U64.pack(parent) + name


# dirent value: child ino, directory cookie (stable readdir offset), file type bits
DIRENT = struct.Struct(">QQI")


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: bytes
    ino: int
    cookie: int
    mode_type: int  # S_IFMT bits of the child, for d_type


# chunk index value: segment id, body offset, body length, reference count
CHUNK = struct.Struct(">QQII")


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    segment: int
    offset: int
    length: int


# segment value: live bytes (records referenced by the chunk index, headers included), the
# appending process (pid, start time), state, and when it was retired (ms since the epoch)
SEGMENT = struct.Struct(">QIQBQ")
SEGMENT_OPEN, SEGMENT_RETIRED = 0, 1


@dataclass(slots=True)
class SegmentInfo:
    segment: int
    live: int
    owner_pid: int
    owner_start: int
    state: int = SEGMENT_OPEN
    retired_ms: int = 0

    def pack(self) -> bytes:
        return SEGMENT.pack(self.live, self.owner_pid, self.owner_start, self.state,
                            self.retired_ms)

    @classmethod
    def unpack(cls, segment: int, raw: bytes) -> SegmentInfo:
        return cls(segment, *SEGMENT.unpack(raw))


class ChangeOp(enum.IntEnum):
    CREATE = 1
    REMOVE = 2  # a name went away (unlink, rmdir, rename source)
    DATA = 3  # contents changed
    ATTR = 4  # attributes or xattrs changed
    LINK = 5  # a name now points at an existing inode


# change value: op, ino, parent, origin (process token), version (HLC); then the entry name
CHANGE = struct.Struct(">BQQQQ")


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    op: ChangeOp
    ino: int
    parent: int
    origin: int
    version: int
    name: bytes
