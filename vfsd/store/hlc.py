"""Hybrid logical clock: wall-clock milliseconds with a counter, monotonic across processes.

A version is `ms << 16 | counter`. The last issued value lives in LMDB's meta db and is advanced
inside the write transaction that uses it, so two processes sharing a store (mount and gateway)
never issue the same or a smaller version, whatever their clocks say. Peers merge with `observe`.
"""

from __future__ import annotations

import time

from .env import U64, Tx

_KEY = b"hlc"
COUNTER_BITS = 16


def pack(ms: int, counter: int) -> int:
    return ms << COUNTER_BITS | counter


def wall_ms(version: int) -> int:
    return version >> COUNTER_BITS


def tick(tx: Tx, observed: int = 0) -> int:
    """Issue the transaction's version: greater than every version issued or observed before."""
    if tx.version:
        return tx.version
    raw = tx.get(tx.db.meta, _KEY)
    last = max(U64.unpack(raw)[0] if raw else 0, observed)
    now = pack(time.time_ns() // 1_000_000, 0)
    version = now if now > last else last + 1
    tx.put(tx.db.meta, _KEY, U64.pack(version))
    tx.version = version
    return version
