"""Which processes have a file open: a read lock on byte `ino` of `run/opens` per process.

A file deleted through one front end (the gateway) while another (the mount) has it open must
stay readable there until its last close, as after unlink(2): the deleting process parks it
as an orphan when it is `held`, and the holder frees it at its last close. Open file
description locks (fcntl F_OFD_*) carry this: one syscall to take or drop, no transaction
and no thread hop (the mount does it on its event loop), never blocking (F_OFD_SETLK), and
the kernel drops them when the process dies, so a crashed holder holds nothing. A process
never conflicts with its own locks, so `held_elsewhere` asks about the others only; holds of
this process are counted here (a gateway process may stream one object to several clients).
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
from pathlib import Path

_FLOCK = struct.Struct("hhqqi4x")  # struct flock on x86-64 and aarch64 Linux


class Opens:
    def __init__(self, run_dir: Path):
        run_dir.mkdir(exist_ok=True)
        self.fd = os.open(run_dir / "opens", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.counts: dict[int, int] = {}  # this process's holders per inode
        self.lock = threading.Lock()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def hold(self, ino: int) -> None:
        """One more holder of `ino` in this process (a mount's first handle, a GET)."""
        with self.lock:
            count = self.counts.get(ino, 0)
            if not count:
                self._lock(ino, fcntl.F_RDLCK)
            self.counts[ino] = count + 1

    def release(self, ino: int) -> None:
        """One holder of `ino` in this process let go of it."""
        with self.lock:
            count = self.counts.pop(ino, 0)
            if count > 1:
                self.counts[ino] = count - 1
            elif count == 1:
                self._lock(ino, fcntl.F_UNLCK)

    def _lock(self, ino: int, kind: int) -> None:
        fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, ino, 1, 0))

    def held(self, ino: int) -> bool:
        """Whether any live holder has `ino` open, in this process or another."""
        return ino in self.counts or self.held_elsewhere(ino)

    def held_elsewhere(self, ino: int) -> bool:
        """Whether another live process has `ino` open."""
        answer = fcntl.fcntl(self.fd, fcntl.F_OFD_GETLK,
                             _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, ino, 1, 0))
        return _FLOCK.unpack(answer)[0] != fcntl.F_UNLCK
