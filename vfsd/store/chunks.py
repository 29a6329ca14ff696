"""Chunks: content-addressed (BLAKE3), deduplicated by reference count, zeros never stored.

Staging (hash, look up, append missing bodies, fdatasync) happens outside any write
transaction; `set_chunk` then points a file's chunk slot at a staged chunk inside one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import blake3

from .env import Environment, Tx
from .errors import Corrupt, NoSpace
from .records import CHUNK, ChunkLocation, chunk_key
from .segments import HEADER, SegmentStore

PHYSICAL = b"physical_bytes"  # bodies stored once each (after dedup)
LOGICAL = b"logical_bytes"  # bodies as referenced by files (before dedup)
QUOTA = b"quota"  # meta: the pool's configured size (Store.set_quota)
STAGE_GROUP = 64  # bodies per hash/lookup/append step: one 4 MiB staging buffer of 64 KiB chunks


def chunk_hash(data: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(data).digest()


class ZeroTest:
    """`is_zero(data)` compares against a cached zero buffer: ~1 µs for 64 KiB."""

    def __init__(self, chunk_size: int):
        self._zeros = bytes(chunk_size)

    def __call__(self, data: bytes | bytearray | memoryview) -> bool:
        if type(data) is memoryview and data.ndim == 1 and data.format == "B" and data.contiguous:
            # `memoryview == bytes` compares item by item in Python (~200 µs for 64 KiB of
            # zeros); bytes.startswith takes the buffer and memcmp's it (~1.4 µs). Same answer:
            # true exactly when data is all zeros and no longer than a chunk.
            return self._zeros.startswith(data)
        n = len(data)
        if n == len(self._zeros):
            return data == self._zeros
        return data == self._zeros[:n]


@dataclass(frozen=True, slots=True)
class StagedChunk:
    """A body that is durable in a segment (new or found), ready to be referenced."""

    digest: bytes
    location: ChunkLocation


def lookup(tx: Tx, digest: bytes) -> tuple[ChunkLocation, int] | None:
    raw = tx.get(tx.db.chunks, digest)
    if raw is None:
        return None
    segment, offset, length, refs = CHUNK.unpack(raw)
    return ChunkLocation(segment, offset, length), refs


def stage(
    env: Environment,
    segments: SegmentStore,
    bodies: Iterable[bytes | bytearray | memoryview],
    capacity_left: int | None = None,
) -> list[StagedChunk]:
    """Hash non-zero bodies and make each durable somewhere: an existing chunk or a new record.

    No write transaction is held. Bodies go a group at a time (hash, look up, append), so the
    disk writes one group while the next is hashed; they are durable once all are appended.
    If a found chunk dies before the caller commits, its old location is still valid:
    compaction only retires segments after a grace period. NoSpace may come after some groups
    were written: those records are orphans, which gc reclaims.
    """
    pending = list(bodies)
    staged: dict[bytes, StagedChunk] = {}
    order: list[bytes] = []
    left = capacity_left
    # Bodies are written as given (no copy): callers hand over buffers they no longer change
    # (the mount's flush snapshot, a write's own read-modify-write buffers).
    with segments.appending() as appender:
        for start in range(0, len(pending), STAGE_GROUP):
            group = [(chunk_hash(body), body) for body in pending[start:start + STAGE_GROUP]]
            order += [digest for digest, _ in group]
            missing: dict[bytes, bytes | bytearray | memoryview] = {}
            with env.read() as tx:
                for digest, body in group:
                    if digest in staged or digest in missing:
                        continue
                    found = lookup(tx, digest)
                    if found is None:
                        missing[digest] = body
                    else:
                        staged[digest] = StagedChunk(digest, found[0])
            if left is not None:
                left -= sum(len(b) + HEADER.size for b in missing.values())
                if left < 0:
                    raise NoSpace("the storage pool is full")
            for digest, location in zip(missing, appender.add(list(missing.items()))):
                staged[digest] = StagedChunk(digest, location)
    return [staged[digest] for digest in order]


def check_pool(tx: Tx) -> None:
    """Inside a write transaction, before it commits: NoSpace if it indexes new bodies past
    the quota. Staging checks each batch against the quota, but a call staging several batches
    (replace, PUT) or racing another writer can only be judged at commit; raising here aborts
    the transaction, so nothing becomes visible (the staged bodies are orphans for gc)."""
    if tx.deltas.get(PHYSICAL, 0) <= 0:
        return
    limit = quota(tx)
    if limit is not None and tx.counter(PHYSICAL) > limit:
        raise NoSpace("the storage pool is full")


def quota(tx: Tx) -> int | None:
    """The pool's configured size, if one is set."""
    raw = tx.get(tx.db.meta, QUOTA)
    return int.from_bytes(raw, "big") if raw is not None else None


def incref(tx: Tx, chunk: StagedChunk) -> None:
    raw = tx.get(tx.db.chunks, chunk.digest)
    if raw is None:
        loc = chunk.location
        if tx.rescue is not None and tx.segment_retired(loc.segment):
            loc = tx.rescue(tx, loc)  # staged from a chunk that died and was compacted meanwhile
        tx.put(tx.db.chunks, chunk.digest, CHUNK.pack(loc.segment, loc.offset, loc.length, 1))
        tx.add(PHYSICAL, loc.length)
        tx.segment_deltas[loc.segment] = (
            tx.segment_deltas.get(loc.segment, 0) + loc.length + HEADER.size
        )
    else:
        segment, offset, length, refs = CHUNK.unpack(raw)
        tx.put(tx.db.chunks, chunk.digest, CHUNK.pack(segment, offset, length, refs + 1))
    tx.add(LOGICAL, chunk.location.length)


def decref(tx: Tx, digest: bytes) -> int:
    """Drop one reference; returns the body's length."""
    raw = tx.get(tx.db.chunks, digest)
    if raw is None:
        raise Corrupt(f"chunk {digest.hex()} is referenced but not indexed")
    segment, offset, length, refs = CHUNK.unpack(raw)
    tx.add(LOGICAL, -length)
    if refs > 1:
        tx.put(tx.db.chunks, digest, CHUNK.pack(segment, offset, length, refs - 1))
        return length
    # The body stays in its segment until compaction; only the index entry goes.
    tx.delete(tx.db.chunks, digest)
    tx.add(PHYSICAL, -length)
    tx.segment_deltas[segment] = tx.segment_deltas.get(segment, 0) - length - HEADER.size
    return length


def set_chunk(tx: Tx, ino: int, index: int, chunk: StagedChunk | None) -> int:
    """Point slot `index` of `ino` at `chunk` (None makes a hole).

    Returns the change in bytes the file's chunks hold, for the inode's `stored` count."""
    key = chunk_key(ino, index)
    old = tx.get(tx.db.chunkmap, key)
    new = chunk.digest if chunk is not None else None
    if old == new:
        return 0
    delta = 0
    if chunk is not None:
        incref(tx, chunk)
        tx.put(tx.db.chunkmap, key, chunk.digest)
        delta += chunk.location.length
    else:
        tx.delete(tx.db.chunkmap, key)
    if old is not None:
        delta -= decref(tx, old)
    return delta


def chunk_map(tx: Tx, ino: int) -> Iterator[tuple[bytes, bytes]]:
    """(chunk index as 8 big-endian bytes, digest) of each stored chunk of `ino`, in order."""
    cursor = tx.cursor(tx.db.chunkmap)
    prefix = chunk_key(ino, 0)[:8]
    if cursor.set_range(prefix):
        for key, digest in cursor:
            if key[:8] != prefix:
                return
            yield key[8:], digest


def freed_by_dropping(tx: Tx, ino: int) -> int:
    """The pool bytes that dropping every chunk of `ino` would give back: the bodies that
    only `ino` references (once per body, however many of its slots hold it)."""
    held: dict[bytes, int] = {}
    for _, digest in chunk_map(tx, ino):
        held[digest] = held.get(digest, 0) + 1
    freed = 0
    for digest, count in held.items():
        raw = tx.get(tx.db.chunks, digest)
        if raw is not None:
            _, _, length, refs = CHUNK.unpack(raw)
            if refs <= count:
                freed += length
    return freed


def drop_chunks_from(tx: Tx, ino: int, first_index: int, stop_index: int | None = None) -> int:
    """Remove the chunk slots of `ino` in [first_index, stop_index) (truncate, delete, punch).

    Returns the (negative) change in bytes the file's chunks hold."""
    cursor = tx.cursor(tx.db.chunkmap)
    prefix = chunk_key(ino, 0)[:8]
    stop_key = chunk_key(ino, stop_index) if stop_index is not None else None
    delta = 0
    if not cursor.set_range(chunk_key(ino, first_index)):
        return delta
    while cursor.key()[:8] == prefix and (stop_key is None or cursor.key() < stop_key):
        delta -= decref(tx, cursor.value())
        if not cursor.delete():
            break
    return delta


def copy_chunks(tx: Tx, src: int, dst: int) -> int:
    """Give `dst` the chunk map of `src` by reference (clones, snapshots, CopyObject): no
    bytes move. One index update per distinct chunk, the map written in key order (appended
    when `dst` is the newest inode): snapshots and clones cost ~0.1-0.2 s per GiB mapped.

    Returns the bytes `dst`'s chunks now hold."""
    drop_chunks_from(tx, dst, 0)
    dst_prefix = chunk_key(dst, 0)[:8]
    entries: list[tuple[bytes, bytes]] = []
    uses: dict[bytes, int] = {}
    for index, digest in chunk_map(tx, src):
        entries.append((dst_prefix + index, digest))
        uses[digest] = uses.get(digest, 0) + 1
    if not entries:
        return 0
    get, put, db = tx.txn.get, tx.txn.put, tx.db.chunks
    stored = 0
    for digest in sorted(uses):  # key order: neighbouring pages, fewer dirtied
        raw = get(digest, db=db)
        if raw is None:
            raise Corrupt(f"chunk {digest.hex()} is referenced but not indexed")
        segment, offset, length, refs = CHUNK.unpack(raw)
        put(digest, CHUNK.pack(segment, offset, length, refs + uses[digest]), db=db)
        stored += length * uses[digest]
    tx.add(LOGICAL, stored)
    cursor = tx.cursor(tx.db.chunkmap)
    append = not cursor.last() or cursor.key()[:8] < dst_prefix
    cursor.putmulti(entries, append=append)
    return stored
