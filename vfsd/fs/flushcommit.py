"""What a flush of the write-back cache does in its worker thread: lay patches onto the
stored chunks and commit them, with the size and the fsync journal's marks, in one call."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import NamedTuple

from vfsd.store import Store
from vfsd.store.journal import Journal

from .patch import Chunk, Patch

# Base buffers a flush holds at once, laid on and committed a slice at a time: a byte count,
# since a patch of 4 MiB chunks holds 64 times the base of one of 64 KiB. Bases are memory
# outside the cache's bound, a slice per flush running (writeback.BATCHES_IN_FLIGHT batches,
# plus other files' flushes, up to one per worker): at 64 MiB, random 4 KiB writes took a
# 256 MiB cache's daemon to 460-510 MiB; at 16 MiB with one malloc arena (vfsd/tunables.py),
# 340-370 (the bound is the cache + 150 MiB), and the extra commits cost nothing measurable.
PATCH_SLICE_BYTES = 16 << 20


class Taken(NamedTuple):
    """Chunks taken from `dirty` for one commit, and what goes with them."""
    chunks: dict[int, Chunk]
    size: int | None  # the file's exact size, when they are all its dirty chunks
    grow_to: int  # else the size grows over them to at most this
    includes: int  # the file's newest journal set when they were taken: their bytes hold it
    replacing: bool  # the commit drops the file's old chunks (a deferred O_TRUNC)


def commit_flush(store: Store, ino: int, taken: Taken, mtime_ns: int, ctime_ns: int,
                 journal: Journal | None, covers: int) -> dict[int, bytearray]:
    """In a worker thread: lay patches onto their stored chunks, then commit every chunk and
    the size at once. The mount holds the file's lease and flushes of one file are serialised,
    so the stored chunk cannot change between the base read and the commit. Returns the
    chunks that were written in part, as now stored (the last slice at most). `covers`: the
    newest journal set whose writes are all in `taken` (0: not all of them are).

    More than PATCH_SLICE_BYTES of patched chunks are laid on their bases and committed a
    slice at a time, each commit growing the size only over its own chunks (as a background
    batch does), so the base buffers of a flush of many small writes stay bounded; the last
    commit carries the rest and the size."""
    snapshot, size, grow_to = taken.chunks, taken.size, taken.grow_to
    replacing = taken.replacing  # made by the first commit below
    patches = sorted(i for i, chunk in snapshot.items() if isinstance(chunk, Patch))
    contents: dict[int, bytes | bytearray | memoryview] = {
        i: chunk for i, chunk in snapshot.items() if not isinstance(chunk, Patch)}
    extent = size if size is not None else grow_to
    per_slice = max(1, PATCH_SLICE_BYTES // store.chunk_size)

    def marked(chunks: Iterable[int], covering: int = 0) -> contextlib.AbstractContextManager[None]:
        if journal is None:
            return contextlib.nullcontext()
        return journal.committing(ino, chunks, covers=covering, includes=taken.includes)

    while len(patches) > per_slice:
        part, patches = patches[:per_slice], patches[per_slice:]
        with marked(part):
            store.write_chunks(ino, _laid(store, ino, snapshot, part), size=None,
                               grow_to=min(extent, (part[-1] + 1) * store.chunk_size),
                               mtime_ns=mtime_ns or None, ctime_ns=ctime_ns or None,
                               replacing=replacing)
        replacing = False
    contents.update(_laid(store, ino, snapshot, patches))
    with marked(contents, covers):
        store.write_chunks(ino, contents, size=size, grow_to=grow_to, mtime_ns=mtime_ns or None,
                           ctime_ns=ctime_ns or None, replacing=replacing)
    return {i: c for i, c in contents.items() if isinstance(c, bytearray)}


def _laid(store: Store, ino: int, snapshot: dict[int, Chunk], patched: list[int]
          ) -> dict[int, bytes | bytearray | memoryview]:
    """The whole chunks that these patches make, laid on the stored ones."""
    if not patched:
        return {}
    bases = store.read_chunks(ino, patched)  # buffers of our own: patched in place
    laid: dict[int, bytes | bytearray | memoryview] = {}
    for i in patched:
        patch = snapshot[i]
        assert isinstance(patch, Patch)
        laid[i] = patch.laid_on(bases[i]) if i in bases else patch.onto(b"")
    return laid
