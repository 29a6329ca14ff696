"""Garbage collection: give back the disk space of dead chunk bodies (and of old change-log
entries: changelog.trim).

A chunk whose last reference goes loses its index entry at once, but its body stays in its
segment. A pass here (1) retires segments nobody appends to any more that hold no live chunk,
(2) compacts those that are mostly dead — copies their live records to this process's
segment and repoints the index, in one short transaction per segment — and retires them too,
and (3) deletes the files of segments retired longer ago than the grace period. The grace
period is what lets a reader that looked up a location just before the move still read it.
A body that staging found in a retired segment is copied back out when it is committed
(Store._rescue), so an upload racing a compaction loses nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from . import changelog
from .env import U64
from .errors import Corrupt, NoSpace
from .fsck import Progress
from .leases import process_start_time
from .records import CHUNK, SEGMENT_RETIRED, ChunkLocation, SegmentInfo
from .segments import HEADER
from .store import Store

DEFAULT_GRACE_SECONDS = 5.0
DEFAULT_DEAD_RATIO = 0.5
MOVE_BATCH = 64


@dataclass
class GcReport:
    retired: int = 0
    compacted: int = 0
    moved_bytes: int = 0
    deleted: int = 0
    freed_bytes: int = 0
    waiting: int = 0  # retired, still inside the grace period
    waiting_bytes: int = 0  # the size of those segments
    trimmed_changes: int = 0
    orphans_freed: int = 0  # files deleted while open in a process that has died since
    no_room: int = 0  # mostly-dead segments left for a later pass: the disk had no room

    @property
    def giving_back(self) -> bool:
        """Whether this pass freed disk space or the next ones will (segments holding bytes
        wait out their grace period): a write refused for want of room may soon fit."""
        return bool(self.freed_bytes or self.waiting_bytes)

    @property
    def changed(self) -> bool:
        """Whether the pass changed anything (what daemons log a line for)."""
        return bool(self.retired or self.deleted or self.trimmed_changes or self.orphans_freed)

    def summary(self) -> str:
        return (f"retired {self.retired} segments ({self.compacted} compacted, "
                f"{self.moved_bytes} live bytes moved), deleted {self.deleted} "
                f"freeing {self.freed_bytes} bytes, {self.waiting} waiting out the grace period, "
                f"trimmed {self.trimmed_changes} change-log entries, freed "
                f"{self.orphans_freed} orphans"
                + (f", {self.no_room} left uncompacted (disk full)" if self.no_room else ""))


IDLE_SEGMENT_SECONDS = 30.0  # no append for this long: a process's segment may be given up


def disk_tight(store: Store) -> bool:
    """Whether the disk under the store has less than twice the room gc keeps for itself."""
    st = os.statvfs(store.config.segments_dir)
    return st.f_bavail * st.f_frsize < 2 * store.gc_reserve()


def _dead_enough(live: int, size: int, dead_ratio: float) -> bool:
    """Whether a segment of `size` bytes holding `live` ones is worth compacting."""
    return size > 0 and 1 - live / size >= dead_ratio


def _owned(info: SegmentInfo) -> bool:
    return info.owner_pid != 0 and process_start_time(info.owner_pid) == info.owner_start


def collect(store: Store, *, grace: float = DEFAULT_GRACE_SECONDS,
            dead_ratio: float = DEFAULT_DEAD_RATIO,
            progress: Progress[SegmentInfo] | None = None) -> GcReport:
    """One pass. Safe beside other processes using the store (they may read a retired
    segment until the grace period ends; none appends to a segment it does not own)."""
    report = GcReport()
    # Ours, if idle and mostly dead: then it is a candidate below.
    _release_own_segment(store)
    now_ms = time.time_ns() // 1_000_000
    report.trimmed_changes = changelog.trim(store.env, now_ms)
    # Before the segments are weighed: an orphan's chunks become garbage here.
    report.orphans_freed = store.purge_orphans()
    with store.env.read() as tx:
        infos = [SegmentInfo.unpack(U64.unpack(k)[0], v) for k, v in tx.cursor(tx.db.segments)]
    sizes = store.segments.segment_sizes()
    current = store.segments.current()

    store.segments.forget({i.segment for i in infos if i.state == SEGMENT_RETIRED})
    for info in infos:
        if info.state != SEGMENT_RETIRED:
            continue
        if now_ms - info.retired_ms < grace * 1000:
            report.waiting += 1
            report.waiting_bytes += sizes.get(info.segment, 0)
            continue
        report.freed_bytes += store.segments.remove(info.segment)
        with store.env.write() as tx:
            tx.delete(tx.db.segments, U64.pack(info.segment))
        report.deleted += 1

    # Those with nothing live first: retiring them writes no segment; then the most dead,
    # which give back the most for what is moved. Moving live records needs room on the disk
    # (new data leaves Store.gc_reserve for it); when there is none, they wait for a later
    # pass, after the empty ones have been deleted (else a full disk could never be emptied).
    candidates = sorted((
        info for info in infos
        if info.state != SEGMENT_RETIRED and info.segment != current and not _owned(info)
        and (info.live == 0 or _dead_enough(info.live, sizes.get(info.segment, 0), dead_ratio))
    ), key=lambda info: info.live / max(1, sizes.get(info.segment, 0)))
    items: Iterable[SegmentInfo] = candidates
    if progress is not None:
        items = progress(candidates, len(candidates), "gc")
    for info in items:
        if info.live:
            if report.no_room:
                report.no_room += 1
                continue
            try:
                report.moved_bytes += _move_live_records(store, info.segment)
            except NoSpace:
                report.no_room += 1
                continue
            report.compacted += 1
        if _retire(store, info.segment, time.time_ns() // 1_000_000):
            report.retired += 1
            report.waiting += 1
            report.waiting_bytes += sizes.get(info.segment, 0)
    return report


def release_retired(store: Store) -> None:
    """Close this process's cached read handles (descriptors, maps) on retired segments, as a
    pass does first: a process that reads the store but leaves passes to another (a gateway's
    other server processes) would otherwise keep deleted segment files, and their space,
    alive. Also give up this process's own segment if it sits idle and mostly dead."""
    with store.env.read() as tx:
        infos = [SegmentInfo.unpack(U64.unpack(k)[0], v) for k, v in tx.cursor(tx.db.segments)]
    store.segments.forget({i.segment for i in infos if i.state == SEGMENT_RETIRED})
    _release_own_segment(store)


def _release_own_segment(store: Store) -> None:
    """This process's segment, if idle and mostly dead; on a nearly full disk at once: writes
    refused for want of room append nothing, so the segment they last filled would otherwise
    stay ours, and its dead bytes on the disk, while they keep trying."""
    release_idle_segment(store, 0.0 if disk_tight(store) else IDLE_SEGMENT_SECONDS)


def release_idle_segment(store: Store, idle: float = IDLE_SEGMENT_SECONDS,
                         dead_ratio: float = DEFAULT_DEAD_RATIO) -> bool:
    """The segment this process appends to, given up once idle for `idle` seconds if gc
    would then take it (at least `dead_ratio` of it dead); see LocalSegments.let_go_if_idle.
    Called by every gc pass and `release_retired`, so each process does it for its own."""
    def mostly_dead(segment: int, size: int) -> bool:
        with store.env.read() as tx:
            raw = tx.get(tx.db.segments, U64.pack(segment))
        live = SegmentInfo.unpack(segment, raw).live if raw is not None else 0
        return _dead_enough(live, size, dead_ratio)

    return store.segments.let_go_if_idle(idle, mostly_dead)


def _move_live_records(store: Store, segment: int) -> int:
    """Copy the records of `segment` that the index still points at into a live segment."""
    try:
        records = store.segments.scan(segment)
    except FileNotFoundError:
        return 0
    moved = 0
    for start in range(0, len(records), MOVE_BATCH):
        batch = records[start:start + MOVE_BATCH]
        with store.env.read() as tx:
            live = []
            for offset, digest, length in batch:
                raw = tx.get(tx.db.chunks, digest)
                if raw is not None and CHUNK.unpack(raw)[:2] == (segment, offset):
                    live.append((digest, ChunkLocation(segment, offset, length)))
        if not live:
            continue
        bodies = []
        for digest, location in list(live):
            try:
                bodies.append((digest, store.segments.read(location)))
            except Corrupt:
                # left in place (its segment keeps live bytes, so it is not retired);
                # fsck reports it and `repair` repoints it if an intact copy exists
                live.remove((digest, location))
        if not live:
            continue
        new_locations = store.segments.append(bodies)
        with store.env.write() as tx:
            for (digest, old), new in zip(live, new_locations):
                raw = tx.get(tx.db.chunks, digest)
                if raw is None:
                    continue  # died meanwhile; the copy is an orphan record
                seg, offset, length, refs = CHUNK.unpack(raw)
                if (seg, offset) != (old.segment, old.offset):
                    continue
                tx.put(tx.db.chunks, digest, CHUNK.pack(new.segment, new.offset, length, refs))
                size = length + HEADER.size
                tx.segment_deltas[old.segment] = tx.segment_deltas.get(old.segment, 0) - size
                tx.segment_deltas[new.segment] = tx.segment_deltas.get(new.segment, 0) + size
                moved += length
    return moved


def _retire(store: Store, segment: int, now_ms: int) -> bool:
    with store.env.write() as tx:
        raw = tx.get(tx.db.segments, U64.pack(segment))
        if raw is None:
            return False
        info = SegmentInfo.unpack(segment, raw)
        if info.live or info.state == SEGMENT_RETIRED or _owned(info):
            return False  # something new references it: keep it
        info.state, info.retired_ms = SEGMENT_RETIRED, now_ms
        tx.put(tx.db.segments, U64.pack(segment), info.pack())
        return True
