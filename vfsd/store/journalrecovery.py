"""Recovery: the journals of dead processes replayed into the store (vfsd/store/journal.py
says which sets a recovery replays, and why).

Run by the next mount, gateway start or CLI command, and by a running gateway within a
second of a mount's death; each journal under its own file lock, so several processes may
recover at once.
"""

from __future__ import annotations

import fcntl
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import NotFound
from .journal import JOURNAL_DIR, JournalSet, drop_marks, owner_key, read_marks, scan
from .leases import Holder
from .segments import sync_directory

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("vfsd.journal")


@dataclass
class Recovery:
    journals: int = 0
    replayed: int = 0  # sets laid onto the store
    dropped: int = 0  # uncovered sets of files changed since by another process, or gone


def recover(store: Store) -> Recovery:
    """Replay the journals of dead processes into the store, then delete them. Safe to run
    from several processes at once: each journal is replayed under its own file lock."""
    report = Recovery()
    directory = store.config.path / JOURNAL_DIR
    if not directory.is_dir():
        return report
    for path in sorted(directory.iterdir()):
        name, taking = path.name.removesuffix(".taking"), path.name.endswith(".taking")
        try:
            pid, start = (int(part) for part in name.split("-"))
        except ValueError:
            continue
        if Holder(pid, start, "").alive():
            continue
        if taking:  # a spare ring its mount died taking: only records of old laps
            path.unlink(missing_ok=True)
        else:
            _recover_one(store, path, owner_key(pid, start), report)
    return report


def _recover_one(store: Store, path: Path, key: bytes, report: Recovery) -> None:
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; only the open may find it gone)
    except FileNotFoundError:
        return  # another process recovered it
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)  # another process may be replaying it right now
        if not path.exists():
            return  # it did
        sets = list(scan(f.read()))
        with store.env.read() as tx:
            marks, chunk_marks = read_marks(tx, key)
        for ino in sorted({s.ino for s in sets}):
            mark_version, covered = marks.get(ino, (None, 0))
            pending = sorted((s for s in sets if s.ino == ino and s.seq > covered),
                             key=lambda s: s.seq)
            if pending and _replay(store, ino, pending, mark_version, chunk_marks.get(ino, {})):
                report.replayed += len(pending)
            else:
                report.dropped += len(pending)
        with store.env.write() as tx:
            drop_marks(tx, key)
        path.unlink()
        sync_directory(path.parent)
    report.journals += 1
    log.info("event=journal-recovered path=%s sets=%d", path, len(sets))


def _replay(store: Store, ino: int, pending: list[JournalSet], mark_version: int | None,
            included: dict[int, int]) -> bool:
    """Lay the uncovered sets of `ino` (oldest first) onto the store, if the file is still
    as their writer left it; False if it is gone or another process changed it since. A
    set's bytes skip the chunks whose body already includes it (`included`: chunk marks)."""
    try:
        inode = store.getattr(ino)
    except NotFound:
        return False
    if not inode.is_file or inode.version not in (pending[-1].base_version, mark_version):
        return False
    cs = store.chunk_size
    contents: dict[int, bytearray] = {}
    for journal_set in pending:
        for offset, data in journal_set.extents:
            end = offset + len(data)
            for index in range(offset // cs, (end - 1) // cs + 1):
                if journal_set.seq <= included.get(index, 0):
                    continue
                body = contents.get(index)
                if body is None:
                    body = contents[index] = bytearray(store.read_chunk(ino, index))
                lo = max(offset, index * cs) - index * cs
                hi = min(end, (index + 1) * cs) - index * cs
                if len(body) < hi:
                    body.extend(bytes(hi - len(body)))
                body[lo:hi] = data[index * cs + lo - offset: index * cs + hi - offset]
    # Past the pool's quota if need be: an fsync acknowledged these bytes, and a replay that
    # failed would leave the store unopenable by every command, `pool set` included.
    store.write_chunks(ino, contents, size=None, grow_to=max(s.size for s in pending),
                       mtime_ns=pending[-1].mtime_ns, within_pool=False)
    return True
