"""The change log: every mutating call appends what it changed, in the same transaction.

The mount tails it to invalidate kernel caches for changes other processes made; replication
tails it to push new versions. Entries are keyed by a big-endian sequence number.
"""

from __future__ import annotations

from collections.abc import Iterator

from .env import U64, Tx
from .hlc import tick
from .records import CHANGE, Change, ChangeOp


def record(tx: Tx, origin: int, op: ChangeOp, ino: int, parent: int = 0, name: bytes = b"") -> None:
    version = tick(tx)
    cursor = tx.cursor(tx.db.changes)
    seq = U64.unpack(cursor.key())[0] + 1 if cursor.last() else 1
    tx.put(tx.db.changes, U64.pack(seq), CHANGE.pack(op, ino, parent, origin, version) + name)
    tx.changes += 1


def last_seq(tx: Tx) -> int:
    cursor = tx.cursor(tx.db.changes)
    return U64.unpack(cursor.key())[0] if cursor.last() else 0


def since(tx: Tx, after: int, limit: int = 10_000) -> Iterator[Change]:
    """Changes with a sequence number above `after`, oldest first."""
    cursor = tx.cursor(tx.db.changes)
    if not cursor.set_range(U64.pack(after + 1)):
        return
    for n, (key, value) in enumerate(cursor):
        if n >= limit:
            return
        op, ino, parent, origin, version = CHANGE.unpack_from(value)
        yield Change(U64.unpack(key)[0], ChangeOp(op), ino, parent, origin, version,
                     bytes(value[CHANGE.size:]))
