"""gateway.pool: the worker pool whose `call` hands results to the event loop directly."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from gateway.pool import Pool


def test_call_returns_results_and_raises_errors() -> None:
    async def main() -> None:
        pool = Pool(2, "test-pool")
        try:
            assert await pool.call(lambda: threading.current_thread().name) in (
                "test-pool_0", "test-pool_1")
            with pytest.raises(KeyError, match="missing"):
                await pool.call(lambda: {}["missing"])
            # run_in_executor and submit still work: gc and the extents' release use them.
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(pool, pow, 2, 10) == 1024
            assert pool.submit(pow, 3, 2).result(timeout=5) == 9
        finally:
            pool.shutdown()

    asyncio.run(main())


def test_a_job_cancelled_before_it_starts_does_not_run() -> None:
    async def main() -> None:
        pool = Pool(1, "test-pool")
        gate, ran = threading.Event(), []
        try:
            blocker = pool.call(gate.wait)
            queued = pool.call(lambda: ran.append(1))
            queued.cancel()
            gate.set()
            await blocker
            assert await pool.call(lambda: "after") == "after"  # the worker is fine
            assert ran == []
        finally:
            pool.shutdown()

    asyncio.run(main())


def test_a_result_that_arrives_after_its_awaiter_gave_up_is_dropped() -> None:
    async def main() -> None:
        pool = Pool(1, "test-pool")
        started, gate = threading.Event(), threading.Event()

        def slow() -> str:
            started.set()
            gate.wait()
            return "late"

        errors: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, e: errors.append(e))
        try:
            future = pool.call(slow)
            await asyncio.to_thread(started.wait)
            future.cancel()
            gate.set()
            assert await pool.call(lambda: "next") == "next"  # no InvalidStateError on the way
            assert future.cancelled()
            # A shielded future (objects._stream) keeps its result for whoever closes it.
            gate.clear()
            started.clear()
            inner = pool.call(slow)
            outer = asyncio.ensure_future(asyncio.shield(inner))
            await asyncio.to_thread(started.wait)
            outer.cancel()
            gate.set()
            assert await inner == "late"
            # One with a `dropped` callback gets its dropped result handed over (a GET's
            # hold on its object, gateway/objects.py).
            gate.clear()
            started.clear()
            handed: list[str] = []
            future = pool.call(slow, dropped=handed.append)
            await asyncio.to_thread(started.wait)
            future.cancel()
            gate.set()
            assert await pool.call(lambda: "next") == "next"
            await asyncio.sleep(0)
            assert handed == ["late"]
            assert errors == []
        finally:
            pool.shutdown()

    asyncio.run(main())


def test_shutdown_cancels_queued_jobs_and_refuses_new_ones() -> None:
    async def main() -> None:
        pool = Pool(1, "test-pool")
        started, gate = threading.Event(), threading.Event()
        blocker = pool.call(lambda: started.set() or gate.wait())
        queued = pool.call(lambda: "never")
        await asyncio.to_thread(started.wait)
        pool.shutdown(wait=False, cancel_futures=True)
        gate.set()
        assert await blocker is True
        await asyncio.to_thread(pool.shutdown)  # joins the worker
        await asyncio.sleep(0)  # the cancellation comes through call_soon_threadsafe
        assert queued.cancelled()
        with pytest.raises(RuntimeError):
            pool.call(lambda: None)
        assert all(not t.is_alive() for t in pool._threads)

    asyncio.run(main())


def test_workers_run_in_sched_batch_so_a_wakeup_never_preempts_the_loop() -> None:
    async def main() -> None:
        pool = Pool(2, "test-pool")
        try:
            assert await pool.call(lambda: os.sched_getscheduler(0)) == os.SCHED_BATCH
            assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the loop's own thread is not
        finally:
            pool.shutdown()

    asyncio.run(main())
