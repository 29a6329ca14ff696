"""A dirty chunk written in part: the write-back cache's unit for small writes
(vfsd/fs/writeback.py); a flush lays it onto the stored chunk (vfsd/fs/flushcommit.py)."""

from __future__ import annotations


class Patch:
    """Part of a chunk: the writes laid on it, oldest first, and the ranges they cover (sorted,
    disjoint, merged). The rest of the chunk is whatever the store holds.

    Writes are kept as they came (pyfuse3's immutable bytes: no copy). A chunk-sized buffer
    per patch cost a fresh 64 KiB of memory per random 4 KiB write, faulted in page by page
    (~15 µs, more than the rest of the write handler). Pieces are merged once there are more
    than MAX_PIECES of them, so a run of small writes stays cheap to read and flush."""

    __slots__ = ("cost", "pieces", "ranges")
    MAX_PIECES = 16

    def __init__(self) -> None:
        self.pieces: list[tuple[int, bytes | bytearray | memoryview]] = []
        self.ranges: list[tuple[int, int]] = []
        self.cost = 0  # bytes counted against the cache bound: every piece ever put

    def put(self, lo: int, piece: bytes | bytearray | memoryview) -> None:
        if isinstance(piece, memoryview) and len(piece.obj) > 2 * len(piece):
            # The edge of a large write: a view would keep the whole write's buffer alive
            # while the bound counts only this piece.
            piece = bytes(piece)
        hi = lo + len(piece)
        self.cost += len(piece)
        self.pieces.append((lo, piece))
        merged = []
        for a, b in self.ranges:
            if b < lo or a > hi:
                merged.append((a, b))
            else:
                lo, hi = min(a, lo), max(b, hi)
        merged.append((lo, hi))
        merged.sort()
        self.ranges = merged
        if len(self.pieces) > self.MAX_PIECES:
            self.pieces = [(a, self._span(a, b)) for a, b in self.ranges]

    def _span(self, a: int, b: int) -> bytearray:
        """The patched bytes of [a, b), a range the patch covers whole."""
        out = bytearray(b - a)
        self.overlay(out, a, b, 0)
        return out

    def covers(self, lo: int, hi: int) -> bool:
        return any(a <= lo and hi <= b for a, b in self.ranges)

    @property
    def data(self) -> bytearray:
        """The chunk's bytes from 0 to the end of the last range (for a patch that covers
        them all)."""
        return self._span(0, self.ranges[-1][1]) if self.ranges else bytearray()

    def onto(self, base: bytes | bytearray | memoryview) -> bytearray:
        """The whole chunk: `base` (the stored body; zeros past its end) under the patch."""
        return self.laid_on(bytearray(base))

    def laid_on(self, body: bytearray) -> bytearray:
        """`onto` without the copy: the patch is laid on `body` itself, which it returns."""
        end = self.ranges[-1][1] if self.ranges else 0
        if len(body) < end:
            body.extend(bytes(end - len(body)))
        self.overlay(body, 0, len(body), 0)
        return body

    def overlay(self, out: bytearray | memoryview, lo: int, hi: int, dest: int) -> None:
        """Copy the patched bytes of chunk range [lo, hi) into `out` at `dest`."""
        for start, piece in self.pieces:
            a, b = max(start, lo), min(start + len(piece), hi)
            if a < b:
                out[dest + a - lo: dest + b - lo] = piece[a - start: b - start]


Chunk = bytearray | memoryview | Patch  # a dirty chunk: whole (as written, or built up) or a patch


def stacked(below: Chunk, above: Chunk) -> Chunk:
    """One chunk that reads as `above` written over `below` (a failed flush's chunk under a
    newer write)."""
    if not isinstance(above, Patch):
        return above
    if isinstance(below, Patch):
        for start, piece in above.pieces:
            below.put(start, piece)
        return below
    return above.onto(below)
