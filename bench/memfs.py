"""Minimal in-memory pyfuse3 file system: the performance ceiling for vfsd benchmarks.

    python bench/memfs.py [--debug] [--writeback-cache] MOUNTPOINT

Serves in the foreground until SIGINT/SIGTERM (or an external unmount), then unmounts. Data
lives in bytearrays; `read` returns memoryview slices, `write` copies once. Benchmark it with
the GLIBC_TUNABLES from DESIGN.md. fallocate, lseek and copy_file_range need the pyfuse3 from
scripts/install-pyfuse3; --debug logs each of their calls (tests rely on that).
"""

import argparse
import errno
import logging
import os
import signal
import stat
import time

import pyfuse3
import trio
from pyfuse3 import ROOT_INODE, FUSEError

log = logging.getLogger("memfs")

# <linux/falloc.h>; the os module does not export these.
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
ZEROS = memoryview(bytes(1 << 20))


class Node:
    def __init__(self, ino: int, mode: int, parent: int, uid: int, gid: int):
        self.ino, self.mode, self.parent, self.uid, self.gid = ino, mode, parent, uid, gid
        self.is_dir = stat.S_ISDIR(mode)
        self.children: dict[bytes, int] = {}  # directories only: name -> inode
        self.data = bytearray()  # regular files only
        self.nlink = 2 if self.is_dir else 1
        self.opens = 0
        self.atime_ns = self.mtime_ns = self.ctime_ns = time.time_ns()


class MemFS(pyfuse3.Operations):
    def __init__(self, writeback_cache: bool = False):
        super().__init__()
        self.enable_writeback_cache = writeback_cache
        root = Node(ROOT_INODE, stat.S_IFDIR | 0o755, ROOT_INODE, os.getuid(), os.getgid())
        self.nodes = {ROOT_INODE: root}
        self.next_ino = ROOT_INODE + 1

    def _node(self, ino) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise FUSEError(errno.ENOENT) from None

    def _dir(self, ino) -> Node:
        node = self._node(ino)
        if not node.is_dir:
            raise FUSEError(errno.ENOTDIR)
        return node

    def _attr(self, n: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino, a.st_mode, a.st_nlink, a.st_uid, a.st_gid = n.ino, n.mode, n.nlink, n.uid, n.gid
        a.st_size = len(n.data)
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = n.atime_ns, n.mtime_ns, n.ctime_ns
        return a

    def _new(self, parent: int, name: bytes, mode: int, ctx) -> Node:
        d = self._dir(parent)
        if name in d.children:
            raise FUSEError(errno.EEXIST)
        n = Node(self.next_ino, mode, parent, ctx.uid, ctx.gid)
        self.next_ino += 1
        self.nodes[n.ino] = n
        d.children[name] = n.ino
        d.nlink += n.is_dir
        d.mtime_ns = d.ctime_ns = n.ctime_ns
        return n

    def _write(self, n: Node, off: int, buf) -> int:
        if off > len(n.data):
            n.data.extend(bytes(off - len(n.data)))
        n.data[off : off + len(buf)] = buf
        n.mtime_ns = n.ctime_ns = time.time_ns()
        return len(buf)

    async def lookup(self, parent_inode, name, ctx):
        d = self._dir(parent_inode)
        if name in (b".", b".."):
            return self._attr(d if name == b"." else self.nodes[d.parent])
        return self._attr(self._node(d.children.get(name)))

    async def getattr(self, inode, ctx):
        return self._attr(self._node(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        n = self._node(inode)
        now = time.time_ns()
        if fields.update_size:
            if attr.st_size < len(n.data):
                del n.data[attr.st_size :]
            self._write(n, attr.st_size, b"")
        if fields.update_mode:
            n.mode = stat.S_IFMT(n.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            n.uid = attr.st_uid
        if fields.update_gid:
            n.gid = attr.st_gid
        if fields.update_atime:
            n.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            n.mtime_ns = attr.st_mtime_ns
        n.ctime_ns = attr.st_ctime_ns if fields.update_ctime else now
        return self._attr(n)

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._attr(self._new(parent_inode, name, mode, ctx))

    async def create(self, parent_inode, name, mode, flags, ctx):
        n = self._new(parent_inode, name, mode, ctx)
        n.opens += 1
        return pyfuse3.FileInfo(fh=n.ino, keep_cache=True), self._attr(n)

    async def open(self, inode, flags, ctx):
        n = self._node(inode)
        if flags & os.O_TRUNC:  # libfuse 3 enables FUSE_CAP_ATOMIC_O_TRUNC by default
            del n.data[:]
            n.mtime_ns = n.ctime_ns = time.time_ns()
        n.opens += 1
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh, off, size):
        return memoryview(self.nodes[fh].data)[off : off + size]

    async def write(self, fh, off, buf):
        return self._write(self.nodes[fh], off, buf)

    async def flush(self, fh):
        pass

    async def fsync(self, fh, datasync):
        pass

    async def release(self, fh):
        n = self.nodes[fh]
        n.opens -= 1
        if n.nlink == 0 and n.opens == 0:
            del self.nodes[fh]

    async def unlink(self, parent_inode, name, ctx):
        d = self._dir(parent_inode)
        n = self._node(d.children.pop(name, None))
        n.nlink -= 1
        d.mtime_ns = d.ctime_ns = n.ctime_ns = time.time_ns()
        if n.nlink == 0 and n.opens == 0:
            del self.nodes[n.ino]

    async def opendir(self, inode, ctx):
        return self._dir(inode).ino

    async def readdir(self, fh, start_id, token):
        # Inode order with next_id = inode, so concurrent changes never skip or repeat entries.
        children = self.nodes[fh].children.items()
        for ino, name in sorted((i, n) for n, i in children if i > start_id):
            if not pyfuse3.readdir_reply(token, name, self._attr(self.nodes[ino]), ino):
                break

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = 1 << 28  # 1 TiB
        used = sum((len(n.data) + 4095) // 4096 for n in self.nodes.values())
        s.f_bfree = s.f_bavail = max(s.f_blocks - used, 0)
        s.f_files = 1 << 24
        s.f_ffree = s.f_favail = s.f_files - len(self.nodes)
        s.f_namemax = 255
        return s

    # The three handlers that need the pyfuse3 patch.

    async def fallocate(self, fh, mode, offset, length):
        log.debug("fallocate(fh=%d, mode=%#x, offset=%d, length=%d)", fh, mode, offset, length)
        if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            raise FUSEError(errno.EOPNOTSUPP)
        n = self.nodes[fh]
        end = offset + length
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            stop = min(end, len(n.data))
            for pos in range(offset, stop, len(ZEROS)):
                n.data[pos : min(pos + len(ZEROS), stop)] = ZEROS[: min(len(ZEROS), stop - pos)]
        if not mode & FALLOC_FL_KEEP_SIZE and end > len(n.data):
            self._write(n, end, b"")
        n.mtime_ns = n.ctime_ns = time.time_ns()

    async def lseek(self, fh, offset, whence):
        log.debug("lseek(fh=%d, offset=%d, whence=%d)", fh, offset, whence)
        size = len(self.nodes[fh].data)
        if offset >= size:
            raise FUSEError(errno.ENXIO)
        return offset if whence == os.SEEK_DATA else size  # no holes: the whole file is data

    async def copy_file_range(self, fh_in, off_in, fh_out, off_out, length, flags):
        log.debug(
            "copy_file_range(fh_in=%d, off_in=%d, fh_out=%d, off_out=%d, length=%d, flags=%#x)",
            fh_in, off_in, fh_out, off_out, length, flags,
        )
        buf = self.nodes[fh_in].data[off_in : off_in + length]  # a copy: source may be target
        return self._write(self.nodes[fh_out], off_out, buf)


async def serve(poll_us: int) -> None:
    async with trio.open_nursery() as nursery:

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("%s: unmounting", signal.Signals(signum).name)
                    pyfuse3.terminate()
                    return

        nursery.start_soon(stop_on_signal)
        await pyfuse3.main(poll_us=poll_us)
        nursery.cancel_scope.cancel()  # the loop ended: by a signal or an external unmount


def main() -> None:
    parser = argparse.ArgumentParser(description="In-memory pyfuse3 file system.")
    parser.add_argument("mountpoint")
    parser.add_argument("--debug", action="store_true",
                        help="log every fallocate/lseek/copy_file_range call")
    parser.add_argument("--writeback-cache", action="store_true",
                        help="enable the kernel's writeback cache")
    parser.add_argument("--poll-us", type=int, default=0,
                        help="poll for the next request this long before sleeping, as "
                        "`vfsd mount --poll-us` (default 0: never; bench/fs.py passes "
                        "vfsd's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    options = set(pyfuse3.default_options)
    options.add("fsname=memfs")
    pyfuse3.init(MemFS(args.writeback_cache), args.mountpoint, options)
    try:
        trio.run(serve, args.poll_us)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
