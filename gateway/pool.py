"""The thread pools that run the synchronous core off the event loop.

`loop.run_in_executor` hands a result back through two futures chained together (a
concurrent one and an asyncio one, a lock, two callbacks): about 12% of the event loop's time
on a 64 KiB GET. `Pool.call` gives the caller an asyncio future and the worker settles it
with one `call_soon_threadsafe`. `Pool` is still an `Executor`, so `run_in_executor` and
`submit` work on it for everything that is not on a request's path.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from vfsd.threads import run_as_batch

T = TypeVar("T")


class Pool(concurrent.futures.Executor):
    """`workers` threads, all started at once, taking jobs in order."""

    def __init__(self, workers: int, name: str):
        # A job: (fn, loop, asyncio future, dropped) from `call`, (fn, None, concurrent future,
        # None) from `submit`; None tells a worker to stop.
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Any, Any, Any] | None] = (
            queue.SimpleQueue())
        self._shutdown_lock = threading.Lock()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def call(self, fn: Callable[[], T],
             dropped: Callable[[T], None] | None = None) -> asyncio.Future[T]:
        """`fn()` in a worker; call on the event loop. Cancelling the future before a worker
        takes the job skips it; after, the result is dropped, as `run_in_executor` does, and
        handed to `dropped` on the loop if given (a result that holds something)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._put((fn, loop, future, dropped))
        return future

    def submit(self, fn: Callable[..., T], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._put(((lambda: fn(*args, **kwargs)), None, future, None))
        return future

    def _put(self, job: tuple[Callable[[], Any], Any, Any, Any]) -> None:
        # Under the lock: a job queued behind the workers' stop signals would never settle.
        with self._shutdown_lock:
            if self._closed:  # ThreadPoolExecutor's error: callers catch it at shutdown
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._jobs.put(job)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._shutdown_lock:
            if not self._closed:
                self._closed = True
                if cancel_futures:
                    self._cancel_queued()
                for _thread in self._threads:
                    self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _cancel_queued(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is None:
                continue
            _fn, loop, future, _dropped = job
            if loop is None:
                future.cancel()
            else:
                _call_on(loop, future.cancel)

    def _work(self) -> None:
        run_as_batch()
        while (job := self._jobs.get()) is not None:
            fn, loop, future, dropped = job
            del job
            if loop is None:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as e:  # noqa: BLE001 - the caller gets it
                        future.set_exception(e)
            elif not future.cancelled():  # a read of a flag: safe from this thread
                try:
                    result = fn()
                except BaseException as e:  # noqa: BLE001 - the caller gets it
                    _call_on(loop, _fail, future, e)
                else:
                    _call_on(loop, _succeed, future, result, dropped)
                    del result
            # Not held while waiting for the next job: a result (mapped extents) or an
            # exception (its traceback) could stay alive in an idle thread for ever.
            del fn, loop, future, dropped


def _call_on(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop has closed: no one is waiting any more
        pass


def _succeed(future: asyncio.Future[Any], result: Any,
             dropped: Callable[[Any], None] | None) -> None:
    if not future.cancelled():
        future.set_result(result)
    elif dropped is not None:
        dropped(result)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.cancelled():
        future.set_exception(error)
