"""Tail the change log and drop kernel caches for changes other processes made.

The kernel caches attributes, directory entries and pages; when the gateway (or a CLI) changes
the store, the mount learns it from the change log and invalidates: about a millisecond after
the commit when the committing process rings the bell (vfsd/store/changebell.py), within one
poll otherwise. The calls into the kernel run in a worker thread, never inside a request
handler (pyfuse3 may deadlock otherwise, DESIGN.md "Measured facts").
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3
import trio

from vfsd.store import Store, changebell
from vfsd.store.records import Change, ChangeOp

log = logging.getLogger("vfsd.invalidate")
POLL_SECONDS = 0.1
# Two reads of the log are at least this far apart, so that a stream of commits (1,000 PUTs
# a second) or of stray datagrams costs the mount a read per 2 ms, not one per ring.
GATHER_SECONDS = 0.002


def _invalidate(changes: list[Change]) -> None:
    seen_inodes: set[tuple[int, bool]] = set()
    for change in changes:
        try:
            if change.op in (ChangeOp.DATA, ChangeOp.ATTR):
                key = (change.ino, change.op == ChangeOp.ATTR)
                if key not in seen_inodes:
                    seen_inodes.add(key)
                    pyfuse3.invalidate_inode(change.ino, attr_only=change.op == ChangeOp.ATTR)
            if change.parent and change.name:
                pyfuse3.invalidate_entry(change.parent, change.name)
                pyfuse3.invalidate_inode(change.parent, attr_only=True)
            if change.op in (ChangeOp.REMOVE, ChangeOp.LINK):
                pyfuse3.invalidate_inode(change.ino, attr_only=True)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR):  # the kernel never cached it
                log.warning("event=invalidate-failed ino=%d error=%s", change.ino, e)


def _invalidate_own(ino: int) -> None:
    try:
        pyfuse3.invalidate_inode(ino, attr_only=False)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            log.warning("event=invalidate-failed ino=%d error=%s", ino, e)


class OwnChanges:
    """Kernel invalidations for changes the mount makes behind the kernel's back (a swap file
    emptied at last close). Handlers queue them; a separate task sends them, since calling
    invalidate_inode from a handler for the same inode can deadlock."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[int](math.inf)

    def invalidate(self, ino: int) -> None:
        self._send.send_nowait(ino)

    async def run(self) -> None:
        async for ino in self._receive:
            await trio.to_thread.run_sync(_invalidate_own, ino)


def _invalidate_all(inodes: list[int]) -> None:
    for ino in inodes:
        _invalidate_own(ino)


async def tail_changes(store: Store, run: Callable[..., Awaitable[Any]],
                       on_foreign: Callable[[Change], Awaitable[None]] | None = None,
                       on_gap: Callable[[], Awaitable[None]] | None = None) -> None:
    """Forever: read new change-log entries; invalidate the kernel for foreign ones. Entries
    trimmed before they were read (the mount was stopped for longer than the log keeps
    them, vfsd/store/changelog.py) could have been anything: every inode is invalidated."""
    try:
        bell: changebell.Listener | None = changebell.Listener(store.config.path / "run")
        store.env.on_change = None  # what this process commits, it need not hear
    except OSError as e:  # another mount of this store listens: polling alone still works
        log.warning("event=change-bell-unavailable action=poll error=%s", e)
        bell = None
    try:
        await _tail(store, run, on_foreign, on_gap, bell)
    finally:
        if bell is not None:
            bell.close()


async def _tail(store: Store, run: Callable[..., Awaitable[Any]],
                on_foreign: Callable[[Change], Awaitable[None]] | None,
                on_gap: Callable[[], Awaitable[None]] | None,
                bell: changebell.Listener | None) -> None:
    seq = await run(store.last_change)
    while True:
        changes = await run(store.changes_since, seq, 1000)
        if not changes:
            await _rung(bell)
            continue
        if changes[0].seq > seq + 1:
            log.warning("event=change-log-gap missed=%d action=invalidate-all",
                        changes[0].seq - seq - 1)
            if on_gap is not None:
                await on_gap()
            await trio.to_thread.run_sync(_invalidate_all, await run(store.inode_numbers))
        seq = changes[-1].seq
        foreign = [c for c in changes if c.origin != store.origin]
        if foreign:
            if on_foreign is not None:
                for change in foreign:
                    await on_foreign(change)
            await trio.to_thread.run_sync(_invalidate, foreign)
        await trio.sleep(GATHER_SECONDS)


async def _rung(bell: changebell.Listener | None) -> None:
    """Until the bell rings (then drained: one read of the log answers every ring so far)
    or one poll has passed. Never sooner than GATHER_SECONDS: a read that finds nothing
    (rings an earlier read answered) is not repeated at once."""
    await trio.sleep(GATHER_SECONDS)
    with trio.move_on_after(POLL_SECONDS - GATHER_SECONDS):
        if bell is None:
            await trio.sleep_forever()
        await trio.lowlevel.wait_readable(bell)
    if bell is not None:
        bell.drain()
