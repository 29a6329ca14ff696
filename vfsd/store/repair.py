"""Repair (`vfsd fsck --repair`): rebuild everything derived from the chunk maps and the tree.

The chunk maps and directory entries are the truth; the rest is rebuilt from them:
- directory cookies (readdir order) from the entries; entries naming a missing inode go;
- chunk-map entries of missing inodes, of non-files and past a file's end go;
- a chunk-map entry whose chunk is not indexed is first looked for in the segment files (a
  record whose body hashes to the name is indexed again); if no such record exists the slot
  becomes a hole and the file is reported as damaged, with its paths;
- a chunk whose record is gone (its segment file missing, or cut short before the record's
  end) is repointed at an intact copy in another record if one exists, else it is lost: the
  slots naming it become holes and the files are reported as damaged, with their paths;
- a chunk whose body is there but fails its CRC or hash is repointed at an intact copy if one
  exists, else left in place (reads of it fail with Corrupt, EIO on the mount: the bytes may
  still matter to someone) and reported with the paths of the files using it;
- reference counts, unreferenced index entries, per-inode `stored` bytes, nlink, the physical
  and logical byte counters, segment live bytes, and the S3 key index.
Then one gc pass reclaims orphan and dead segment bytes.

Transactions: chunk bodies are verified and segment files scanned outside any transaction
(reads only); then one write transaction re-reads the index and makes every change, so a crash
leaves the store as it was before or fully repaired (LMDB commits atomically). That
transaction holds the write lock for the time of a pass over the index (seconds per million
chunks): other writers wait, readers do not. gc then runs as usual (short transactions).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from . import changelog, gc, multipart, namespace
from .chunks import LOGICAL, PHYSICAL, chunk_hash
from .env import U64, Tx
from .errors import Corrupt
from .fsck import Progress, _expected_keys, files_using, no_progress, paths_of
from .records import (
    CHUNK,
    DIRENT,
    SEGMENT_RETIRED,
    ChangeOp,
    ChunkLocation,
    Inode,
    SegmentInfo,
)
from .segments import HEADER
from .store import Store


@dataclass
class DamagedFile:
    ino: int
    paths: list[str]
    lost_chunks: list[int]  # chunk indexes that are now holes (read as zeros)
    lost_bytes: int  # bytes of the file's size those chunks covered

    def describe(self) -> str:
        where = ", ".join(self.paths) or f"<inode {self.ino}, no name>"
        return (f"{where}: {len(self.lost_chunks)} chunk(s) lost ({self.lost_bytes} bytes "
                f"now read as zeros)")


@dataclass
class RepairReport:
    fixed: list[str] = field(default_factory=list)  # one line per kind of repair done
    damaged: list[DamagedFile] = field(default_factory=list)  # data lost, now holes
    corrupt: dict[str, list[str]] = field(default_factory=dict)  # digest hex -> paths
    recovered: int = 0  # chunks indexed again from intact segment records
    gc: gc.GcReport | None = None

    @property
    def data_lost(self) -> bool:
        return bool(self.damaged or self.corrupt)

    def summary(self) -> str:
        lines = [f"repaired: {line}" for line in self.fixed]
        lines += [f"lost data: {d.describe()}" for d in self.damaged]
        lines += [f"corrupt chunk {digest[:16]} (reads fail with EIO), used by "
                  f"{', '.join(paths) or 'no file'}" for digest, paths in self.corrupt.items()]
        if self.gc is not None:
            lines.append(f"gc: {self.gc.summary()}")
        lines.append("nothing to repair" if not self.fixed and not self.data_lost else
                     f"{len(self.fixed)} kind(s) of repair, {len(self.damaged)} damaged "
                     f"file(s), {len(self.corrupt)} corrupt chunk(s)")
        return "\n".join(lines)


def repair(store: Store, progress: Progress = no_progress, *, grace: float = gc.DEFAULT_GRACE_SECONDS,
           dead_ratio: float = gc.DEFAULT_DEAD_RATIO) -> RepairReport:
    """Repair the store in place (see the module docstring for what and how)."""
    report = RepairReport()
    # 1. outside any transaction: verify every indexed body, find what is missing
    with store.env.read() as tx:
        indexed = {bytes(d): ChunkLocation(*CHUNK.unpack(raw)[:3])
                   for d, raw in tx.cursor(tx.db.chunks)}
        referenced = {bytes(d) for d in tx.cursor(tx.db.chunkmap).iternext(keys=False)}
        referenced |= set(multipart.chunk_references(tx))  # parts of unfinished uploads
        retired = {U64.unpack(k)[0] for k, raw in tx.cursor(tx.db.segments)
                   if SegmentInfo.unpack(U64.unpack(k)[0], bytes(raw)).state == SEGMENT_RETIRED}
    bad: dict[bytes, ChunkLocation] = {}
    for digest, location in progress(list(indexed.items()), len(indexed), "verify"):
        if not _intact(store, digest, location):
            bad[digest] = location
    sizes = store.segments.segment_sizes()
    gone = {digest for digest, location in bad.items()
            if location.offset + location.length > sizes.get(location.segment, 0)}
    wanted = (referenced - indexed.keys()) | bad.keys()
    found = _find_records(store, wanted, retired, progress) if wanted else {}

    # 2. one write transaction: rebuild from the chunk maps and the entries
    with store.env.write() as tx:
        _fix_entries(tx, store, report)
        _fix_chunks(tx, store, report, bad, gone, found)
        _fix_keys(tx, report)
    # 3. reclaim what is dead now (short transactions of their own)
    report.gc = gc.collect(store, grace=grace, dead_ratio=dead_ratio)
    return report


def _intact(store: Store, digest: bytes, location: ChunkLocation) -> bool:
    try:
        body = store.segments.read(location)
    except Corrupt:
        return False
    return chunk_hash(body) == digest


def _find_records(store: Store, wanted: set[bytes], retired: set[int],
                  progress: Progress) -> dict[bytes, ChunkLocation]:
    """Intact records of `wanted` digests in live segment files."""
    found: dict[bytes, ChunkLocation] = {}
    segments = sorted(set(store.segments.segment_sizes()) - retired)
    for segment in progress(segments, len(segments), "scan segments"):
        try:
            records = store.segments.scan(segment)
        except FileNotFoundError:
            continue
        for offset, digest, length in records:
            digest = bytes(digest)
            if digest in wanted and digest not in found:
                location = ChunkLocation(segment, offset, length)
                if _intact(store, digest, location):
                    found[digest] = location
    return found


def _fix_entries(tx: Tx, store: Store, report: RepairReport) -> None:
    """Directory entries against inodes, cookies against entries, nlink against entries."""
    dangling = []
    cookies: dict[bytes, bytes] = {}
    links: Counter[int] = Counter()
    subdirs: Counter[int] = Counter()
    for key, raw in tx.cursor(tx.db.dirents):
        key = bytes(key)
        ino, cookie, _mode = DIRENT.unpack(raw)
        child = tx.get(tx.db.inodes, U64.pack(ino))
        if child is None:
            dangling.append(key)
            continue
        cookies[key[:8] + U64.pack(cookie)] = key[8:]
        links[ino] += 1
        if Inode.unpack(ino, child).is_dir:
            subdirs[U64.unpack(key[:8])[0]] += 1
    for key in dangling:
        tx.delete(tx.db.dirents, key)
    if dangling:
        report.fixed.append(f"removed {len(dangling)} entries naming missing inodes")
    stale = []
    for key, name in tx.cursor(tx.db.dircookies):
        key = bytes(key)
        if cookies.pop(key, None) != name:
            stale.append(key)
    for key in stale:
        tx.delete(tx.db.dircookies, key)
    for key, name in cookies.items():
        tx.put(tx.db.dircookies, key, name)
    if stale or cookies:
        report.fixed.append(f"directory cookies: {len(cookies)} restored, {len(stale)} removed")
    orphans = {U64.unpack(k)[0] for k in tx.cursor(tx.db.orphans).iternext(values=False)}
    fixed = []
    for key, raw in tx.cursor(tx.db.inodes):
        inode = Inode.unpack(U64.unpack(key)[0], bytes(raw))
        expected = 2 + subdirs[inode.ino] if inode.is_dir else links[inode.ino]
        if inode.nlink != expected and (expected or inode.ino in orphans or inode.is_dir):
            inode.nlink = expected
            fixed.append(inode)
    for inode in fixed:
        namespace.put_inode(tx, inode)
    if fixed:
        report.fixed.append(f"link counts of {len(fixed)} inodes")


def _fix_chunks(tx: Tx, store: Store, report: RepairReport, bad: dict[bytes, ChunkLocation],
                gone: set[bytes], found: dict[bytes, ChunkLocation]) -> None:
    cs = store.chunk_size
    # chunk index entries re-found in segments, or repointed at an intact copy
    for digest, location in found.items():
        raw = tx.get(tx.db.chunks, digest)
        if raw is not None and digest not in bad:
            continue
        count = CHUNK.unpack(raw)[3] if raw else 0
        tx.put(tx.db.chunks, digest,
               CHUNK.pack(location.segment, location.offset, location.length, count))
        report.recovered += 1
    if report.recovered:
        report.fixed.append(f"{report.recovered} chunks indexed again from intact segment "
                            "records")
    for digest in gone - found.keys():  # no bytes left anywhere: lost, holes below
        tx.delete(tx.db.chunks, digest)
    dropped = multipart.drop_uploads_missing_chunks(tx)
    if dropped:
        report.fixed.append(f"dropped {len(dropped)} unfinished multipart upload(s) whose "
                            f"parts lost data: {', '.join(dropped)}")
    # the chunk maps: count references, drop entries that cannot stand
    refs: Counter[bytes] = Counter()
    stored: Counter[int] = Counter()
    lost: dict[int, list[int]] = {}
    invalid = []
    inodes: dict[int, Inode | None] = {}
    for raw_key, raw_digest in tx.cursor(tx.db.chunkmap):
        key, digest = bytes(raw_key), bytes(raw_digest)
        ino, index = U64.unpack(key[:8])[0], U64.unpack(key[8:])[0]
        if ino not in inodes:
            raw_inode = tx.get(tx.db.inodes, key[:8])
            inodes[ino] = Inode.unpack(ino, bytes(raw_inode)) if raw_inode is not None else None
        inode = inodes[ino]
        if inode is None or not inode.is_file or index * cs >= inode.size:
            invalid.append(key)
            continue
        raw_chunk = tx.get(tx.db.chunks, digest)
        if raw_chunk is None:
            invalid.append(key)
            lost.setdefault(ino, []).append(index)
            continue
        refs[digest] += 1
        stored[ino] += CHUNK.unpack(raw_chunk)[2]
    for digest in multipart.chunk_references(tx):  # parts of unfinished uploads hold refs too
        refs[digest] += 1
    for key in invalid:
        tx.delete(tx.db.chunkmap, key)
    if len(invalid) > sum(map(len, lost.values())):
        report.fixed.append(f"removed {len(invalid) - sum(map(len, lost.values()))} chunk-map "
                            "entries of missing inodes, non-files or past a file's end")
    if lost:
        paths = paths_of(tx, set(lost))
        for ino, indexes in sorted(lost.items()):
            inode = inodes[ino]
            assert inode is not None
            lost_bytes = sum(min(cs, inode.size - i * cs) for i in indexes)
            report.damaged.append(DamagedFile(ino, paths[ino], indexes, lost_bytes))
            changelog.record(tx, store.origin, ChangeOp.DATA, ino)
        report.fixed.append(f"{sum(map(len, lost.values()))} chunk-map entries naming lost "
                            f"chunks made holes in {len(lost)} file(s)")
    # the chunk index: reference counts, counters, live bytes per segment
    wrong_refs, unreferenced = [], []
    live: Counter[int] = Counter()
    physical = logical = 0
    for raw_digest, raw_value in tx.cursor(tx.db.chunks):
        digest = bytes(raw_digest)
        segment, offset, length, count = CHUNK.unpack(raw_value)
        if refs[digest] == 0:
            unreferenced.append(digest)
            continue
        if count != refs[digest]:
            wrong_refs.append((digest, CHUNK.pack(segment, offset, length, refs[digest])))
        live[segment] += length + HEADER.size
        physical += length
        logical += length * refs[digest]
    for digest in unreferenced:
        tx.delete(tx.db.chunks, digest)
    for digest, value in wrong_refs:
        tx.put(tx.db.chunks, digest, value)
    if unreferenced:
        report.fixed.append(f"dropped {len(unreferenced)} unreferenced chunk index entries")
    if wrong_refs:
        report.fixed.append(f"reference counts of {len(wrong_refs)} chunks")
    still_bad = {d for d in bad if d not in found and refs[d]}
    if still_bad:
        report.corrupt = {d.hex(): paths for d, paths in files_using(tx, still_bad).items()}
    _set_counter(tx, report, PHYSICAL, physical, "physical byte counter")
    _set_counter(tx, report, LOGICAL, logical, "logical byte counter")
    # per inode stored bytes
    wrong_stored = []
    for raw_key, raw_value in tx.cursor(tx.db.inodes):
        inode = Inode.unpack(U64.unpack(raw_key)[0], bytes(raw_value))
        if inode.stored != stored.get(inode.ino, 0):
            inode.stored = stored.get(inode.ino, 0)
            wrong_stored.append(inode)
    for inode in wrong_stored:
        namespace.put_inode(tx, inode)
    if wrong_stored:
        report.fixed.append(f"stored-byte counts of {len(wrong_stored)} inodes")
    # segments
    changed = []
    known = set()
    for raw_key, raw_value in tx.cursor(tx.db.segments):
        info = SegmentInfo.unpack(U64.unpack(raw_key)[0], bytes(raw_value))
        known.add(info.segment)
        want = live.get(info.segment, 0)
        if info.live != want or (want and info.state == SEGMENT_RETIRED):
            info.live = want
            if want:
                info.state, info.retired_ms = 0, 0  # live chunks: it must not be deleted
            changed.append(info)
    changed += [SegmentInfo(seg, n, 0, 0) for seg, n in live.items() if seg not in known]
    for info in changed:
        tx.put(tx.db.segments, U64.pack(info.segment), info.pack())
    if changed:
        report.fixed.append(f"live-byte counts of {len(changed)} segments")


def _set_counter(tx: Tx, report: RepairReport, name: bytes, value: int, what: str) -> None:
    if tx.counter(name) != value:
        report.fixed.append(f"{what}: {tx.counter(name)} -> {value}")
        tx.put(tx.db.meta, name, U64.pack(value))


def _fix_keys(tx: Tx, report: RepairReport) -> None:
    """The S3 key index, rebuilt from the tree."""
    expected = dict(_expected_keys(tx, {}))
    wrong = []
    for key, raw in tx.cursor(tx.db.keys):
        key = bytes(key)
        want = expected.pop(key, None)
        if want != U64.unpack(raw)[0]:
            wrong.append((key, want))
    for key, want in wrong:
        if want is None:
            tx.delete(tx.db.keys, key)
        else:
            tx.put(tx.db.keys, key, U64.pack(want))
    for key, ino in expected.items():
        tx.put(tx.db.keys, key, U64.pack(ino))
    if wrong or expected:
        report.fixed.append(f"key index: {len(expected)} keys restored, {len(wrong)} wrong "
                            "corrected")
