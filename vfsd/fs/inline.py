"""The fsync journal's write, made on the event loop itself while the device answers quickly.

An fsync of a few small writes is one O_DSYNC write of a few KiB to the journal
(vfsd/store/journal.py): ~50 µs on this disk. Handed to a worker (vfsd/fs/workers.py) it took
~110 µs in a loop that did nothing else, because two more threads must wake: the worker, then
the loop when the worker is done. On a virtual machine without hardware virtualization each
wake-up of an idle vCPU is tens of µs. Made on the loop, one wake-up remains (the device's),
and bench/fs.py's 4k write+fdatasync job gains about a third.

The loop is blocked meanwhile, which STYLE.md forbids for LMDB and hashing work (the append
also reads the inode's version in an LMDB read transaction, ~5 µs). It is allowed here only
while it stays short. A call that takes longer than `SLOW` (a busy device: a segment
fdatasync or an LMDB commit queued before it, the discards of a file system mounted with
`-o discard` after gc deleted segments) sends the calls that follow to the workers, which time
them. Calls come back to the loop once none has been slow for a back-off period. That period
starts short, since most stalls are one flush or one discard long, and doubles when a slow
call comes again soon after the calls came back, up to `MAX_BACK_OFF`: a device that stays
slow keeps the calls on the workers, and one that is slow now and then stalls the loop at
most once per `MAX_BACK_OFF`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

SLOW = 0.002  # seconds: far above a healthy small O_DSYNC write, far below a request's budget
MIN_BACK_OFF = 0.05  # seconds on the workers after a slow call, when slow calls are rare
MAX_BACK_OFF = 1.0  # ... and at most, when they come again as soon as calls are back


class InlineWhileFast:
    def __init__(self, run: Callable[..., Awaitable[Any]], slow: float = SLOW,
                 min_back_off: float = MIN_BACK_OFF, max_back_off: float = MAX_BACK_OFF):
        self.workers = run
        self.slow, self.min_back_off, self.max_back_off = slow, min_back_off, max_back_off
        self.back_off = min_back_off  # the current period; doubles while slow calls recur
        self.inline_from = 0.0  # monotonic time from which calls run on the loop again
        self.slow_calls = 0  # slow calls made on the loop

    @property
    def backing_off(self) -> bool:
        return time.monotonic() < self.inline_from

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.backing_off:
            return await self.workers(self._timed, self._slow_on_workers, fn, *args)
        return self._timed(self._slow_on_loop, fn, *args)

    def _timed(self, on_slow: Callable[[Callable[..., Any], float, float], None],
               fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args); then on_slow(fn, seconds taken, now) if that was over `slow`."""
        started = time.monotonic()
        try:
            return fn(*args)
        finally:
            ended = time.monotonic()
            if ended - started > self.slow:
                on_slow(fn, ended - started, ended)

    def _slow_on_loop(self, fn: Callable[..., Any], took: float, now: float) -> None:
        self.slow_calls += 1
        came_back = self.inline_from  # 0 at first: long ago
        if now - came_back < self.max_back_off:
            self.back_off = min(2 * self.back_off, self.max_back_off)
        else:
            self.back_off = self.min_back_off
        self.inline_from = now + self.back_off
        log.info("event=inline-call-slow call=%s ms=%.1f action=workers back_off_s=%g",
                 getattr(fn, "__qualname__", fn), took * 1000, self.back_off)

    def _slow_on_workers(self, _fn: Callable[..., Any], _took: float, now: float) -> None:
        """In a worker: still slow there, so the calls stay on the workers for another
        back-off period. (Racing the loop's own update can lose one extension, no more.)"""
        self.inline_from = max(self.inline_from, now + self.back_off)
