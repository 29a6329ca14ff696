"""A wake-up for the mount's change-log tail, rung by every other process that commits changes.

The mount learns what other processes (the gateway, the CLI) changed by reading the change log
(vfsd/fs/invalidate.py). Polled every 100 ms alone, the kernel kept a replaced file's old
inode for up to that long after a PUT's 200: stat showed the old size, and each open of it
answered ESTALE and was retried. Rung, the mount reads the log a few milliseconds after the
commit.

The bell is a Unix datagram socket, `run/changes.sock` in the store, which the mount binds:
only those who may write in the store can ring it or take its place. Ringing is one
non-blocking sendto of an empty datagram, lost without harm when no mount listens (ENOENT,
ECONNREFUSED) or when unread rings fill its queue (EAGAIN: the mount has a read of the log
due anyway). A ring is a hint, never the only way a change is seen: the tail still polls, so
a second mount of the same store, which finds the bell taken, only hears changes later.
The socket is named through /proc/self/fd and a descriptor of `run/`, since a store's own
path may be longer than a socket address can be (108 bytes).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path

SOCKET_NAME = "changes.sock"


def _socket() -> socket.socket:
    return socket.socket(socket.AF_UNIX,
                         socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)


class _RunDir:
    """`run/` held open, and the bell's address through it."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(exist_ok=True)
        self.fd = os.open(run_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.address = f"/proc/self/fd/{self.fd}/{SOCKET_NAME}"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Bell:
    """The ringing side: one per process that may commit changes."""

    def __init__(self, run_dir: Path):
        self.run = _RunDir(run_dir)
        self.sock = _socket()

    def ring(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(b"", self.run.address)

    def close(self) -> None:
        self.sock.close()
        self.run.close()


class Listener:
    """The mount's side: the bound socket the rings arrive on. OSError (EADDRINUSE) when
    another live process listens already; a socket left by one that died is replaced."""

    def __init__(self, run_dir: Path):
        self.run = _RunDir(run_dir)
        self.sock = _socket()
        self.inode: int | None = None  # of the socket file, once bound
        try:
            self._bind()
        except BaseException:
            self.close()
            raise

    def _bind(self) -> None:
        try:
            self.sock.bind(self.run.address)
        except OSError as e:
            if e.errno != errno.EADDRINUSE or self._live():
                raise
            os.unlink(SOCKET_NAME, dir_fd=self.run.fd)
            self.sock.bind(self.run.address)
        self.inode = os.stat(SOCKET_NAME, dir_fd=self.run.fd).st_ino

    def _live(self) -> bool:
        with _socket() as probe:
            try:
                probe.connect(self.run.address)
            except ConnectionRefusedError:
                return False
        return True

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> None:
        """Read every ring queued so far."""
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(1)

    def close(self) -> None:
        """Stop listening; the socket file goes unless another listener has replaced it."""
        if self.inode is not None:
            with contextlib.suppress(OSError):
                if os.stat(SOCKET_NAME, dir_fd=self.run.fd).st_ino == self.inode:
                    os.unlink(SOCKET_NAME, dir_fd=self.run.fd)
            self.inode = None
        self.sock.close()
        self.run.close()
