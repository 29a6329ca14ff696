"""fsck: check every invariant the store relies on, without changing anything.

Runs in one read transaction (a batch tool: it pins old pages while it runs, which is fine for
minutes, not for a daemon). Segment bodies are read and their CRC and BLAKE3 name checked.
"""

from __future__ import annotations

import stat
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from . import multipart, namespace
from .chunks import LOGICAL, PHYSICAL, chunk_hash
from .env import U64, Tx
from .errors import Corrupt
from .names import is_bucket_name
from .records import (
    CHUNK,
    DIRENT,
    ROOT_INO,
    SEGMENT_RETIRED,
    ChunkLocation,
    Inode,
    SegmentInfo,
)
from .segments import HEADER, MAGIC
from .store import Store

T = TypeVar("T")
Progress = Callable[[Iterable[T], int, str], Iterable[T]]


def no_progress(items: Iterable[T], total: int, label: str) -> Iterable[T]:
    return items


@dataclass
class FsckReport:
    damage: list[str] = field(default_factory=list)
    inodes: int = 0
    files: int = 0
    directories: int = 0
    chunks: int = 0
    chunk_refs: int = 0
    segments: int = 0
    segment_bytes: int = 0
    live_bytes: int = 0
    keys: int = 0

    @property
    def orphan_bytes(self) -> int:
        return self.segment_bytes - self.live_bytes

    @property
    def clean(self) -> bool:
        return not self.damage

    def summary(self) -> str:
        state = "clean" if self.clean else f"{len(self.damage)} problem(s)"
        return (f"{state}: {self.inodes} inodes ({self.files} files, {self.directories} dirs), "
                f"{self.chunks} chunks, {self.chunk_refs} references, {self.keys} keys, "
                f"{self.segments} segments, {self.orphan_bytes} unreferenced bytes")


def check(store: Store, progress: Progress = no_progress) -> FsckReport:
    report = FsckReport()
    bad = report.damage.append
    with store.env.read() as tx:
        inodes: dict[int, Inode] = {}
        for key, raw in progress(tx.cursor(tx.db.inodes), tx.entries(tx.db.inodes), "inodes"):
            ino = U64.unpack(key)[0]
            inodes[ino] = inode = Inode.unpack(ino, raw)
            report.files += inode.is_file
            report.directories += inode.is_dir
        report.inodes = len(inodes)
        if ROOT_INO not in inodes:
            bad("the root directory is missing")
        links: Counter[int] = Counter()
        subdirs: Counter[int] = Counter()
        cookies = {}
        for key, raw in progress(tx.cursor(tx.db.dirents), tx.entries(tx.db.dirents), "entries"):
            parent, name = U64.unpack(key[:8])[0], bytes(key[8:])
            ino, cookie, mode_type = DIRENT.unpack(raw)
            cookies[(parent, cookie)] = name
            where = f"entry {name!r} in {parent}"
            if parent not in inodes or not inodes[parent].is_dir:
                bad(f"{where}: the parent is not a directory")
            child = inodes.get(ino)
            if child is None:
                bad(f"{where}: points at missing inode {ino}")
                continue
            if stat.S_IFMT(child.mode) != mode_type:
                bad(f"{where}: type bits disagree with inode {ino}")
            links[ino] += 1
            if child.is_dir:
                subdirs[parent] += 1
                if child.parent != parent or child.name != name:
                    bad(f"directory {ino}: parent/name {child.parent}/{child.name!r} "
                        f"disagree with {where}")
        for key, name in tx.cursor(tx.db.dircookies):
            parent, cookie = U64.unpack(key[:8])[0], U64.unpack(key[8:])[0]
            if cookies.pop((parent, cookie), None) != name:
                bad(f"directory {parent}: cookie {cookie} names {name!r} with no such entry")
        for (parent, cookie), name in cookies.items():
            bad(f"entry {name!r} in {parent}: cookie {cookie} is not indexed")
        orphans = {U64.unpack(k)[0] for k in tx.cursor(tx.db.orphans).iternext(values=False)}
        for ino, inode in inodes.items():
            if inode.is_dir:
                expected = 2 + subdirs[ino]
                if ino != ROOT_INO and links[ino] != 1:
                    bad(f"directory {ino} has {links[ino]} entries pointing at it")
            else:
                expected = links[ino]
                if expected == 0 and ino not in orphans:
                    bad(f"inode {ino} is unreachable and not an orphan")
            if inode.nlink != expected:
                bad(f"inode {ino} has nlink {inode.nlink}, expected {expected}")
            if inode.is_symlink and tx.get(tx.db.symlinks, key_of(ino)) is None:
                bad(f"symlink {ino} has no target")

        refs: Counter[bytes] = Counter()
        stored: Counter[int] = Counter()
        cs = store.chunk_size
        entries = tx.entries(tx.db.chunkmap)
        for key, digest in progress(tx.cursor(tx.db.chunkmap), entries, "chunk map"):
            ino, index = U64.unpack(key[:8])[0], U64.unpack(key[8:])[0]
            owner = inodes.get(ino)
            if owner is None or not owner.is_file:
                bad(f"chunk map entry for missing or non-file inode {ino}")
            elif index * cs >= owner.size:
                bad(f"inode {ino} has chunk {index} past its size {owner.size}")
            refs[bytes(digest)] += 1
            raw = tx.get(tx.db.chunks, digest)
            stored[ino] += CHUNK.unpack(raw)[2] if raw else 0
        # Parts of unfinished multipart uploads hold references too.
        for digest in multipart.chunk_references(tx):
            refs[digest] += 1
        for ino, inode in inodes.items():
            if inode.stored != stored.get(ino, 0):
                bad(f"inode {ino} counts {inode.stored} stored bytes, its chunks hold "
                    f"{stored.get(ino, 0)}")
        report.chunk_refs = sum(refs.values())

        live: Counter[int] = Counter()
        physical = logical = 0
        total_chunks = tx.entries(tx.db.chunks)
        report.chunks = total_chunks
        unreadable: dict[bytes, str] = {}
        for digest, raw in progress(tx.cursor(tx.db.chunks), total_chunks, "chunks"):
            digest = bytes(digest)
            segment, offset, length, count = CHUNK.unpack(raw)
            if count != refs.get(digest, 0):
                bad(f"chunk {digest.hex()[:16]}: refcount {count}, referenced "
                    f"{refs.get(digest, 0)} times")
            refs.pop(digest, None)
            live[segment] += length + HEADER.size
            physical += length
            logical += length * count
            problem = _check_body(store, digest, ChunkLocation(segment, offset, length))
            if problem is not None:
                unreadable[digest] = problem
        for digest in refs:
            unreadable[digest] = "is referenced but not indexed"
        users = files_using(tx, set(unreadable)) if unreadable else {}
        for digest, problem in unreadable.items():
            paths = ", ".join(users.get(digest, [])) or "no file"
            bad(f"chunk {digest.hex()[:16]} {problem}; used by {paths}")
        if tx.counter(PHYSICAL) != physical:
            bad(f"physical byte counter {tx.counter(PHYSICAL)} != {physical}")
        if tx.counter(LOGICAL) != logical:
            bad(f"logical byte counter {tx.counter(LOGICAL)} != {logical}")
        sizes = store.segments.segment_sizes()
        for key, raw in tx.cursor(tx.db.segments):
            info = SegmentInfo.unpack(U64.unpack(key)[0], raw)
            if info.live != live.get(info.segment, 0):
                bad(f"segment {info.segment}: live bytes {info.live} != "
                    f"{live.get(info.segment, 0)}")
            if info.state == SEGMENT_RETIRED and info.live:
                bad(f"segment {info.segment} is retired but holds live chunks")
            if info.state == SEGMENT_RETIRED:
                sizes.pop(info.segment, None)  # waiting out its grace period: not counted
        report.segments = len(sizes)
        report.segment_bytes = sum(sizes.values())
        # Records past the end of a truncated or missing file are damage, reported above;
        # they are not counted as bytes the files hold.
        report.live_bytes = sum(min(n, sizes.get(seg, 0)) for seg, n in live.items())
        for segment in live:
            if segment not in sizes:
                bad(f"segment {segment} holds live chunks but its file is missing")

        expected_keys = dict(_expected_keys(tx, inodes))
        report.keys = tx.entries(tx.db.keys)
        for key, raw in tx.cursor(tx.db.keys):
            key = bytes(key)
            if expected_keys.pop(key, None) != U64.unpack(raw)[0]:
                bad(f"key index entry {key[8:]!r} in bucket {U64.unpack(key[:8])[0]} is wrong")
        for key in expected_keys:
            bad(f"file {key[8:]!r} in bucket {U64.unpack(key[:8])[0]} is missing from the key index")
    return report


def key_of(ino: int) -> bytes:
    return U64.pack(ino)


def _check_body(store: Store, digest: bytes, location: ChunkLocation) -> str | None:
    """What is wrong with a chunk's stored record, or None if it reads back as its name."""
    try:
        body = store.segments.read(location)
        magic, header_digest, _length, _codec, _crc = store.segments.read_header(location)
    except Corrupt as e:
        return f"is unreadable: {e}"
    if magic != MAGIC or header_digest != digest or chunk_hash(body) != digest:
        return "is unreadable: the stored body does not hash to its name"
    return None


def paths_of(tx: Tx, inos: set[int]) -> dict[int, list[str]]:
    """Every path of each inode in `inos` (one scan of the directory entries)."""
    found: dict[int, list[str]] = {ino: [] for ino in inos}
    for key, raw in tx.cursor(tx.db.dirents):
        ino = DIRENT.unpack(raw)[0]
        if ino in found:
            parent, name = U64.unpack(key[:8])[0], bytes(key[8:])
            found[ino].append(_dir_path(tx, parent) + name.decode(errors="replace"))
    return found


def _dir_path(tx: Tx, ino: int) -> str:
    parts = []
    for _depth in range(4096):
        if ino == ROOT_INO:
            break
        raw = tx.get(tx.db.inodes, U64.pack(ino))
        if raw is None:
            parts.append(f"<lost directory {ino}>")
            break
        inode = Inode.unpack(ino, raw)
        parts.append(inode.name.decode(errors="replace"))
        ino = inode.parent
    return "/" + "".join(p + "/" for p in reversed(parts))


def files_using(tx: Tx, digests: set[bytes]) -> dict[bytes, list[str]]:
    """The paths of the files whose chunk maps reference each digest (one chunk-map scan)."""
    users: dict[bytes, set[int]] = {}
    for key, digest in tx.cursor(tx.db.chunkmap):
        digest = bytes(digest)
        if digest in digests:
            users.setdefault(digest, set()).add(U64.unpack(key[:8])[0])
    paths = paths_of(tx, set().union(*users.values())) if users else {}
    return {d: sorted(p for ino in inos for p in paths[ino] or [f"<inode {ino}>"])
            for d, inos in users.items()}


def _expected_keys(tx: Tx, inodes: dict[int, Inode]) -> Iterator[tuple[bytes, int]]:
    for entry in namespace.readdir(tx, ROOT_INO, 0, 1 << 62):
        if stat.S_ISDIR(entry.mode_type) and is_bucket_name(entry.name):
            yield from _walk(tx, entry.ino, entry.ino, b"")


def _walk(tx: Tx, bucket: int, directory: int, prefix: bytes
          ) -> Iterator[tuple[bytes, int]]:
    empty = True
    for entry in namespace.readdir(tx, directory, 0, 1 << 62):
        empty = False
        if stat.S_ISREG(entry.mode_type):
            yield U64.pack(bucket) + prefix + entry.name, entry.ino
        elif stat.S_ISDIR(entry.mode_type):
            yield from _walk(tx, bucket, entry.ino, prefix + entry.name + b"/")
    marker = namespace.marker_key((bucket, prefix)) if empty else None
    if marker is not None:
        yield marker, directory  # an empty directory is a folder marker
