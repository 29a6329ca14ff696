"""New segments for one process's appends, made one roll ahead.

Making a segment is an LMDB write transaction (the `allocate(previous)` callback: a new id
owned by this process, and the segment filled before given up), the file, and a directory
fsync so that the name survives a crash before any location inside it is committed: ~10 ms
here (6.8 the transaction, 3.1 the fsync). Made at the roll, under the append lock, that
held up every flush worker once per 64 MiB batch of a sequential write. A process that has
filled a segment gets the next one made by a `vfsd-segment-maker` thread while it fills this
one; its first segment, or the first after a rest, is made in place with no spare after it,
so a command that writes a little leaves no empty segment behind.

gc leaves owned segments alone, so every filled segment must be given up: by the making
that follows its roll, or, when makings fail (a full disk), by the next one that succeeds
or by `give_up_rolled_past` when the process rests.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from .errors import StoreError

# What making or giving up a segment may raise (the disk, the index; StoreError covers
# LMDB's full map and disk errors): anything else is a bug and goes up.
FAILURES = (OSError, StoreError)


class NewSegment(NamedTuple):
    segment: int
    fd: int  # for appends
    direct: bool  # whether `fd` is O_DIRECT


class SegmentMaker:
    """Thread-safe for `rolled_past` and `give_up_rolled_past`; `next`, `claimed` and
    `close` run under the caller's append lock."""

    def __init__(self, allocate: Callable[[int | None], int],
                 disown: Callable[[int], None] | None, path: Callable[[int], Path],
                 sync_directory: Callable[[], None]):
        self._allocate = allocate
        self._disown = disown
        self._path = path
        self._sync_directory = sync_directory
        self._lock = threading.Lock()
        self._rolled_past: list[int] = []  # filled, to be given up
        self._spare: concurrent.futures.Future[NewSegment] | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def rolled_past(self, segment: int) -> None:
        """A filled segment, to be given up by the next making."""
        with self._lock:
            self._rolled_past.append(segment)

    def next(self, ahead: bool) -> NewSegment:
        """The segment to append to now: the spare, or one made here (its error reaches the
        caller). With `ahead`, start making the spare for the roll after this one."""
        made = self._take_spare()
        if made is None:
            made = self._make()
        if ahead:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="vfsd-segment-maker")
            try:
                self._spare = self._pool.submit(self._make)
            except RuntimeError:
                pass  # the interpreter is shutting down: the next roll makes its own
        return made

    def _take_spare(self) -> NewSegment | None:
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        try:
            return spare.result()
        except FAILURES:  # made again in place, where the error reaches the appender
            return None

    def _make(self) -> NewSegment:
        with self._lock:
            given_up, self._rolled_past = self._rolled_past, []
        try:
            segment = self._allocate(given_up[0] if given_up else None)
        except BaseException:
            with self._lock:
                self._rolled_past[:0] = given_up
            raise
        self._give_up(given_up[1:])  # a backlog that failed makings left
        try:
            fd, direct = _open_for_append(self._path(segment))
            try:
                self._sync_directory()
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            self.rolled_past(segment)  # owned but never appended to: given up the same way
            raise
        return NewSegment(segment, fd, direct)

    def _give_up(self, segments: list[int]) -> None:
        for segment in segments:
            if self._disown is None:
                self.rolled_past(segment)  # only a making can give it up
                continue
            try:
                self._disown(segment)
            except FAILURES:
                self.rolled_past(segment)

    def give_up_rolled_past(self) -> None:
        """Give up every filled segment still owned (a process coming to rest)."""
        with self._lock:
            segments, self._rolled_past = self._rolled_past, []
        self._give_up(segments)

    def claimed(self) -> list[int]:
        """The spare (waiting for it if it is being made) and the filled segments not given
        up yet."""
        spare = None
        if self._spare is not None and self._spare.exception() is None:  # waits
            spare = self._spare.result().segment
        with self._lock:
            return ([spare] if spare is not None else []) + self._rolled_past

    def close(self) -> None:
        """Close the spare's descriptor: it stays owned until this process ends (or until
        gc finds it empty after a crash), like the segment appended to last."""
        spare, self._spare = self._spare, None
        if spare is not None and spare.exception() is None:
            os.close(spare.result().fd)
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _open_for_append(path: Path) -> tuple[int, bool]:
    """Create a segment file, for direct I/O where the file system takes it (not tmpfs)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        return os.open(path, flags | os.O_DIRECT, 0o644), True
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    return os.open(path, flags, 0o644), False
