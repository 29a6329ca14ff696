"""The pyfuse3 handlers: kernel requests in, core calls (in worker threads) out.

Handlers raise only FUSEError: `handler` maps core errors through the errno table and turns
anything unexpected into a logged EIO, so no request can kill the mount.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pyfuse3
import trio

from vfsd.store import Inode, InodeFlags, Store
from vfsd.store.errors import Exists, NotFound, StoreError
from vfsd.store.files import check_file_writable
from vfsd.store.leases import Holder
from vfsd.store.store import CAPABILITY_XATTR, MAX_FILE_SIZE

from . import atime
from .atime import AccessTimes
from .errno_map import errno_for
from .invalidate import OwnChanges
from .metrics import MountMetrics
from .readmap import ReadMap
from .workers import WorkerPool
from .writeback import WriteBack

log = logging.getLogger("vfsd.fs")
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
INTERNAL_XATTR = b"vfsd."
# POSIX ACLs: without FUSE_POSIX_ACL the kernel hands them to us as plain xattrs and leaves
# the mode and the checks to us. We do neither, so we refuse them as a file system without
# ACLs does: cp -a and rsync -A then set the mode with chmod instead.
ACL_XATTRS = (b"system.posix_acl_access", b"system.posix_acl_default")
REMOVED_DIRS_KEPT = 64
ATTR_TIMEOUT = 1.0  # the change-log tail invalidates sooner when another process changes things
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10


def handler(fn: F) -> F:
    operation = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any) -> Any:
        started = time.perf_counter()
        result = 0
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError as e:
            result = e.errno
            raise
        except StoreError as e:
            result = errno_for(e)
            raise pyfuse3.FUSEError(result) from None
        except trio.Cancelled:
            result = errno.EINTR
            raise
        except Exception:
            log.exception("event=handler-crash op=%s args=%r", operation, args[:3])
            self.metrics.crashes += 1
            result = errno.EIO
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            self.metrics.observe(operation, result, time.perf_counter() - started)
    return wrapper  # type: ignore[return-value]


@dataclass
class DirHandle:
    ino: int
    bound: int | None = None  # cookies from here on were given after the listing began


@dataclass
class Handle:
    ino: int
    writable: bool
    ephemeral: bool
    wrote: bool = False
    descriptor: bool = False  # writes go through the core's CID-only check, uncached


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    # We drop setuid/setgid and file capabilities on write, truncate and chown ourselves
    # (`_drop_privileges`), so the kernel stops asking getxattr(security.capability) before
    # every write (patches/libfuse-3.14.0-handle-killpriv-v2.patch). The kernel would keep
    # the bits for writers with CAP_FSETID; we cannot see that in a write, so they go for
    # every writer, as POSIX allows.
    handle_killpriv_v2 = True

    def __init__(self, store: Store, cache_size: int, commit_interval: float,
                 threads: int = 4):
        super().__init__()
        self.store = store
        self.workers = WorkerPool(threads)
        self.cache = WriteBack(store, self.run, cache_size, commit_interval)
        self.readmap = self.cache.readmap = ReadMap(store)
        store.env.on_commit = self.readmap.forget_committed
        self.handles: dict[int, Handle] = {}
        self.dir_handles: dict[int, DirHandle] = {}
        self.open_count: Counter[int] = Counter()
        self.writers: Counter[int] = Counter()
        self.next_fh = 1
        self.holder = Holder.this_process("the mount")
        self.own_changes = OwnChanges()
        self.capabilities: dict[int, bytes | None] = {}  # security.capability, see getxattr
        # Directories removed here, for a process whose cwd one was (fstat, `ls .`): the
        # store forgets a directory at rmdir, the kernel only at FORGET. The last few.
        self.removed_dirs: dict[int, Inode] = {}
        self.atimes = AccessTimes()
        # Inodes whose next write must drop setuid/setgid/capabilities, as far as we know:
        # opened for writing with them (or with capabilities unknown), given them since.
        self.privileged: set[int] = set()
        self.capability_requests = 0  # getxattr(security.capability), logged at unmount
        self.initialized = trio.Event()
        self.metrics = MountMetrics()
        self.metrics.gauges = self.gauges

    def gauges(self) -> dict[str, tuple[str, float]]:
        """What /metrics shows besides the request counts (vfsd/fs/metrics.py)."""
        return {
            "vfsd_mount_dirty_bytes": (
                ("Written data not yet committed to the store (whole chunks, and the bytes "
                 "written into chunks written in part)."),
                self.cache.budget.held),
            "vfsd_mount_dirty_limit_bytes": (
                "Dirty data at which writers wait for a flush (--cache-size).",
                self.cache.budget.limit),
            "vfsd_mount_dirty_files": (
                "Files with data not yet committed.",
                sum(1 for f in self.cache.files.values() if f.dirty)),
            "vfsd_mount_open_handles": ("File handles the kernel holds open.", len(self.handles)),
            "vfsd_mount_mapped_reads_total": (
                "Reads answered on the event loop from mapped segment pages.",
                self.readmap.hits),
            "vfsd_mount_journal_slow_writes_total": (
                ("fsync journal writes made on the event loop that took over 2 ms (a busy "
                 "device); each sends the next ones to the worker threads for a while."),
                self.cache.inline.slow_calls),
            "vfsd_mount_journal_writes_on_workers": (
                "1 while fsync journal writes go to the worker threads after a slow one.",
                float(self.cache.inline.backing_off)),
        }

    def init(self) -> None:
        """The kernel's INIT request arrived (pyfuse3 replies once this returns)."""
        self.initialized.set()

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        return await self.workers.run(fn, *args)

    async def foreign_change(self, change: Any) -> None:
        """Another process changed the store: forget what we cache about that inode."""
        self.capabilities.pop(change.ino, None)
        if self.writers.get(change.ino):
            self.privileged.add(change.ino)  # its mode may have changed: check at next write
        self.cache.changed_elsewhere(change.ino)
        self.readmap.forget(change.ino)

    async def changes_lost(self) -> None:
        """Change-log entries went unread (trimmed while the mount was stopped): anything may
        have changed, so forget what we cache about every inode."""
        self.capabilities.clear()
        self.privileged.update(ino for ino, count in self.writers.items() if count)
        for ino in list(self.cache.files):
            self.cache.changed_elsewhere(ino)
        self.readmap.forget_all()

    # --- attributes ----------------------------------------------------------------------

    def attributes(self, inode: Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        cached = self.cache.cached(inode.ino)
        a.st_ino = inode.ino
        a.generation = 0
        a.entry_timeout = a.attr_timeout = ATTR_TIMEOUT
        a.st_mode = inode.mode
        a.st_nlink = inode.nlink
        a.st_uid, a.st_gid, a.st_rdev = inode.uid, inode.gid, inode.rdev
        a.st_blksize = self.store.chunk_size
        # Dirty chunks count whole until flushed; no file uses more than its size.
        held = cached.held * self.store.chunk_size if cached else 0
        if cached and cached.replacing:  # an O_TRUNC not committed yet: the store's is old
            a.st_size, stored = cached.size, 0
        else:
            a.st_size = max(inode.size, cached.size) if cached else inode.size
            stored = inode.stored
        a.st_blocks = (min(stored + held, a.st_size) + 511) // 512
        a.st_atime_ns = self.atimes.of(inode.ino, inode.atime_ns)
        a.st_mtime_ns = cached.mtime_ns if cached and cached.mtime_ns else inode.mtime_ns
        a.st_ctime_ns = max(inode.ctime_ns, cached.ctime_ns) if cached else inode.ctime_ns
        return a

    async def _attrs(self, ino: int) -> pyfuse3.EntryAttributes:
        return self.attributes(await self.run(self.store.getattr, ino))

    @handler
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        if name == b".":
            return await self._attrs(parent_inode)
        if name == b"..":
            parent = await self.run(self.store.getattr, parent_inode)
            return await self._attrs(parent.parent or parent_inode)
        return self.attributes(await self.run(self.store.lookup, parent_inode, name))

    @handler
    async def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        try:
            return self.attributes(await self._stat(inode))
        except pyfuse3.FUSEError:
            if inode not in self.removed_dirs:
                raise
            return self.attributes(self.removed_dirs[inode])

    async def _stat(self, inode: int) -> Inode:
        """The inode the kernel names. One that is gone (freed since the kernel looked its
        name up: a PUT replaced the file, the change log has not told the kernel yet) is
        ESTALE, not ENOENT: the kernel then looks the name up again and retries (open(2),
        stat(2)), so a name that was only ever replaced never fails to resolve."""
        try:
            return await self.run(self.store.getattr, inode)
        except NotFound:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    @handler
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: Any) -> pyfuse3.EntryAttributes:
        if fields.update_uid or fields.update_gid or fields.update_size:
            # Always asked of the store (a read when there is nothing to drop): what we know
            # of this inode's mode may be gone with its last handle.
            await self._drop_privileges(inode)  # before an explicit mode, which then wins
        if fields.update_size:
            # Dirty data must reach the store first, or the flush would undo the truncate.
            await self.cache.flush(inode)
            await self.run(self.store.truncate, inode, attr.st_size)
            await self.cache.truncated(inode, attr.st_size)
        changes: dict[str, int] = {}
        if fields.update_mode:
            changes["mode"] = attr.st_mode
            if attr.st_mode & (stat.S_ISUID | stat.S_ISGID):
                self.privileged.add(inode)
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime:
            changes["atime_ns"] = attr.st_atime_ns
            self.atimes.drop(inode)
        if fields.update_mtime:
            changes["mtime_ns"] = attr.st_mtime_ns
            cached = self.cache.cached(inode)
            if cached and cached.mtime_ns:
                # Writes not yet committed: their flush must keep this time, not theirs. A
                # clean entry keeps none (0), or it would hide later changes' times.
                cached.mtime_ns = attr.st_mtime_ns
        if changes or not fields.update_size:
            return self.attributes(await self.run(self.store.setattr, inode, **changes))
        return await self._attrs(inode)

    @handler
    async def forget(self, inode_list: Any) -> None:
        return None

    # --- names ---------------------------------------------------------------------------

    @handler
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: Any) -> pyfuse3.EntryAttributes:
        inode = await self.run(self.store.create, parent_inode, name, mode, ctx.uid, ctx.gid,
                               rdev=rdev)
        return self.attributes(inode)

    @handler
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: Any) -> pyfuse3.EntryAttributes:
        inode = await self.run(self.store.mkdir, parent_inode, name, mode & ~ctx.umask,
                               ctx.uid, ctx.gid)
        return self.attributes(inode)

    @handler
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: Any) -> pyfuse3.EntryAttributes:
        return self.attributes(
            await self.run(self.store.symlink, parent_inode, name, target, ctx.uid, ctx.gid))

    @handler
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return await self.run(self.store.readlink, inode)

    @handler
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: Any) -> pyfuse3.EntryAttributes:
        return self.attributes(await self.run(self.store.link, inode, new_parent_inode, new_name))

    @handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        # A file open anywhere (our handles, a GET the gateway is streaming) is parked, not
        # freed: the store asks inside its transaction, which no new open can pass.
        inode = await self.run(self.store.unlink, parent_inode, name)
        # The inode as the unlink left it: at nlink 0 it is gone (or parked until the open
        # handles close). With a name left, the file lives on and so do its dirty data and
        # journal sets.
        if inode.nlink == 0 and self.open_count[inode.ino] <= 0:
            await self.cache.discard(inode.ino)

    @handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        gone = await self.run(self.store.lookup, parent_inode, name)
        await self.run(self.store.rmdir, parent_inode, name)
        gone.nlink = 0
        self.removed_dirs[gone.ino] = gone
        while len(self.removed_dirs) > REMOVED_DIRS_KEPT:
            del self.removed_dirs[next(iter(self.removed_dirs))]

    @handler
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        # A replaced target open anywhere is parked, as in `unlink`.
        await self.run(self.store.rename, parent_inode_old, name_old, parent_inode_new,
                       name_new, flags)

    # --- files ---------------------------------------------------------------------------

    async def _new_handle(self, inode: Inode, flags: int) -> pyfuse3.FileInfo:
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        descriptor = bool(inode.flags & InodeFlags.DESCRIPTOR)
        if inode.flags & InodeFlags.READONLY and (
                flags & os.O_TRUNC or writable and not descriptor):
            raise pyfuse3.FUSEError(errno.EROFS)
        if writable:
            # A writer leases the file: the gateway will not replace or delete it and `vfsd vm
            # start` will not start a second VM on it while it is open here. Every writable
            # handle takes (and its release gives back) one count of the lease: gating on
            # "the first writer" raced with concurrent opens and leaked leases.
            await self.run(self.store.leases.acquire, inode.ino, self.holder)
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = Handle(inode.ino, writable, bool(inode.flags & InodeFlags.EPHEMERAL),
                                  descriptor=descriptor)
        if atime.due(inode, flags):
            self.atimes.accessed(inode)
        self.open_count[inode.ino] += 1
        if writable:
            self.writers[inode.ino] += 1
            self.cache.writer_opened(inode.ino)
            if self._may_be_privileged(inode):
                self.privileged.add(inode.ino)
        direct = bool(flags & os.O_DIRECT)
        return pyfuse3.FileInfo(fh=fh, direct_io=direct, keep_cache=not direct)

    @handler
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        return await self._open_held(inode, flags)

    async def _open_held(self, ino: int, flags: int) -> pyfuse3.FileInfo:
        # Held per handle (counted; a lock, no hop), so that another process deleting the
        # file parks it for us instead of freeing it under our reads (vfsd/store/opens.py).
        # Looked at only once held: before, it may be freed any moment (ESTALE then).
        await self._hold(ino)
        try:
            return await self._open(await self._stat(ino), flags)
        except BaseException:
            self.store.opens.release(ino)
            raise

    async def _open(self, node: Inode, flags: int) -> pyfuse3.FileInfo:
        inode = node.ino
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        info = await self._new_handle(node, flags)
        # Linux truncates on O_TRUNC whatever the access mode, once the caller may write
        # (the kernel has checked that); only a writable handle can defer it to its commit.
        truncating = flags & os.O_TRUNC
        writable = self.handles[info.fh].writable
        try:
            # `privileged` is set by `_new_handle` for a writable handle if need be.
            if truncating and (inode in self.privileged
                               or not writable and self._may_be_privileged(node)):
                await self._drop_privileges(inode)
            if truncating:
                # libfuse negotiates atomic O_TRUNC: the kernel leaves the truncation to us.
                # Even at a stored size of 0: writes may be waiting in the cache (or the
                # journal), and an empty file's times still change. Mostly the cache makes
                # it with the first commit, so the old contents stay whole until then.
                if writable and await self.cache.replace_on_open(node, info.fh):
                    self.handles[info.fh].wrote = True  # its close commits the truncation
                else:
                    await self.cache.drop_contents(
                        inode, functools.partial(self.store.truncate, inode, 0))
        except BaseException:
            # A failed open gets no release from the kernel: give back what the handle took.
            await self._forget_handle(info.fh)
            raise
        return info

    async def _forget_handle(self, fh: int) -> None:
        """Undo `_new_handle` for an open that failed after it (the caller's hold stays
        the caller's to release)."""
        handle = self.handles.pop(fh)
        ino = handle.ino
        self.cache.handle_closed(ino, fh)
        self.open_count[ino] -= 1
        if self.open_count[ino] <= 0:
            del self.open_count[ino]
        if handle.writable:
            self.writers[ino] -= 1
            if self.writers[ino] <= 0:
                del self.writers[ino]
                self.cache.writer_closed(ino)
            await self.run(self.store.leases.release, ino, self.holder)

    @handler
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        try:
            # Held from before its commit: a DELETE through the gateway in the hop back here
            # parks it for this handle instead of freeing it.
            inode = await self.run(self.store.create, parent_inode, name,
                                   stat.S_IFREG | (stat.S_IMODE(mode) & ~ctx.umask), ctx.uid,
                                   ctx.gid, hold=True)
        except Exists:
            if flags & os.O_EXCL:
                raise
            # Made by another process since the kernel's lookup (a PUT through the gateway):
            # without O_EXCL, open(2) opens the file that is there. The kernel checked only
            # the directory, so the file's own permission is checked here.
            existing = await self.run(self.store.lookup, parent_inode, name)
            if not existing.is_file:
                raise
            if not _may_open(existing, flags, ctx):
                raise pyfuse3.FUSEError(errno.EACCES) from None
            # Opened as `open` does: the file found may be replaced (freed) before it is held.
            return await self._open_held(existing.ino, flags), self.attributes(existing)
        self.capabilities[inode.ino] = None  # a new file has none
        try:
            return await self._new_handle(inode, flags), self.attributes(inode)
        except BaseException:
            self.store.opens.release(inode.ino)
            raise

    async def _hold(self, ino: int) -> None:
        """A hold for a new handle: at once, or in a worker if another process is freeing
        the inode this very moment (then the open finds it gone: ESTALE)."""
        if not self.store.opens.try_hold(ino):
            await self.run(self.store.opens.hold, ino)

    @handler
    async def read(self, fh: int, off: int, size: int) -> Any:
        # A list is pieces in order: pyfuse3 gathers them into the reply
        # (patches/pyfuse3-3.5.0-scatter-read-replies.patch).
        return await self.cache.read(self.handles[fh].ino, off, size)

    @handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self.handles[fh]
        if handle.descriptor:
            return await self.run(self.store.write_descriptor, handle.ino, off, buf)
        handle.wrote = True
        if handle.ino in self.privileged:
            await self._drop_privileges(handle.ino)
        return await self.cache.write(handle.ino, off, buf)

    def _may_be_privileged(self, inode: Inode) -> bool:
        """Setuid/setgid bits (the store decides which a write drops) or capabilities we
        have not looked up yet."""
        return (bool(inode.mode & (stat.S_ISUID | stat.S_ISGID))
                or inode.ino not in self.capabilities)

    async def _drop_privileges(self, ino: int) -> None:
        """Clear setuid/setgid and file capabilities, as the kernel would have on a write,
        truncate or chown (see `handle_killpriv_v2`)."""
        self.privileged.discard(ino)
        if await self.run(self.store.drop_privileges, ino):
            self.own_changes.invalidate(ino)  # the kernel still caches the old mode
        self.capabilities[ino] = None

    @handler
    async def flush(self, fh: int) -> None:
        handle = self.handles[fh]
        if handle.wrote and not handle.ephemeral:
            await self.cache.flush(handle.ino, closing=fh)

    @handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self.handles[fh]
        if handle.wrote:
            await self.cache.sync(handle.ino)  # durable; committed at the next flush
        else:
            # An fsync through a handle that wrote nothing asks for the file's data in the
            # store now: `vfsd vm snapshot` flushes a running VM's disks this way.
            await self.cache.flush(handle.ino)

    @handler
    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh)
        ino = handle.ino
        self.open_count[ino] -= 1
        if handle.writable:
            self.writers[ino] -= 1
        try:
            if handle.ephemeral:
                if self.writers[ino] == 0 and handle.writable:
                    # Swap dies with the VM: drop its contents when the last writer closes.
                    await self.cache.drop_contents(
                        ino, functools.partial(self.store.punch_hole, ino, 0, MAX_FILE_SIZE))
                    self.own_changes.invalidate(ino)  # the kernel still caches the old pages
            elif handle.wrote:
                await self.cache.flush(ino, closing=fh, released=True)
        finally:
            try:
                if handle.writable:
                    # After the commit above: while the lease is ours no PUT replaces the
                    # file, so what this release commits cannot land over another's contents.
                    await self.run(self.store.leases.release, ino, self.holder)
            finally:
                await self._released(handle, fh)

    async def _released(self, handle: Handle, fh: int) -> None:
        """What a released handle held, given back (its commit and lease done or failed)."""
        ino = handle.ino
        self.cache.handle_closed(ino, fh)
        if handle.writable and self.writers[ino] == 0:
            self.cache.writer_closed(ino)
        self.store.opens.release(ino)
        if self.open_count[ino] <= 0:
            del self.open_count[ino]
            self.writers.pop(ino, None)
            self.privileged.discard(ino)  # the next writable open looks again
            if await self.run(self.store.release_orphan, ino):
                # Deleted while open, freed now: what the cache still holds of it (its close
                # could not commit it: a full pool) and its journal sets are moot.
                await self.cache.discard(ino)

    # --- holes and copies (handlers added to pyfuse3 by patches/pyfuse3-*.patch) ---------

    @handler
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        ino = self.handles[fh].ino
        punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE
        if mode & ~(FALLOC_FL_KEEP_SIZE | punch) or mode & punch == punch:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)  # collapse/insert range, unshare
        if ino in self.privileged:  # a change to the contents, as a write is
            await self._drop_privileges(ino)
        inode = await self.run(self.store.getattr, ino)
        check_file_writable(inode)  # a punch within one chunk reaches only the cache
        cached = self.cache.cached(ino)
        end = offset + length
        grows = not mode & FALLOC_FL_KEEP_SIZE and end > (
            cached.size if cached is not None else inode.size)
        if grows and inode.flags & InodeFlags.FIXED_SIZE:
            raise pyfuse3.FUSEError(errno.EFBIG)
        if mode & punch:
            # Zeroing a range is punching it: zeros are holes here. Dirty data stays dirty:
            # a guest's TRIM on a full pool must not wait for a commit that cannot fit.
            await self.cache.punch(ino, offset, length, self.store.punch_hole)
            # Its partial edges are zeros written through the cache: this handle's close
            # commits them, while the mount still holds the file's lease (after it, another
            # process may replace the file, and a later commit would land on its contents).
            self.handles[fh].wrote = True
        if grows or not mode & punch:
            # Allocating counts what is stored, and a truncation must find it all there.
            await self.cache.flush(ino)
            inode = await self.run(self.store.getattr, ino)
        if not mode & punch:
            # Thin pool: "allocating" is a promise that the pool has room right now.
            left = await self.run(self.store.capacity_left)
            if left is not None and length - inode.stored > left:
                raise pyfuse3.FUSEError(errno.ENOSPC)
        if grows and end > inode.size:
            await self.run(self.store.truncate, ino, end)
            await self.cache.truncated(ino, end)

    @handler
    async def lseek(self, fh: int, offset: int, whence: int) -> int:
        ino = self.handles[fh].ino
        if whence not in (os.SEEK_DATA, os.SEEK_HOLE):
            raise pyfuse3.FUSEError(errno.EINVAL)
        await self.cache.flush(ino)
        position = await self.run(self.store.seek, ino, offset, whence == os.SEEK_DATA)
        if position is None:
            raise pyfuse3.FUSEError(errno.ENXIO)
        return position

    @handler
    async def copy_file_range(self, fh_in: int, off_in: int, fh_out: int, off_out: int,
                              length: int, flags: int) -> int:
        src, dst = self.handles[fh_in].ino, self.handles[fh_out].ino
        if dst in self.privileged:  # a change to the contents, as a write is
            await self._drop_privileges(dst)
        await self.cache.flush(src)
        # Whole chunks, the last one short only where the source ends: all shared by one
        # transaction, which may then make a truncation of `dst` that waits (asked only then).
        cs, cached = self.store.chunk_size, self.cache.cached(dst)
        whole_chunks = (cached is not None and cached.replacing and src != dst
                        and off_in % cs == off_out % cs == 0
                        and (length % cs == 0
                             or off_in + length >= (await self.run(self.store.getattr, src)).size))
        async with self.cache.copying_into(dst, whole_chunks) as replacing:
            copied = await self.run(self.store.copy_range, src, off_in, dst, off_out, length,
                                    replacing=replacing)
        self.handles[fh_out].wrote = True
        if self.cache.cached(dst):
            self.cache.grown(dst, (await self.run(self.store.getattr, dst)).size)
        return copied

    # --- directories ---------------------------------------------------------------------

    @handler
    async def opendir(self, inode: int, ctx: Any) -> int:
        try:
            node = await self.run(self.store.getattr, inode)
        except NotFound:
            node = None  # removed while a process has it as its cwd: lists as empty
        if node is not None and not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self.next_fh
        self.next_fh += 1
        self.dir_handles[fh] = DirHandle(inode)
        return fh

    @handler
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        handle = self.dir_handles[fh]
        if start_id == 0:
            handle.bound = None  # opendir or rewinddir: the directory as it is now
        try:
            entries, bound = await self.run(self.store.readdir_attrs, handle.ino, start_id, 256,
                                            handle.bound)
        except NotFound:
            return  # removed (rmdir) since it was opened: nothing in it, as Linux lists it
        if handle.bound is None:
            # Entries made after this (a new file, a renamed one: new cookies) are not listed
            # by this stream, as POSIX allows; otherwise a program that renames or creates an
            # entry for each one it reads would never reach the end.
            handle.bound = bound
        for entry, inode in entries:
            if not pyfuse3.readdir_reply(token, entry.name, self.attributes(inode),
                                         entry.cookie):
                break

    @handler
    async def releasedir(self, fh: int) -> None:
        self.dir_handles.pop(fh, None)

    @handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None  # every namespace change is committed durably before its reply

    # --- the pool ------------------------------------------------------------------------

    @handler
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        capacity, used, inodes = await self.run(self.store.pool_usage)
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = 4096
        st.f_blocks = capacity // 4096
        st.f_bfree = st.f_bavail = max(0, capacity - used) // 4096
        st.f_files = 1 << 32
        st.f_ffree = st.f_favail = max(0, (1 << 32) - inodes)
        st.f_namemax = 255
        return st

    # --- xattrs --------------------------------------------------------------------------

    @handler
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if name.startswith(INTERNAL_XATTR):
            raise pyfuse3.FUSEError(errno.ENODATA)
        _refuse_acl(name)
        if name == CAPABILITY_XATTR:
            self.capability_requests += 1
            # The kernel asks before writes to drop file capabilities (before every write
            # unless `handle_killpriv_v2` took effect): answer from memory after the first
            # time instead of a thread hop and an LMDB read each time.
            if inode not in self.capabilities:
                try:
                    value = await self.run(self.store.get_xattr, inode, name)
                except StoreError:
                    value = None
                self.capabilities[inode] = value
            cached = self.capabilities[inode]
            if cached is None:
                raise pyfuse3.FUSEError(errno.ENODATA)
            return cached
        return await self.run(self.store.get_xattr, inode, name)

    @handler
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        if name.startswith(INTERNAL_XATTR):
            raise pyfuse3.FUSEError(errno.EPERM)
        _refuse_acl(name)
        self.capabilities.pop(inode, None)
        if name == CAPABILITY_XATTR:
            self.privileged.add(inode)
        await self.run(self.store.set_xattr, inode, name, value)

    @handler
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        names = await self.run(self.store.list_xattrs, inode)
        # ACLs an earlier version stored as plain xattrs stay hidden, as they are refused.
        return [n for n in names if not n.startswith(INTERNAL_XATTR) and n not in ACL_XATTRS]

    @handler
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        if name.startswith(INTERNAL_XATTR):
            raise pyfuse3.FUSEError(errno.EPERM)
        _refuse_acl(name)
        self.capabilities.pop(inode, None)
        await self.run(self.store.remove_xattr, inode, name)


def _may_open(inode: Inode, flags: int, ctx: Any) -> bool:
    """The mode check default_permissions makes at open (supplementary groups unknown to
    FUSE: a file only they grant is refused, never the other way round)."""
    if ctx.uid == 0:
        return True
    shift = 6 if ctx.uid == inode.uid else 3 if ctx.gid == inode.gid else 0
    access = flags & os.O_ACCMODE
    wanted = {os.O_RDONLY: 4, os.O_WRONLY: 2}.get(access, 6)
    return (inode.mode >> shift) & wanted == wanted


def _refuse_acl(name: bytes) -> None:
    if name in ACL_XATTRS:
        raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
