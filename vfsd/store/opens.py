"""Which processes have a file open: a read lock on byte `ino` of `run/opens` per process.

A file deleted through one front end (the gateway) while another (the mount) has it open must
stay readable there until its last close, as after unlink(2): the deleting process parks it
as an orphan when `held_elsewhere`, and the holder frees it at its last close. Open file
description locks (fcntl F_OFD_*) carry this: one syscall to take or drop, no transaction
and no thread hop (the mount does it on its event loop), never blocking (F_OFD_SETLK), and
the kernel drops them when the process dies, so a crashed holder holds nothing. A process
never conflicts with its own locks, so `held_elsewhere` asks about the others only.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

_FLOCK = struct.Struct("hhqqi4x")  # struct flock on x86-64 and aarch64 Linux


class Opens:
    def __init__(self, run_dir: Path):
        run_dir.mkdir(exist_ok=True)
        self.fd = os.open(run_dir / "opens", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def hold(self, ino: int) -> None:
        """This process has `ino` open (its first handle)."""
        fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, ino, 1, 0))

    def release(self, ino: int) -> None:
        """This process closed its last handle of `ino`."""
        fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, ino, 1, 0))

    def held_elsewhere(self, ino: int) -> bool:
        """Whether another live process has `ino` open."""
        answer = fcntl.fcntl(self.fd, fcntl.F_OFD_GETLK,
                             _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, ino, 1, 0))
        return _FLOCK.unpack(answer)[0] != fcntl.F_UNLCK
