"""Page deltas: a chunk rewritten in a few whole pages is stored as those pages alone.

Rewriting a whole 64 KiB chunk for a random 4 KiB write cost the flush a disk read of the
stored body, then hashing, checksumming and appending 16 times the bytes written, and left a
dead 64 KiB body for compaction. When a flush finds a chunk written in whole pages, at most a
quarter of them, over a stored full-size body, it stores only those pages, as a chunk of their
own (content-addressed and counted like any other), and the chunk's slot in the chunk map
names both: base digest + delta digest. The slot keeps its reference to the base.

A delta body is a bitmap of the pages it holds, then those pages in order. The next partial
write to the chunk merges its pages into a new delta over the same base (reading the old
delta, never the base); once the pages would pass the limit the chunk is rewritten whole. So
a slot is a base and at most one delta, and reading a chunk never takes more than two records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .errors import Corrupt

PAGE = 4096
DIGEST = 32  # BLAKE3 digest length: a slot holds one (a full chunk) or two (base + delta)

Piece = bytes | bytearray | memoryview


def page_count(chunk_size: int) -> int:
    return chunk_size // PAGE


def max_pages(chunk_size: int) -> int:
    """Past this many pages a chunk is rewritten whole: a read of it would copy more of the
    delta than of the base, and the delta would no longer be small."""
    return page_count(chunk_size) // 4


def _bitmap_bytes(chunk_size: int) -> int:
    return max(1, page_count(chunk_size) // 8)


def split(slot: bytes | memoryview) -> tuple[bytes, bytes | None]:
    """A chunk-map value as (base digest, delta digest or None)."""
    if len(slot) == DIGEST:
        return bytes(slot), None
    if len(slot) == 2 * DIGEST:
        return bytes(slot[:DIGEST]), bytes(slot[DIGEST:])
    raise Corrupt(f"a chunk-map value is {len(slot)} bytes long")


def digests(slot: bytes | memoryview) -> tuple[bytes, ...]:
    """Every chunk a chunk-map value references (each holds one reference from it)."""
    base, delta = split(slot)
    return (base,) if delta is None else (base, delta)


def whole_pages(ranges: Sequence[tuple[int, Piece]]) -> dict[int, Piece] | None:
    """The pages that writes at (offset in the chunk, bytes) cover, or None if one of them
    covers part of a page (its other bytes would have to come from the base)."""
    pages: dict[int, Piece] = {}
    for start, data in ranges:
        if start % PAGE or len(data) % PAGE:
            return None
        view = memoryview(data)
        for at in range(0, len(view), PAGE):
            pages[(start + at) // PAGE] = view[at:at + PAGE]
    return pages


def encode(pages: Mapping[int, Piece], chunk_size: int) -> bytes:
    bits = 0
    for page in pages:
        bits |= 1 << page
    return b"".join([bits.to_bytes(_bitmap_bytes(chunk_size), "big"),
                     *(pages[page] for page in sorted(pages))])


def decode(body: Piece, chunk_size: int) -> dict[int, memoryview]:
    """A delta body's pages by page number."""
    head = _bitmap_bytes(chunk_size)
    bits = int.from_bytes(body[:head], "big")
    view = memoryview(body)
    pages: dict[int, memoryview] = {}
    at = head
    for page in range(page_count(chunk_size)):
        if bits >> page & 1:
            pages[page] = view[at:at + PAGE]
            at += PAGE
    if at != len(view) or bits >> page_count(chunk_size):
        raise Corrupt("a page delta's length does not match its bitmap")
    return pages


def lay(out: bytearray | memoryview, body: Piece, chunk_size: int) -> None:
    """Lay a delta's pages over `out`, which holds the base."""
    for page, data in decode(body, chunk_size).items():
        out[page * PAGE:(page + 1) * PAGE] = data
