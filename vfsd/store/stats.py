"""Space accounting: what is referenced, what is stored, what thin disks promise."""

from __future__ import annotations

from dataclasses import dataclass

from .chunks import LOGICAL, PHYSICAL
from .env import U64
from .records import Inode, InodeFlags
from .store import Store


@dataclass
class Stats:
    logical_bytes: int  # bytes files reference (holes excluded), before dedup
    physical_bytes: int  # bytes of unique chunk bodies
    apparent_bytes: int  # sum of file sizes
    provisioned_bytes: int  # sum of fixed-size (VM disk) sizes: what thin disks promise
    capacity_bytes: int
    quota_bytes: int | None
    chunks: int
    segments: int
    segment_bytes: int  # on disk, including dead and orphan records
    files: int
    directories: int

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.physical_bytes if self.physical_bytes else 1.0

    @property
    def overcommit(self) -> float:
        return self.provisioned_bytes / self.capacity_bytes if self.capacity_bytes else 0.0

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = dict(vars(self))
        out["dedup_ratio"] = round(self.dedup_ratio, 3)
        out["overcommit"] = round(self.overcommit, 3)
        return out


def collect(store: Store) -> Stats:
    apparent = provisioned = files = dirs = 0
    with store.env.read() as tx:
        logical, physical = tx.counter(LOGICAL), tx.counter(PHYSICAL)
        chunks = tx.entries(tx.db.chunks)
        for key, raw in tx.cursor(tx.db.inodes):
            inode = Inode.unpack(U64.unpack(key)[0], raw)
            if inode.is_dir:
                dirs += 1
            elif inode.is_file:
                files += 1
                apparent += inode.size
                if inode.flags & InodeFlags.FIXED_SIZE:
                    provisioned += inode.size
    sizes = store.segments.segment_sizes()
    return Stats(logical, physical, apparent, provisioned, store.capacity(), store.quota(),
                 chunks, len(sizes), sum(sizes.values()), files, dirs)
