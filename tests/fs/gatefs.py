"""A pyfuse3 file system whose handlers can be made to wait: a probe of pyfuse3's session tasks.

    python tests/fs/gatefs.py MOUNTPOINT [POLL_US]

Three files, all opened with direct_io so that every read and write reaches a handler:
- `gate`: a read waits until `opener` is written, then returns b"open";
- `opener`: a write opens the gate;
- `zeros`: reads as zeros (64 MiB);
- `tasks`: a read returns, as JSON, how many requests each session task served since the
  last write to `tasks` (a write resets the counts), and under "ticks" how many times a
  background task has woken (every 2 ms) since the mount.

POLL_US is pyfuse3.main's poll_us (patches/pyfuse3-3.5.0-zz-poll-before-sleeping.patch).

Serves in the foreground until SIGTERM or an external unmount.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import signal
import stat
import sys

import pyfuse3
import trio
from pyfuse3 import ROOT_INODE, FUSEError

FILES = {b"gate": ROOT_INODE + 1, b"opener": ROOT_INODE + 2, b"tasks": ROOT_INODE + 3,
         b"zeros": ROOT_INODE + 4}
ZEROS = bytes(1 << 17)
ZEROS_SIZE = 64 << 20


class GateFS(pyfuse3.Operations):
    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.served: collections.Counter[str] = collections.Counter()
        self.ticks = 0

    async def tick(self) -> None:
        while True:
            await trio.sleep(0.002)
            self.ticks += 1

    def _count(self) -> None:
        self.served[trio.lowlevel.current_task().name] += 1

    async def lookup(self, parent_inode, name, ctx=None):
        self._count()
        if parent_inode != ROOT_INODE or name not in FILES:
            raise FUSEError(errno.ENOENT)
        return await self.getattr(FILES[name])

    async def getattr(self, inode, ctx=None):
        self._count()
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = inode
        entry.st_mode = (stat.S_IFDIR | 0o755) if inode == ROOT_INODE else (stat.S_IFREG | 0o666)
        entry.st_size = 0 if inode == ROOT_INODE else 1 << 20
        entry.st_uid, entry.st_gid = os.getuid(), os.getgid()
        entry.attr_timeout = entry.entry_timeout = 0
        return entry

    async def open(self, inode, flags, ctx):
        self._count()
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh, off, size):
        self._count()
        if fh == FILES[b"gate"]:
            await self.gate.wait()
            return b"open"
        if fh == FILES[b"zeros"]:
            return ZEROS[:max(0, min(size, ZEROS_SIZE - off))]
        if fh == FILES[b"tasks"]:
            report = {"served": self.served, "ticks": self.ticks}
            return json.dumps(report).encode()[off:off + size]
        return b""

    async def write(self, fh, off, buf):
        self._count()
        if fh == FILES[b"opener"]:
            self.gate.set()
        elif fh == FILES[b"tasks"]:
            self.served.clear()
        return len(buf)

    async def release(self, fh):
        self._count()


async def serve(mountpoint: str, poll_us: int) -> None:
    options = set(pyfuse3.default_options)
    options.add("fsname=gatefs")
    fs = GateFS()
    pyfuse3.init(fs, mountpoint, options)
    try:
        async with trio.open_nursery() as nursery:
            async def stop_on_sigterm() -> None:
                with trio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_sigterm)
            nursery.start_soon(fs.tick)
            await pyfuse3.main(poll_us=poll_us)
            nursery.cancel_scope.cancel()  # unmounted from outside
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    trio.run(serve, sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
