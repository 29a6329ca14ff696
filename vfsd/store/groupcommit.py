"""Group commit: the write transactions of concurrent callers share one durable LMDB commit.

A durable commit costs ~2 ms here (it syncs the data file and the meta page), and LMDB lets one
writer in at a time, so N threads that each commit alone are served one sync after another.
`GroupCommit.run(fn)` instead queues `fn`; the first caller to find no batch in progress leads:
it opens one write transaction, runs every queued `fn` in a nested (child) transaction of its
own, and commits the parent once. Callers return only after that commit, so what `run`
returned for survives a crash exactly as after a plain `Environment.write()`.

Isolation is per call: an exception raised by one `fn` aborts its child transaction only (its
caller gets the exception, the others commit); a failed parent commit fails every call in the
batch. A batch is capped (`max_batch`) so the writer lock, which the mount shares, stays short.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .env import Environment, Tx, as_store_error, run_ended

T = TypeVar("T")
MAX_BATCH = 64


class _Call(Generic[T]):
    __slots__ = ("done", "error", "fn", "lead", "result")

    def __init__(self, fn: Callable[[Tx], T]):
        self.fn = fn
        self.done = threading.Event()
        self.lead = False  # set (with done) when this call is handed the next batch to lead
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommit:
    """Batches write transactions of concurrent threads of one process into shared commits."""

    def __init__(self, env: Environment, max_batch: int = MAX_BATCH):
        self.env = env
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Call[Any]] = []
        self._busy = False  # a leader is running a batch
        self.commits = 0  # parent commits made (for tests and benchmarks)
        self.calls = 0  # calls committed through them

    def run(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn(tx)` in a write transaction; return its result once durably committed.
        An exception from `fn` aborts `fn`'s changes only and is raised here."""
        call: _Call[T] = _Call(fn)
        with self._lock:
            self._queue.append(call)
            lead = not self._busy
            self._busy = True
        if not lead:
            call.done.wait()
            if not call.lead:
                return self._outcome(call)
            call.done.clear()
        while not call.done.is_set():
            with self._lock:
                batch = self._queue[:self.max_batch]
                del self._queue[:self.max_batch]
            self._commit(batch)
        with self._lock:  # hand over to the first waiting caller, or stand down
            if self._queue:
                self._queue[0].lead = True
                self._queue[0].done.set()
            else:
                self._busy = False
        return self._outcome(call)

    @staticmethod
    def _outcome(call: _Call[T]) -> T:
        if call.error is not None:
            raise call.error
        return call.result

    def _commit(self, batch: list[_Call[Any]]) -> None:
        env = self.env
        try:
            parent = env.lmdb.begin(write=True)
        except BaseException as e:  # noqa: BLE001 - every waiting caller gets it
            self._finish(batch, e)
            return
        ran: list[_Call[Any]] = []
        stored: set[int] = set()
        changes = 0
        committed: list[Tx] = []  # their `ended` hooks wait for the parent's commit
        try:
            for call in batch:
                child = env.lmdb.begin(write=True, parent=parent)
                tx = env.begin_write(child)
                try:
                    result = call.fn(tx)
                    tx.flush_counters()
                except BaseException as e:  # noqa: BLE001 - its own failure: only it is undone
                    child.abort()
                    run_ended(tx)
                    call.error = as_store_error(e)
                    continue
                child.commit()
                committed.append(tx)
                call.result = result
                ran.append(call)
                stored |= tx.stored_inodes
                changes += tx.changes
            parent.commit()  # durable: LMDB syncs before it returns
            env.committed(stored, changes)
        except BaseException as e:  # noqa: BLE001 - the batch failed: all its calls did
            parent.abort()
            for call in ran:
                call.result, call.error = None, as_store_error(e, env.path)
        finally:
            for tx in committed:  # committed or aborted with the parent: ended either way
                run_ended(tx)
        self.commits += 1
        self.calls += len(ran)
        self._finish(batch, None)

    @staticmethod
    def _finish(batch: list[_Call[Any]], error: BaseException | None) -> None:
        for call in batch:
            if error is not None:
                call.error = error
            call.done.set()
