"""The change log: every mutating call appends what it changed, in the same transaction.

The mount tails it to invalidate kernel caches for changes other processes made; replication
tails it to push new versions. Entries are keyed by a big-endian sequence number.

Entries older than RETAIN_MS are trimmed (`trim`, from gc), the newest KEEP_NEWEST never: a
log that is never trimmed grows by an entry per commit for as long as the store lives (a
busy gateway adds millions a day) until LMDB's map is full. A tail reader polls every 100 ms,
so only one stopped for longer than RETAIN_MS finds entries gone; it sees a gap in the
sequence numbers (`since` starts past its cursor + 1) and must assume anything changed.
"""

from __future__ import annotations

from collections.abc import Iterator

import lmdb

from .env import U64, Environment, Tx
from .hlc import tick, wall_ms
from .records import CHANGE, Change, ChangeOp


def record(tx: Tx, origin: int, op: ChangeOp, ino: int, parent: int = 0, name: bytes = b"") -> None:
    version = tick(tx)
    cursor = tx.cursor(tx.db.changes)
    seq = U64.unpack(cursor.key())[0] + 1 if cursor.last() else 1
    tx.put(tx.db.changes, U64.pack(seq), CHANGE.pack(op, ino, parent, origin, version) + name)
    tx.changes += 1


RETAIN_MS = 60 * 60 * 1000
# Never trimmed: a quiet store keeps some history, and the log is never emptied (sequence
# numbers continue from the last entry; an empty log would start them again at 1).
KEEP_NEWEST = 10_000
TRIM_BATCH = 5_000  # deletions per write transaction: the writer lock is shared


def trim(env: Environment, now_ms: int, retain_ms: int | None = None,
         keep_newest: int | None = None) -> int:
    """Delete entries stamped more than `retain_ms` (RETAIN_MS) before `now_ms`, oldest
    first, except the newest `keep_newest` (KEEP_NEWEST); returns how many. In short
    transactions, so it may run beside writers (entries are only appended at the other end)."""
    retain_ms = RETAIN_MS if retain_ms is None else retain_ms
    keep_newest = KEEP_NEWEST if keep_newest is None else keep_newest
    if keep_newest < 1:
        raise ValueError("the newest entry is never trimmed")

    def trimmable(cursor: lmdb.Cursor[bytes], last: int) -> bool:
        seq = U64.unpack(cursor.key())[0]
        version = CHANGE.unpack_from(cursor.value())[4]
        return last - seq >= keep_newest and wall_ms(version) < now_ms - retain_ms

    with env.read() as tx:  # most passes find nothing: no write transaction for them
        cursor = tx.cursor(tx.db.changes)
        if not cursor.first() or not trimmable(cursor, last_seq(tx)):
            return 0
    trimmed = 0
    while True:
        with env.write() as tx:
            last = last_seq(tx)
            cursor = tx.cursor(tx.db.changes)
            done = 0
            if cursor.first():
                # Deleting moves the cursor to the next entry; the newest is never deleted.
                while done < TRIM_BATCH and trimmable(cursor, last) and cursor.delete():
                    done += 1
        trimmed += done
        if done < TRIM_BATCH:
            return trimmed


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
