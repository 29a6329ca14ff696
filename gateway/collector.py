"""gc passes in a gateway process: one every `gc_interval`, and more while a full disk is
being emptied.

A deleted or overwritten object's bodies stay in their segments until gc takes the segments
back: retired by one pass, deleted by the first pass after the grace period. On a disk that
such bodies filled, a PUT fails with NoSpace for those seconds. The mount's writers wait for
gc (vfsd/fs/writeback.py); a PUT's body is gone by then, but S3 clients retry a 503, where
a 507 ends their upload. So a request refused for want of disk room runs a pass at once
(which also gives up this process's idle segment, so the pass can take it); if passes are
giving space back, passes follow every second instead of every `gc_interval`, and the
answer, 503 ServiceUnavailable with Retry-After, waits for the pass that frees the space,
so the client's retry lands. A pool full by its quota, or a disk full of live data, is
still 507 InsufficientStorage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from aiohttp import web

from vfsd.store import Store, gc
from vfsd.store.errors import StoreError

from .config import GatewayConfig
from .context import CONFIG, EXECUTOR, STORE, in_background
from .errors import InsufficientStorage, S3Error, ServiceUnavailable
from .pool import Pool

log = logging.getLogger("gateway")
T = TypeVar("T")
RECLAIM_PASS_SECONDS = 1.0  # between passes while a full disk is being emptied
RECLAIM_FOR_SECONDS = 60.0  # at most, after the last PUT refused for want of room
RETRY_AFTER_SECONDS = 1
# A refused request's answer waits at most this long for a pass that frees space: the grace
# period (5 s) and a pass or two. Longer, and a client's own timeout might come first.
HOLD_SECONDS = 8.0


class Collector:
    """This process's gc passes, one at a time."""

    def __init__(self, config: GatewayConfig, store: Store, executor: Pool):
        self.config = config
        self.store = store
        self.executor = executor
        self.lock = asyncio.Lock()
        self.reclaiming_until = 0.0  # monotonic; passes every RECLAIM_PASS_SECONDS till then
        self.wake = asyncio.Event()
        self.next_pass: asyncio.Future[gc.GcReport | None] | None = None  # not started yet

    async def run(self) -> None:
        """For the app's life: a pass (or, leaving passes to another process, a release of
        retired segments) every gc_interval, and every RECLAIM_PASS_SECONDS while reclaiming."""
        interval = self.config.gc_interval
        assert interval is not None
        while True:
            pause = RECLAIM_PASS_SECONDS if self._reclaiming() else interval
            try:
                await asyncio.wait_for(self.wake.wait(), pause)
                self.wake.clear()
                continue  # woken to pass sooner: the shorter pause first
            except TimeoutError:
                pass
            if self.config.gc_passes or self._reclaiming():
                report = await self.collect()
                if report is not None and not report.giving_back:
                    self.reclaiming_until = 0.0
            else:
                await self._call(gc.release_retired)

    async def collect(self) -> gc.GcReport | None:
        """One pass; None if it failed (logged)."""
        try:
            report = await self._call(gc.collect)
        except StoreError as e:
            log.warning("event=gc-failed error=%s", e)
            return None
        if report.changed:
            log.info("event=gc %s", report.summary())
        return report

    async def fresh_pass(self) -> gc.GcReport | None:
        """A pass that starts after this call (one that is running may have weighed the
        segments before a DELETE freed them); callers waiting meanwhile share it."""
        if self.next_pass is None:
            self.next_pass = asyncio.ensure_future(self._start_next_pass())
        return await asyncio.shield(self.next_pass)

    async def _start_next_pass(self) -> gc.GcReport | None:
        async with self.lock:  # after the running pass, if any
            self.next_pass = None  # callers from now on need a later pass
        return await self.collect()

    async def answer_no_space(self) -> S3Error:
        """The S3 error for a request the store refused for want of room. While passes give
        space back, the answer waits (up to HOLD_SECONDS) for a pass that freed some, so the
        client's retry, which comes within a second or two, finds it."""
        try:
            return await self._answer_no_space()
        except Exception:  # a bug here must not turn a 507 into a bare 500
            log.exception("event=no-space-answer-failed")
            return InsufficientStorage()

    async def _answer_no_space(self) -> S3Error:
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(self.executor, gc.disk_tight, self.store):
            return InsufficientStorage()  # the quota: gc gives no room back under it
        report = await self.fresh_pass()
        if report is None or not report.giving_back:
            return InsufficientStorage()
        self.reclaiming_until = time.monotonic() + RECLAIM_FOR_SECONDS
        self.wake.set()
        log.info("event=no-space-while-reclaiming waiting_bytes=%d freed_bytes=%d",
                 report.waiting_bytes, report.freed_bytes)
        deadline = time.monotonic() + HOLD_SECONDS
        while not report.freed_bytes and time.monotonic() < deadline:
            await asyncio.sleep(RECLAIM_PASS_SECONDS)
            report = await self.fresh_pass()
            if report is None or not report.giving_back:
                break
        return ServiceUnavailable(
            "The disk under the store is full, and the space of deleted objects is being "
            "given back: retry.", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    def _reclaiming(self) -> bool:
        return time.monotonic() < self.reclaiming_until

    async def _call(self, fn: Callable[[Store], T], *args: Any) -> T:
        """`fn` in the pool, one at a time: passes of one process do not overlap."""
        async with self.lock:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn,
                                                                    self.store, *args)


COLLECTOR = web.AppKey("collector", Collector)


async def collector_context(app: web.Application) -> AsyncIterator[None]:
    """The collector, and its passes in the background unless gc_interval is None (tests
    that count segments): then a PUT refused for room still gets a pass of its own."""
    collector = app[COLLECTOR] = Collector(app[CONFIG], app[STORE], app[EXECUTOR])
    async with in_background(collector.run() if app[CONFIG].gc_interval else None):
        yield
