"""Read handles of segment files: cached, shared between threads, and bounded.

Opening a segment for every read would cost an open and a close each time; keeping every
segment ever read open costs a file descriptor each, and a store of a few hundred GiB has
thousands of segments against a soft limit on open files that is often 1024. Past it every
read fails (EMFILE), and handles of segments gc deleted keep their space. So at most
MAX_READERS stay open, the least recently used closed first, and a handle another thread is
reading through is closed only when that read is done: a closed number is reused by the next
open, and a read through it would see another file.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import Corrupt

MAX_READERS = 256


class _Handle:
    __slots__ = ("fd", "retired", "users")

    def __init__(self, fd: int):
        self.fd = fd
        self.users = 0
        self.retired = False


class SegmentReaders:
    def __init__(self, path_of: Callable[[int], Path], describe: Callable[[int], str],
                 limit: int = MAX_READERS):
        self._path_of = path_of
        self._describe = describe
        self._limit = limit
        self._open: OrderedDict[int, _Handle] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def reading(self, segment: int) -> Iterator[int]:
        """A descriptor of the segment, open for the block; Corrupt if the file is gone."""
        handle = self._acquire(segment)
        try:
            yield handle.fd
        finally:
            with self._lock:
                handle.users -= 1
                if handle.retired and handle.users == 0:
                    os.close(handle.fd)

    def _acquire(self, segment: int) -> _Handle:
        with self._lock:
            handle = self._open.get(segment)
            if handle is None:
                try:
                    fd = os.open(self._path_of(segment), os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise Corrupt(f"segment {self._describe(segment)} is missing") from None
                handle = self._open[segment] = _Handle(fd)
                while len(self._open) > self._limit:
                    self._retire(self._open.popitem(last=False)[1])
            else:
                self._open.move_to_end(segment)
            handle.users += 1
            return handle

    def _retire(self, handle: _Handle) -> None:
        handle.retired = True
        if handle.users == 0:
            os.close(handle.fd)

    def forget(self, segments: set[int]) -> None:
        """Close the handles of segments that may be deleted (an open file keeps its space)."""
        with self._lock:
            for segment in segments & self._open.keys():
                self._retire(self._open.pop(segment))

    def close(self) -> None:
        with self._lock:
            while self._open:
                self._retire(self._open.popitem()[1])

    def __len__(self) -> int:
        return len(self._open)
