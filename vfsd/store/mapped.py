"""Read-only maps of segment files: cached chunk bodies read in place, never waiting for the disk.

The mount's event loop answers reads of chunks the page cache holds (vfsd/fs/readmap.py). It
used to copy each record out of the page cache (preadv with RWF_NOWAIT) into a fresh, zeroed
buffer, check the CRC there and hand the buffer to FUSE, which copied it once more into the
kernel. Through a map, the CRC runs over the page-cache pages themselves and FUSE copies from
them: one pass over cold memory instead of a zeroing, a kernel copy and a second pass
(docs/design-notes.md, "Mapped reads", has the figures).

Never waiting: before a record is touched, mincore(2) says whether all of its pages are in
memory; if one is not, the caller reads through a worker thread as before. A page evicted
between that check and the CRC is read back by a page fault: a short stall, not an error.

SIGBUS. Touching a mapped page past the end of its file, or one the disk cannot read, raises
SIGBUS instead of an exception. Locations come from committed appends, so they lie inside the
file, and segments are never truncated (only deleted whole: a deleted file stays readable while
mapped). A disk error needs an eviction and a failing sector between mincore and the CRC: the
same exposure LMDB's own map has on every lookup.

Maps cost address space, not memory, but the pages a read touched count in the process's RSS
(as file pages, given back under memory pressure like the rest of the page cache) until the
map is dropped, and each holds a file descriptor (Python's mmap keeps a dup of it): at most
MAX_MAPS segments stay mapped, the oldest map dropped first.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import crc32c

from .errors import StoreError
from .records import ChunkLocation

MAX_MAPS = 256  # 16 GiB of address space at 64 MiB per segment
PAGE = mmap.PAGESIZE
# mincore sets the lowest bit of a page's byte when it is resident; the others are reserved.
_RESIDENT = bytes(i & 1 for i in range(256))

_libc = ctypes.CDLL(None, use_errno=True)
_mincore = _libc.mincore
_mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_mincore.restype = ctypes.c_int


class _PyBuffer(ctypes.Structure):
    # Python's Py_buffer, to learn where a read-only mmap lies (ctypes' from_buffer wants
    # a writable one).
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p),
                ("len", ctypes.c_ssize_t), ("itemsize", ctypes.c_ssize_t),
                ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
                ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                ("internal", ctypes.c_void_p)]


def _address_of(buffer: mmap.mmap) -> int:
    view = _PyBuffer()
    if ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(buffer), ctypes.byref(view), 0):
        raise BufferError("cannot take the address of a mapped segment")
    try:
        return int(view.buf)
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))


class _Map:
    __slots__ = ("address", "length", "view")

    def __init__(self, fd: int, length: int):
        mapped = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ)
        self.address = _address_of(mapped)
        # Views handed out keep the map alive: it is unmapped once the last one is released.
        self.view = memoryview(mapped)
        self.length = length


class MappedSegments:
    """Maps of the segments reads touched. `view_cached` and `views_cached` run on one thread
    at a time (the mount's event loop); `forget` and `close` may run on any."""

    def __init__(self, reading: Callable[[int], contextlib.AbstractContextManager[int]],
                 header_size: int,
                 check_header: Callable[[memoryview, int, ChunkLocation], int | None]):
        self._reading = reading
        self._header_size = header_size
        self._check_header = check_header
        self._maps: OrderedDict[int, _Map] = OrderedDict()
        self._lock = threading.Lock()
        self._flags = ctypes.create_string_buffer(32)  # mincore's answer, one byte per page

    def view_cached(self, location: ChunkLocation) -> memoryview | None:
        """The body, in place and verified, if the page cache holds its whole record; else
        None (not in memory, the segment is gone, or the record does not check out: the
        caller then reads the usual way, which reports real damage)."""
        bodies = self.views_cached((location,))
        return bodies[0] if bodies else None

    def views_cached(self, locations: Sequence[ChunkLocation]) -> list[memoryview] | None:
        """`view_cached` of each location, or None if any one is not to be had that way.
        Records back to back in a segment (a file written in order) are checked for
        residency with one mincore call."""
        # Flat on purpose: it runs for every read the event loop answers.
        header = self._header_size
        check_header = self._check_header
        bodies: list[memoryview] = []
        i, n = 0, len(locations)
        while i < n:
            first = last = locations[i]
            j = i + 1
            while j < n:
                following = locations[j]
                if (following.segment != first.segment
                        or following.offset != last.offset + last.length + header):
                    break
                last = following
                j += 1
            start, end = first.offset - header, last.offset + last.length
            mapped = self._maps.get(first.segment)
            if mapped is None or end > mapped.length:
                mapped = self._map(first.segment, end)
                if mapped is None:
                    return None
            low = (mapped.address + start) & ~(PAGE - 1)
            pages = -(-(mapped.address + end - low) // PAGE)
            flags = self._flags
            if pages > len(flags):
                flags = self._flags = ctypes.create_string_buffer(pages)
            if _mincore(low, pages * PAGE, flags) or 0 in flags.raw[:pages].translate(_RESIDENT):
                return None
            view = mapped.view
            for location in locations[i:j]:
                crc = check_header(view, location.offset - header, location)
                body = view[location.offset:location.offset + location.length]
                if crc is None or crc32c.crc32c(body) != crc:
                    return None
                bodies.append(body)
            i = j
        return bodies

    def _map(self, segment: int, end: int) -> _Map | None:
        try:
            with self._reading(segment) as fd:  # a map needs no open descriptor once made
                length = os.fstat(fd).st_size
                if length < end:
                    return None
                mapped = _Map(fd, length)
        except (OSError, StoreError, ValueError, BufferError):
            return None
        with self._lock:
            self._maps[segment] = mapped
            while len(self._maps) > MAX_MAPS:
                self._maps.popitem(last=False)
        return mapped

    def forget(self, segments: set[int]) -> None:
        """Drop the maps of segments that may be deleted (a map keeps a deleted file's space)."""
        with self._lock:
            for segment in segments & self._maps.keys():
                del self._maps[segment]

    def close(self) -> None:
        with self._lock:
            self._maps.clear()
