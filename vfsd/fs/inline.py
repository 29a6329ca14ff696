"""The fsync journal's write, made on the event loop itself while the device answers quickly.

An fsync of a few small writes is one O_DSYNC write of a few KiB to the journal
(vfsd/store/journal.py): ~50 µs on this disk. Handed to a worker (vfsd/fs/workers.py) it took
~110 µs in a loop that did nothing else, because two more threads must wake: the worker, then
the loop when the worker is done. On a virtual machine without hardware virtualization each
wake-up of an idle vCPU is tens of µs. Made on the loop, one wake-up remains (the device's),
and bench/fs.py's 4k write+fdatasync job gains about a third.

The loop is blocked meanwhile, which STYLE.md forbids for LMDB and hashing work (the append
also reads the inode's version in an LMDB read transaction, ~5 µs). It is allowed here only
while it stays short: a call that takes longer than `SLOW` (a busy device: a segment
fdatasync or an LMDB commit queued before it) sends the calls of the next `BACK_OFF` seconds to
the workers, so a slow device stalls other requests for at most one call now and then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

SLOW = 0.002  # seconds: far above a healthy small O_DSYNC write, far below a request's budget
BACK_OFF = 1.0  # seconds of worker calls after a slow one


class InlineWhileFast:
    def __init__(self, run: Callable[..., Awaitable[Any]], slow: float = SLOW,
                 back_off: float = BACK_OFF):
        self.workers = run
        self.slow, self.back_off = slow, back_off
        self.inline_from = 0.0  # monotonic time from which calls run on the loop again
        self.slow_calls = 0

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if time.monotonic() < self.inline_from:
            return await self.workers(fn, *args)
        started = time.monotonic()
        try:
            return fn(*args)
        finally:
            took = time.monotonic() - started
            if took > self.slow:
                self.slow_calls += 1
                self.inline_from = time.monotonic() + self.back_off
                log.info("event=inline-call-slow call=%s ms=%.1f action=workers-for-%gs",
                         getattr(fn, "__qualname__", fn), took * 1000, self.back_off)
