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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .env import Tx

_FLOCK = struct.Struct("hhqqi4x")  # struct flock on x86-64 and aarch64 Linux


class Opens:
    def __init__(self, run_dir: Path):
        run_dir.mkdir(exist_ok=True)
        self.fd = os.open(run_dir / "opens", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.counts: dict[int, int] = {}  # this process's holders per inode
        self.replaced: dict[int, threading.Event] = {}  # see `replacing`; set when it ends
        self.lock = threading.Lock()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def try_hold(self, ino: int) -> bool:
        """One more holder of `ino` in this process (a mount's handle, a GET), unless a
        write transaction is freeing it right now (see `replacing`): False then, and
        nothing is held. Never waits (the mount calls it on its event loop)."""
        with self.lock:
            count = self.counts.get(ino, 0)
            if not count and (ino in self.replaced or not self._lock(ino, fcntl.F_RDLCK)):
                return False
            self.counts[ino] = count + 1
            return True

    def hold(self, ino: int) -> None:
        """`try_hold`, waiting out a replacement in progress; for worker threads."""
        while not self.try_hold(ino):
            with self.lock:
                ours = self.replaced.get(ino)
            if ours is not None:
                ours.wait(1.0)
            else:  # another process's: wait for its lock to go, then hold as usual
                fcntl.fcntl(self.fd, fcntl.F_OFD_SETLKW,
                            _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, ino, 1, 0))
                self._unlock_if_unheld(ino)

    def release(self, ino: int) -> None:
        """One holder of `ino` in this process let go of it."""
        with self.lock:
            count = self.counts.pop(ino, 0)
            if count > 1:
                self.counts[ino] = count - 1
            elif count == 1:
                self._lock(ino, fcntl.F_UNLCK)

    def replacing(self, tx: Tx, ino: int) -> bool:
        """Inside a write transaction that would free `ino` (an unlink, a PUT over it, an
        orphan's last holder gone): True if no holder has it open, and then none can take a
        hold until the transaction has ended: it finds the inode gone. Checking `held`
        alone left a gap: a hold taken after the check but before the commit found the
        inode, and its reads then found it freed (a QA pass; a CI run). False: it is held;
        park it instead."""
        with self.lock:
            if ino in self.counts or ino in self.replaced:
                return False
            if not self._lock(ino, fcntl.F_WRLCK):
                return False
            self.replaced[ino] = threading.Event()
        tx.ended.append(lambda: self._replaced(ino))
        return True

    def _replaced(self, ino: int) -> None:
        with self.lock:
            ended = self.replaced.pop(ino)
            self._lock(ino, fcntl.F_UNLCK)
        ended.set()

    def _unlock_if_unheld(self, ino: int) -> None:
        with self.lock:
            if ino not in self.counts and ino not in self.replaced:
                self._lock(ino, fcntl.F_UNLCK)

    def _lock(self, ino: int, kind: int) -> bool:
        try:
            fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, ino, 1, 0))
        except (BlockingIOError, PermissionError):  # EAGAIN / EACCES: another process's lock
            return False
        return True

    def held(self, ino: int) -> bool:
        """Whether any live holder has `ino` open, in this process or another."""
        return ino in self.counts or self.held_elsewhere(ino)

    def held_elsewhere(self, ino: int) -> bool:
        """Whether another live process has `ino` open."""
        answer = fcntl.fcntl(self.fd, fcntl.F_OFD_GETLK,
                             _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, ino, 1, 0))
        return _FLOCK.unpack(answer)[0] != fcntl.F_UNLCK
