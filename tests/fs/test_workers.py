"""The daemon's worker pool (vfsd/fs/workers.py): what trio.to_thread promised, kept."""

from __future__ import annotations

import os
import threading
import time

import pytest
import trio

from vfsd.fs.inline import InlineWhileFast
from vfsd.fs.workers import WorkerPool

pytestmark = pytest.mark.timeout(60)


async def test_results_and_exceptions_come_back_to_the_caller() -> None:
    pool = WorkerPool(2)
    try:
        assert await pool.run(lambda a, b: a + b, 2, 3) == 5
        assert await pool.run(threading.get_ident) != threading.get_ident()
        with pytest.raises(ZeroDivisionError):
            await pool.run(lambda: 1 / 0)
    finally:
        pool.close()


async def test_at_most_n_calls_run_at_once_and_the_loop_keeps_running() -> None:
    pool = WorkerPool(3)
    running = peak = 0
    lock = threading.Lock()
    ticks = 0

    def slow() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)  # blocks its thread, never the event loop
        with lock:
            running -= 1

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.005)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            async with trio.open_nursery() as calls:
                for _ in range(9):
                    calls.start_soon(pool.run, slow)
            nursery.cancel_scope.cancel()
        assert peak == 3
        assert ticks >= 15  # 9 calls, 3 at a time: ~150 ms during which the loop ran on
    finally:
        pool.close()


async def test_a_cancelled_caller_still_waits_for_its_call() -> None:
    pool = WorkerPool(1)
    finished = threading.Event()

    def call() -> None:
        time.sleep(0.1)
        finished.set()

    try:
        with trio.move_on_after(0.01):
            await pool.run(call)
        # Not abandoned: the cancel took effect only once the call had finished.
        assert finished.is_set()
    finally:
        pool.close()


async def test_the_pool_says_when_it_goes_busy_and_idle_again() -> None:
    """The mount stops polling /dev/fuse while the workers need the CPU (vfsd/fs/mount.py)."""
    pool = WorkerPool(2)
    changes: list[bool] = []
    pool.idle_changed = changes.append
    release = threading.Event()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run, release.wait)
            nursery.start_soon(pool.run, release.wait)
            await trio.sleep(0.05)
            assert (changes, pool.busy) == ([False], 2)  # once, for the first call
            release.set()
        assert (changes, pool.busy) == ([False, True], 0)  # once, when the last returned
        with pytest.raises(ZeroDivisionError):
            await pool.run(lambda: 1 / 0)
        assert changes == [False, True, False, True]
    finally:
        pool.close()


async def test_workers_run_in_sched_batch_so_a_wakeup_never_preempts_the_loop() -> None:
    pool = WorkerPool(2)
    try:
        assert await pool.run(os.sched_getscheduler, 0) == os.SCHED_BATCH
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the loop's own thread is not
    finally:
        pool.close()


async def test_short_calls_run_on_the_loop_until_one_is_slow() -> None:
    """vfsd/fs/inline.py: the fsync journal's write runs on the event loop while it is quick;
    one slow call sends the calls of the next back-off period to the workers."""
    pool = WorkerPool(1)
    inline = InlineWhileFast(pool.run, slow=0.05, min_back_off=0.3)
    loop_thread = threading.get_ident()
    try:
        assert await inline.run(threading.get_ident) == loop_thread
        with pytest.raises(ZeroDivisionError):
            await inline.run(lambda: 1 / 0)
        await inline.run(time.sleep, 0.06)  # a busy device
        assert inline.slow_calls == 1
        assert await inline.run(threading.get_ident) != loop_thread
        await trio.sleep(0.35)
        assert await inline.run(threading.get_ident) == loop_thread
    finally:
        pool.close()


def _slow_then_thread(seconds: float) -> int:
    time.sleep(seconds)
    return threading.get_ident()


async def test_calls_stay_on_the_workers_while_they_are_slow_there() -> None:
    pool = WorkerPool(1)
    inline = InlineWhileFast(pool.run, slow=0.05, min_back_off=0.4)
    loop_thread = threading.get_ident()
    try:
        await inline.run(time.sleep, 0.06)
        await trio.sleep(0.2)
        # Still slow on the workers, just before the first period ends: a second period.
        assert await inline.run(_slow_then_thread, 0.1) != loop_thread
        await trio.sleep(0.3)  # past the first period, inside the second
        assert await inline.run(threading.get_ident) != loop_thread
        await trio.sleep(0.2)
        assert await inline.run(threading.get_ident) == loop_thread
        assert inline.slow_calls == 1  # slow calls on the workers stall nothing
    finally:
        pool.close()


async def test_the_back_off_doubles_when_slow_calls_recur_and_resets_when_they_stop() -> None:
    pool = WorkerPool(1)
    inline = InlineWhileFast(pool.run, slow=0.05, min_back_off=0.4, max_back_off=0.8)
    loop_thread = threading.get_ident()
    try:
        await inline.run(time.sleep, 0.06)
        assert inline.back_off == 0.4
        await trio.sleep(0.5)
        assert await inline.run(threading.get_ident) == loop_thread
        await inline.run(time.sleep, 0.06)  # slow again soon after coming back
        assert inline.back_off == 0.8
        await trio.sleep(0.5)
        assert await inline.run(threading.get_ident) != loop_thread
        await trio.sleep(0.4)
        assert await inline.run(threading.get_ident) == loop_thread
        await trio.sleep(0.9)  # a long quiet spell
        await inline.run(time.sleep, 0.06)
        assert inline.back_off == 0.4
        assert inline.slow_calls == 3
    finally:
        pool.close()
