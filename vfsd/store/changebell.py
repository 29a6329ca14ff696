"""A wake-up for the mount's change-log tail, rung by every other process that commits changes.

The mount learns what other processes (the gateway, the CLI) changed by reading the change log
(vfsd/fs/invalidate.py). Polled every 100 ms alone, the kernel kept a replaced file's old
inode for up to that long after a PUT's 200: stat showed the old size, and each open of it
answered ESTALE and was retried. Rung, the mount reads the log a few milliseconds after the
commit.

The bell is a Unix datagram socket in the abstract namespace (no file to leave behind, no
path length limit), named after the store directory's device and inode number, which every
path to it shares. The mount binds it; ringing is one non-blocking sendto of an empty
datagram, lost without harm when no mount listens (ECONNREFUSED) or when unread rings fill
its queue (EAGAIN: the mount has a read of the log due anyway). A ring is a hint, never the
only way a change is seen: the tail still polls, so a second mount of the same store, which
cannot bind the name, only hears changes later.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path


def _address(store_path: Path) -> bytes:
    st = os.stat(store_path)
    return f"\0vfsd-changes-{st.st_dev:x}-{st.st_ino:x}".encode()


def _socket() -> socket.socket:
    return socket.socket(socket.AF_UNIX,
                         socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)


class Bell:
    """The ringing side: one per process that may commit changes."""

    def __init__(self, store_path: Path):
        self.address = _address(store_path)
        self.sock = _socket()

    def ring(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(b"", self.address)

    def close(self) -> None:
        self.sock.close()


def listen(store_path: Path) -> socket.socket:
    """The mount's side: a socket bound to the store's bell that receives the rings.
    OSError (EADDRINUSE) if another mount of the store listens already."""
    sock = _socket()
    try:
        sock.bind(_address(store_path))
    except BaseException:
        sock.close()
        raise
    return sock


def drain(sock: socket.socket) -> None:
    """Read every ring queued so far."""
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.recv(1)
