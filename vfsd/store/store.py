"""The facade both front ends call: one method per operation, one transaction per method.

Methods are synchronous and may block on disk; async callers run them in a worker thread.
Unless a docstring says otherwise, a method's effects are durable when it returns and absent
if the process dies before that (LMDB commits atomically and syncs).
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Self

from . import changelog, chunks, namespace, vmdk
from .changebell import Bell
from .chunks import chunk_hash
from .config import DEFAULT_CHUNK_SIZE, StoreConfig, create_config, load_config
from .env import U64, Environment, Tx
from .errors import (
    Exists,
    FileTooBig,
    InvalidArgument,
    NameTooLong,
    NoAttribute,
    NotADirectory,
    PermissionDenied,
)
from .files import FileData, check_file_writable
from .leases import Holder, Leases
from .names import NAME_MAX
from .opens import Opens
from .records import (
    ROOT_INO,
    Change,
    ChangeOp,
    ChunkLocation,
    DirEntry,
    Inode,
    InodeFlags,
    SegmentInfo,
    ino_key,
)
from .segments import STAGING_SIZE, LocalSegments

MAX_FILE_SIZE = (1 << 63) - 1  # Linux's MAX_LFS_FILESIZE
CAPABILITY_XATTR = b"security.capability"
NEXT_SEGMENT = b"next_segment"
XATTR_CREATE = 1
XATTR_REPLACE = 2


class Store:
    def __init__(self, config: StoreConfig):
        self.config = config
        self.env = Environment(config.meta_dir)
        self.origin = secrets.randbits(63)  # tags this process's entries in the change log
        with self.env.write() as tx:
            namespace.ensure_root(tx)
        # statvfs'd before every staged write: a str, not a Path joined each time (~2% of a
        # 64 KiB PUT's GIL time in py-spy).
        self._segments_path = str(config.segments_dir)
        self.segments = LocalSegments(config.segments_dir, self._allocate_segment,
                                      disown=self._disown_segment)
        self.env.rescue = self._rescue
        self.leases = Leases(config.path / "run")
        self.opens = Opens(config.path / "run")
        self.bell = Bell(config.path / "run")
        self.env.on_change = self.bell.ring
        self.data = FileData(self.env, self.segments, config.chunk_size, self.origin,
                             self.capacity_left)

    @classmethod
    def init(cls, path: Path | str, chunk_size: int = DEFAULT_CHUNK_SIZE,
             quota: int | None = None) -> Store:
        store = cls(create_config(Path(path), chunk_size))
        if quota is not None:
            store.set_quota(quota)
        return store

    @classmethod
    def open(cls, path: Path | str) -> Store:
        return cls(load_config(Path(path)))

    def close(self) -> None:
        claimed = self.segments.claimed()
        self.segments.close()
        if claimed:
            with self.env.write() as tx:
                for segment in claimed:
                    self._disown(tx, segment)
        self.leases.close()
        self.opens.close()
        self.bell.close()
        self.env.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    def _allocate_segment(self, previous: int | None) -> int:
        """A new segment for this process to append to; its owner keeps gc away from it."""
        owner = Holder.this_process("segment writer")
        with self.env.write() as tx:
            if previous is not None:
                self._disown(tx, previous)
            segment = tx.next_id(NEXT_SEGMENT)
            info = SegmentInfo(segment, 0, owner.pid, owner.start_time)
            tx.put(tx.db.segments, U64.pack(segment), info.pack())
            return segment

    def _disown_segment(self, segment: int) -> None:
        with self.env.write() as tx:
            self._disown(tx, segment)

    def _disown(self, tx: Tx, segment: int) -> None:
        raw = tx.get(tx.db.segments, U64.pack(segment))
        if raw is not None:
            info = SegmentInfo.unpack(segment, raw)
            info.owner_pid = info.owner_start = 0
            tx.put(tx.db.segments, U64.pack(segment), info.pack())

    def _rescue(self, tx: Tx, location: ChunkLocation) -> ChunkLocation:
        """Inside `tx`: copy a body out of a retired segment (still on disk: its grace period)
        into a new segment of its own: a chunk found while staging died and its segment was
        compacted before the commit that references it again. Rare; never touches the shared
        append path, which may itself be waiting for this transaction's lock."""
        body = self.segments.read(location)
        segment = tx.next_id(NEXT_SEGMENT)
        tx.put(tx.db.segments, U64.pack(segment), SegmentInfo(segment, 0, 0, 0).pack())
        return self.segments.write_alone(segment, chunk_hash(body), body)

    # --- the pool ------------------------------------------------------------------------

    def quota(self) -> int | None:
        with self.env.read() as tx:
            return chunks.quota(tx)

    def set_quota(self, quota: int | None) -> None:
        if quota is not None and quota <= 0:
            raise InvalidArgument("the quota must be positive")
        with self.env.write() as tx:
            if quota is None:
                tx.delete(tx.db.meta, chunks.QUOTA)
            else:
                tx.put(tx.db.meta, chunks.QUOTA, U64.pack(quota))

    def physical_bytes(self) -> int:
        with self.env.read() as tx:
            return tx.counter(chunks.PHYSICAL)

    def _pool(self) -> tuple[int | None, int, int]:
        """(quota, physical bytes, inode count), read in one transaction."""
        with self.env.read() as tx:
            return chunks.quota(tx), tx.counter(chunks.PHYSICAL), tx.entries(tx.db.inodes)

    def capacity(self) -> int:
        """The pool's size: the quota, else what is stored plus the backing disk's free space."""
        return self.pool_usage()[0]

    def gc_reserve(self) -> int:
        """Disk space new data may not take: what gc needs to move the live records out of a
        segment (at most one segment) before it can delete it. Overwrites leave dead bodies
        in segments; without this room, a disk filled by them could never be compacted."""
        return self.segments.seal_size + STAGING_SIZE

    def capacity_left(self) -> int | None:
        # Asked before every staged write: no inode count (a stat of that database) here.
        with self.env.read() as tx:
            quota, physical = chunks.quota(tx), tx.counter(chunks.PHYSICAL)
        if quota is not None:
            return max(0, quota - physical)
        st = os.statvfs(self._segments_path)
        return max(0, st.f_bavail * st.f_frsize - self.gc_reserve())

    def pool_usage(self) -> tuple[int, int, int]:
        """(capacity, physical bytes, inode count) for statfs."""
        quota, physical, inodes = self._pool()
        if quota is None:
            st = os.statvfs(self._segments_path)
            quota = physical + max(0, st.f_bavail * st.f_frsize - self.gc_reserve())
        return quota, physical, inodes

    # --- attributes and names ------------------------------------------------------------

    def getattr(self, ino: int) -> Inode:
        with self.env.read() as tx:
            return namespace.get_inode(tx, ino)

    def lookup(self, parent: int, name: bytes) -> Inode:
        """The inode `name` in directory `parent` (NotFound if absent)."""
        with self.env.read() as tx:
            namespace.get_dir(tx, parent)
            entry = namespace.lookup(tx, parent, name)
            if entry is None:
                if len(name) > NAME_MAX:  # stat/open of such a name: ENAMETOOLONG, as Linux
                    raise NameTooLong(f"name is {len(name)} bytes; the limit is {NAME_MAX}")
                raise namespace.NotFound(f"{name.decode(errors='replace')} does not exist")
            return namespace.get_inode(tx, entry.ino)

    def resolve(self, path: str | bytes) -> Inode:
        with self.env.read() as tx:
            return namespace.resolve(tx, os.fsencode(path))

    def readdir(self, ino: int, after_cookie: int = 0, limit: int = 1000) -> list[DirEntry]:
        """Up to `limit` entries after `after_cookie`; pass the last entry's cookie to go on."""
        with self.env.read() as tx:
            namespace.get_dir(tx, ino)
            return namespace.readdir(tx, ino, after_cookie, limit)

    def readdir_attrs(self, ino: int, after_cookie: int = 0, limit: int = 256,
                      before_cookie: int | None = None
                      ) -> tuple[list[tuple[DirEntry, Inode]], int]:
        """readdir with each entry's attributes, in one transaction (FUSE readdirplus), and
        the cookie bound as of that transaction (see namespace.readdir)."""
        with self.env.read() as tx:
            namespace.get_dir(tx, ino)
            entries = [(e, namespace.get_inode(tx, e.ino))
                       for e in namespace.readdir(tx, ino, after_cookie, limit, before_cookie)]
            return entries, namespace.cookie_bound(tx)

    def setattr(self, ino: int, *, mode: int | None = None, uid: int | None = None,
                gid: int | None = None, size: int | None = None, atime_ns: int | None = None,
                mtime_ns: int | None = None) -> Inode:
        if size is not None:
            self.data.truncate(ino, size)
        with self.env.write() as tx:
            inode = namespace.get_inode(tx, ino)
            if inode.flags & InodeFlags.READONLY and (mode, uid, gid, atime_ns, mtime_ns) != (
                    None, None, None, None, None):
                raise namespace.ReadOnly("the file is read-only")
            if mode is not None:
                inode.mode = stat.S_IFMT(inode.mode) | stat.S_IMODE(mode)
            if uid is not None:
                inode.uid = uid
            if gid is not None:
                inode.gid = gid
            if atime_ns is not None:
                inode.atime_ns = atime_ns
            if mtime_ns is not None:
                inode.mtime_ns = mtime_ns
            inode.ctime_ns = time.time_ns()
            namespace.put_inode(tx, inode)
            changelog.record(tx, self.origin, ChangeOp.ATTR, ino)
            return inode

    def create(self, parent: int, name: bytes, mode: int = stat.S_IFREG | 0o644, uid: int = 0,
               gid: int = 0, *, rdev: int = 0, flags: InodeFlags = InodeFlags.NONE,
               hold: bool = False) -> Inode:
        """Create a file, fifo or device node (mode carries the type); Exists if taken. With
        `hold`, the new file comes back held open (`opens`; the caller releases it), held
        from before its commit: a DELETE from another process in the meantime parks it."""
        if stat.S_IFMT(mode) == 0:
            mode |= stat.S_IFREG
        if stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
            raise InvalidArgument("use mkdir or symlink")
        held: int | None = None
        try:
            with self.env.write() as tx:
                inode = namespace.make(tx, self.origin, parent, name, mode, uid, gid,
                                       rdev=rdev, flags=flags)
                if hold and self.opens.try_hold(inode.ino):  # nobody else can know it yet
                    held = inode.ino
        except BaseException:
            if held is not None:
                self.opens.release(held)
            raise
        if hold and held is None:  # fenced by a replacement of a number none can know: wait
            self.opens.hold(inode.ino)
        return inode

    def mkdir(self, parent: int, name: bytes, mode: int = 0o755, uid: int = 0, gid: int = 0,
              *, flags: InodeFlags = InodeFlags.NONE) -> Inode:
        with self.env.write() as tx:
            return namespace.make(tx, self.origin, parent, name,
                                  stat.S_IFDIR | stat.S_IMODE(mode), uid, gid, flags=flags)

    def makedirs(self, path: str | bytes, mode: int = 0o755) -> Inode:
        """mkdir -p from the root; returns the last directory."""
        with self.env.write() as tx:
            inode = namespace.get_inode(tx, ROOT_INO)
            for part in os.fsencode(path).strip(b"/").split(b"/"):
                if not part:
                    continue
                entry = namespace.lookup(tx, inode.ino, part)
                if entry is None:
                    inode = namespace.make(tx, self.origin, inode.ino, part,
                                           stat.S_IFDIR | mode, 0, 0)
                else:
                    inode = namespace.get_inode(tx, entry.ino)
                    if not inode.is_dir:
                        raise NotADirectory(f"{part.decode(errors='replace')} is not a directory")
            return inode

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int = 0,
                gid: int = 0) -> Inode:
        if not target or b"\0" in target or len(target) > 4095:
            raise InvalidArgument("invalid symlink target")
        with self.env.write() as tx:
            return namespace.make(tx, self.origin, parent, name, stat.S_IFLNK | 0o777, uid, gid,
                                  symlink_target=target)

    def readlink(self, ino: int) -> bytes:
        with self.env.read() as tx:
            inode = namespace.get_inode(tx, ino)
            if not inode.is_symlink:
                raise InvalidArgument(f"inode {ino} is not a symlink")
            return tx.get(tx.db.symlinks, ino_key(ino)) or b""

    def link(self, ino: int, parent: int, name: bytes) -> Inode:
        with self.env.write() as tx:
            return namespace.link(tx, self.origin, ino, parent, name)

    def unlink(self, parent: int, name: bytes, *, still_open: bool = False) -> Inode:
        """Remove a name. An inode left with no names is parked as an orphan until
        `release_orphan` if it is open in any process (`opens`) or `still_open`; otherwise its
        chunks are released at once."""
        with self.env.write() as tx:
            entry = namespace.lookup(tx, parent, name)
            return namespace.unlink(tx, self.origin, parent, name,
                                    still_open or self._open_anywhere(tx, entry))

    def rmdir(self, parent: int, name: bytes) -> Inode:
        with self.env.write() as tx:
            return namespace.rmdir(tx, self.origin, parent, name)

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               flags: int = 0, *, target_still_open: bool = False) -> None:
        """rename(2)/renameat2(2): flags are RENAME_NOREPLACE (1) and RENAME_EXCHANGE (2)."""
        with self.env.write() as tx:
            target = namespace.lookup(tx, new_parent, new_name)
            namespace.rename(tx, self.origin, old_parent, old_name, new_parent, new_name, flags,
                             target_still_open or self._open_anywhere(tx, target))

    def _open_anywhere(self, tx: Tx, entry: DirEntry | None) -> bool:
        """Inside the write transaction that may free `entry`'s inode: whether any process
        holds it open. If none does, none can until the transaction has ended
        (`Opens.replacing`): asked before the transaction, an open taken in between (the
        mount's loop runs while its worker unlinks; a GET starting) found the inode, and its
        reads then found it freed."""
        return entry is not None and not self.opens.replacing(tx, entry.ino)

    def set_access_times(self, times: dict[int, tuple[int, int]]) -> None:
        """Access times read through the mount (vfsd/fs/atime.py), in one transaction."""
        if times:
            with self.env.write() as tx:
                namespace.set_access_times(tx, times)

    def release_orphan(self, ino: int) -> bool:
        """Free an inode parked by `unlink(still_open=True)` once its last handle closes (in
        every process that has it open: see `opens`). Called at every last close: most files
        are no orphans, which a read transaction tells without the writer lock. Returns
        whether the inode is gone now."""
        with self.env.read() as tx:
            if tx.get(tx.db.orphans, ino_key(ino)) is None:
                return False
        if self.opens.held(ino):
            return False
        with self.env.write() as tx:
            return self._free_orphan(tx, ino) and tx.get(tx.db.inodes, ino_key(ino)) is None

    def purge_orphans(self) -> int:
        """Free the parked orphans no live holder has open, in this process or another (those
        of a process that died): called by a mount at start and by gc passes. Returns how
        many went."""
        with self.env.read() as tx:
            inos = [U64.unpack(k)[0] for k in tx.cursor(tx.db.orphans).iternext(values=False)]
        dead = [ino for ino in inos if not self.opens.held(ino)]
        if not dead:
            return 0
        with self.env.write() as tx:
            return sum(self._free_orphan(tx, ino) for ino in dead)

    def _free_orphan(self, tx: Tx, ino: int) -> bool:
        """Inside a write transaction: free the parked inode `ino` (or only unpark it, if it
        has a name again), unless it was released meanwhile or is held. Whether it is held
        is asked here, not only before the transaction: an open may have taken a hold since
        (the mount opens an inode again while the kernel still names it; a CI run read
        ENOENT there), and none can take one after this until the transaction ends."""
        if tx.get(tx.db.orphans, ino_key(ino)) is None or not self.opens.replacing(tx, ino):
            return False
        inode = namespace.get_inode(tx, ino)
        if inode.nlink == 0:
            namespace.free_inode(tx, inode)
        else:
            tx.delete(tx.db.orphans, ino_key(ino))
        return True

    # --- xattrs --------------------------------------------------------------------------

    def drop_privileges(self, ino: int) -> bool:
        """What Linux does to a file on write, truncate and chown: clear its setuid bit, its
        setgid bit if group-executable (else the bit means mandatory locking), and its file
        capabilities (security.capability). Returns whether anything was there to drop.
        Only writes and truncates of regular files come here, but chown also comes for
        fifos and device nodes, which Linux treats the same; a directory keeps its bits."""
        key = namespace.xattr_key(ino, CAPABILITY_XATTR)
        with self.env.read() as tx:
            inode = namespace.get_inode(tx, ino)
            if (inode.is_dir or inode.flags & InodeFlags.READONLY
                    or not (_privileged_mode(inode.mode) or tx.get(tx.db.xattrs, key) is not None)):
                # The common case: no write transaction. A read-only file (a snapshot's) keeps
                # its bits: the change that asked for this will be refused.
                return False
        with self.env.write() as tx:
            inode = namespace.get_inode(tx, ino)
            tx.delete(tx.db.xattrs, key)
            inode.mode &= ~_privileged_mode(inode.mode)
            inode.ctime_ns = time.time_ns()
            namespace.put_inode(tx, inode)
            changelog.record(tx, self.origin, ChangeOp.ATTR, ino)
        return True

    def get_xattr(self, ino: int, name: bytes) -> bytes:
        with self.env.read() as tx:
            namespace.get_inode(tx, ino)
            value = tx.get(tx.db.xattrs, namespace.xattr_key(ino, name))
        if value is None:
            raise NoAttribute(f"no attribute {name!r}")
        return value

    def list_xattrs(self, ino: int) -> list[bytes]:
        with self.env.read() as tx:
            namespace.get_inode(tx, ino)
            return namespace.list_xattrs(tx, ino)

    def set_xattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        if not name or len(name) > 255 or len(value) > 65536:
            raise InvalidArgument("xattr name or value out of range")
        with self.env.write() as tx:
            inode = namespace.get_inode(tx, ino)
            if inode.flags & InodeFlags.READONLY:
                raise namespace.ReadOnly("the file is read-only")
            key = namespace.xattr_key(ino, name)
            exists = tx.get(tx.db.xattrs, key) is not None
            if flags & XATTR_CREATE and exists:
                raise Exists(f"attribute {name!r} exists")
            if flags & XATTR_REPLACE and not exists:
                raise NoAttribute(f"no attribute {name!r}")
            tx.put(tx.db.xattrs, key, value)
            inode.ctime_ns = time.time_ns()
            namespace.put_inode(tx, inode)
            changelog.record(tx, self.origin, ChangeOp.ATTR, ino)

    def remove_xattr(self, ino: int, name: bytes) -> None:
        with self.env.write() as tx:
            inode = namespace.get_inode(tx, ino)
            if inode.flags & InodeFlags.READONLY:
                raise namespace.ReadOnly("the file is read-only")
            if not tx.delete(tx.db.xattrs, namespace.xattr_key(ino, name)):
                raise NoAttribute(f"no attribute {name!r}")
            inode.ctime_ns = time.time_ns()
            namespace.put_inode(tx, inode)
            changelog.record(tx, self.origin, ChangeOp.ATTR, ino)

    # --- contents ------------------------------------------------------------------------

    def read(self, ino: int, offset: int, size: int) -> bytes | bytearray | memoryview:
        if offset < 0 or size < 0:
            raise InvalidArgument("negative offset or size")
        if offset >= MAX_FILE_SIZE:
            return b""
        return self.data.read(ino, offset, min(size, MAX_FILE_SIZE - offset))

    def read_located(self, ino: int, offset: int, size: int
                     ) -> tuple[bytes | bytearray | memoryview, int, dict[int, ChunkLocation]]:
        """`read`, with the file's size and where the chunks read lie (holes left out)."""
        return self.data.read_located(ino, offset, size)

    def read_chunk(self, ino: int, index: int) -> bytes:
        return self.data.read_chunk(ino, index)

    def read_chunks(self, ino: int, indices: Iterable[int]) -> dict[int, bytearray]:
        return self.data.read_chunks(ino, indices)

    def write(self, ino: int, offset: int, data: bytes | bytearray | memoryview) -> int:
        """pwrite(2), durable on return (segment fdatasync, then LMDB commit)."""
        if offset < 0:
            raise InvalidArgument("negative offset")
        if offset + len(data) > MAX_FILE_SIZE:
            raise FileTooBig("a file can hold at most 2**63 - 1 bytes")
        return self.data.write(ino, offset, data)

    def write_descriptor(self, ino: int, offset: int, data: bytes | bytearray | memoryview) -> int:
        """A write to a VMDK descriptor: accepted only if the result differs from the current
        text in the CID value alone (QEMU's vmdk driver rewrites it), else ReadOnly."""
        inode = self.getattr(ino)
        if not inode.flags & InodeFlags.DESCRIPTOR:
            raise namespace.ReadOnly("the file is read-only")
        old = bytes(self.read(ino, 0, inode.size))
        end = offset + len(data)
        new = bytearray(old) + bytes(max(0, end - len(old)))
        new[offset:end] = data
        if not vmdk.same_apart_from_cid(old, bytes(new)):
            raise namespace.ReadOnly("a VMDK descriptor is read-only (only its CID may change)")
        self.data.rewrite(ino, bytes(new))
        return len(data)

    def write_chunks(self, ino: int, contents: Mapping[int, bytes | bytearray | memoryview], *,
                     size: int | None, grow_to: int = 0, mtime_ns: int | None = None,
                     ctime_ns: int | None = None, replacing: bool = False,
                     within_pool: bool = True) -> Inode:
        return self.data.write_chunks(ino, contents, size=size, grow_to=grow_to,
                                      mtime_ns=mtime_ns, ctime_ns=ctime_ns,
                                      replacing=replacing, within_pool=within_pool)

    def truncate(self, ino: int, size: int) -> Inode:
        if size < 0:
            raise InvalidArgument("negative size")
        if size > MAX_FILE_SIZE:
            raise FileTooBig("a file can hold at most 2**63 - 1 bytes")
        return self.data.truncate(ino, size)

    def punch_hole(self, ino: int, offset: int, length: int) -> Inode:
        if offset < 0 or length <= 0 or offset >= MAX_FILE_SIZE:
            raise InvalidArgument("invalid range")
        return self.data.punch_hole(ino, offset, min(length, MAX_FILE_SIZE - offset))

    def seek(self, ino: int, offset: int, data: bool) -> int | None:
        """SEEK_DATA / SEEK_HOLE: the offset, or None when there is none (ENXIO)."""
        if offset < 0 or offset >= MAX_FILE_SIZE:
            return None
        return self.data.seek(ino, offset, data)

    def copy_range(self, src: int, src_offset: int, dst: int, dst_offset: int,
                   length: int, replacing: bool = False) -> int:
        if min(src_offset, dst_offset, length) < 0:
            raise InvalidArgument("negative offset or length")
        if max(src_offset, dst_offset) >= MAX_FILE_SIZE:
            raise FileTooBig("offset past the largest file size")
        length = min(length, MAX_FILE_SIZE - dst_offset)
        if src == dst and src_offset < dst_offset + length and dst_offset < src_offset + length:
            raise InvalidArgument("overlapping copy within one file")
        return self.data.copy_range(src, src_offset, dst, dst_offset, length, replacing)

    def replace(self, parent: int, name: bytes, bodies: Iterable[bytes | memoryview],
                **kwargs: object) -> Inode:
        return self.data.replace(parent, name, bodies, **kwargs)  # type: ignore[arg-type]

    def write_file(self, path: str | bytes, data: bytes, mode: int = 0o644) -> Inode:
        """Create or replace a whole file at a path, making parent directories (CLI, tests)."""
        path = os.fsencode(path).strip(b"/")
        parent_path, _, name = path.rpartition(b"/")
        parent = self.makedirs(parent_path) if parent_path else self.getattr(ROOT_INO)
        cs = self.chunk_size
        bodies = (memoryview(data)[i:i + cs] for i in range(0, len(data), cs))
        return self.data.replace(parent.ino, name, bodies, mode=stat.S_IFREG | mode)

    def read_file(self, path: str | bytes) -> bytes:
        inode = self.resolve(path)
        check_is_readable_file(inode)
        return bytes(self.read(inode.ino, 0, inode.size))

    # --- change log ----------------------------------------------------------------------

    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        with self.env.read() as tx:
            return list(changelog.since(tx, seq, limit))

    def last_change(self) -> int:
        with self.env.read() as tx:
            return changelog.last_seq(tx)

    def inode_numbers(self) -> list[int]:
        """Every inode in the store (for a reader that lost track of what changed)."""
        with self.env.read() as tx:
            return [U64.unpack(key)[0] for key in tx.cursor(tx.db.inodes).iternext(values=False)]


def check_is_readable_file(inode: Inode) -> None:
    if inode.is_dir:
        raise namespace.IsADirectory(f"inode {inode.ino} is a directory")
    if not inode.is_file:
        raise PermissionDenied(f"inode {inode.ino} is not a regular file")


def _privileged_mode(mode: int) -> int:
    """The bits of `mode` a write drops: setuid, and setgid when group-executable."""
    bits = mode & stat.S_ISUID
    if mode & stat.S_ISGID and mode & stat.S_IXGRP:
        bits |= stat.S_ISGID
    return bits


__all__ = ["Store", "check_file_writable"]
