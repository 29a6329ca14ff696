"""Several server processes on one port: what lets small requests use more than one core.

A gateway process spends most of a small request in Python on its event-loop thread, so one
process tops out near one core however many the machine has. With `processes` > 1 this
process becomes a supervisor:

- it makes one listening socket per server process, all on the port, in one SO_REUSEPORT
  group, so the kernel spreads new connections across them (`listen_sockets`). It keeps them:
  connections that arrive while a server process restarts wait in its socket's queue;
- it starts the server processes (`python -m gateway.worker`), each with its socket. Each
  opens the store itself: LMDB is made for many processes, and each already shares the store
  with the mount;
- it talks to each over a socket pair (gateway/worker.py has the protocol): the configuration
  goes down, "ready" or the reason it could not start comes back, and later the metrics series
  that its /metrics listener adds up;
- it restarts a server process that dies, unless they keep dying (a crash loop stops the
  gateway instead), and on SIGTERM/SIGINT stops them all, each finishing its requests.

Server processes run in a process group of their own (a terminal's Ctrl-C reaches only the
supervisor, which stops them in order) and die with the supervisor (PR_SET_PDEATHSIG), so a
`kill -9` of the gateway's pid stops all of it, as it would a single process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Iterable
from typing import Any

from aiohttp import web

from .config import GatewayConfig
from .metrics import Metrics
from .server import START_ERRORS, announce, ssl_context, start_metrics, stop_on_signals
from .worker import CONTROL_LINE, send

log = logging.getLogger("gateway.supervisor")

# Server processes that die this often are not restarted (whatever kills them would kill
# the next ones too): the gateway stops instead, for its own supervisor to see.
CRASH_LOOP = (3, 60.0)  # deaths, seconds
START_TIMEOUT = 120.0  # opening a big store replays dead mounts' journals first
BACKLOG = 128  # aiohttp's default


class CannotStart(Exception):
    pass


def listen_sockets(host: str, port: int, count: int) -> list[list[socket.socket]]:
    """For each of `count` server processes, a socket listening on host:port for every address
    `host` names (`localhost` is often both ::1 and 127.0.0.1; aiohttp's own listener, with one
    process, listens on all of them too). The sockets of one address are in one SO_REUSEPORT
    group.

    The first socket of each address binds and listens without SO_REUSEPORT, so it fails as
    any server would on a port something holds, another gateway included; once it listens, no
    one else can bind the port. SO_REUSEPORT set on it afterwards is what the kernel compares
    when the others bind with it, and their listen puts the first in their group too. Port 0
    is resolved by the first address, and the others take the same port."""
    addresses: list[tuple[socket.AddressFamily, socket.SocketKind, int, Any]] = []
    for family, kind, proto, _name, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        if all((family, address) != (f, a) for f, _k, _p, a in addresses):
            addresses.append((family, kind, proto, address))
    groups: list[list[socket.socket]] = [[] for _ in range(count)]
    try:
        for family, kind, proto, address in addresses:
            if port == 0 and groups[0]:
                address = (address[0], groups[0][0].getsockname()[1], *address[2:])
            for i, group in enumerate(groups):
                sock = socket.socket(family, kind, proto)
                group.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:  # as asyncio's create_server does
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if i:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(address)
                sock.listen(BACKLOG)
                if not i:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    address = sock.getsockname()  # port 0 resolved
    except BaseException:
        close_all(groups)
        raise
    return groups


def close_all(groups: list[list[socket.socket]]) -> None:
    for group in groups:
        for sock in group:
            sock.close()


class ServerProcess:
    """One `python -m gateway.worker`, its listening socket and the control socket pair."""

    def __init__(self, index: int, config: GatewayConfig,
                 listeners: list[socket.socket]) -> None:
        self.index = index
        self.config = config
        self.listeners = listeners  # one per address of the host name
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.started = 0.0
        self.last: dict[str, Any] | None = None  # its latest metrics, until it is retired
        # One exchange at a time on the control socket; held through a start, so that a
        # scrape waits for the new process's hello instead of going first.
        self.lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the process and wait until it listens; CannotStart says why it did not."""
        async with self.lock:
            self.reader = self.writer = self.last = None
            ours, theirs = socket.socketpair()
            try:
                fds = [theirs.fileno(), *(listener.fileno() for listener in self.listeners)]
                self.proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gateway.worker", *map(str, fds), pass_fds=fds,
                    process_group=0)
            except OSError as e:  # fork or exec refused (EAGAIN, ENOMEM)
                ours.close()
                raise CannotStart(f"cannot start a server process: {e}") from e
            finally:
                theirs.close()
            self.started = time.monotonic()
            reader, writer = await asyncio.open_unix_connection(sock=ours, limit=CONTROL_LINE)
            hello = {"index": self.index, "config": self.config.to_json()}
            try:
                answer = await asyncio.wait_for(_exchange(reader, writer, hello),
                                                START_TIMEOUT)
            except (ConnectionError, TimeoutError):
                answer = {"failed": "its process exited while starting"}
            if "failed" in answer:
                writer.close()
                await self._end(timeout=10)
                raise CannotStart(answer["failed"])
            self.reader, self.writer = reader, writer

    async def metrics(self) -> None:
        """Ask for its series (kept in `last`); a process gone or starting keeps its last."""
        async with self.lock:
            if self.reader is None or self.writer is None:
                return
            try:
                self.last = (await _exchange(self.reader, self.writer,
                                             {"metrics": True}))["metrics"]
            except (ConnectionError, OSError):
                pass

    async def stop(self, timeout: float) -> bool:
        """SIGTERM (it finishes the requests it has), SIGKILL after `timeout`. True if it
        stopped as asked (dying of that SIGTERM, before it could handle it, counts) or had
        already exited (its exit was reported then)."""
        if self.writer is not None:
            self.writer.close()
        if self.proc is None or self.proc.returncode is not None:
            return True
        with contextlib.suppress(ProcessLookupError):
            # os.kill, not proc.send_signal: that one reaps the process through Popen.poll
            # behind asyncio's child watcher, which then logs a stray warning.
            os.kill(self.proc.pid, signal.SIGTERM)
        status = await self._end(timeout)
        if status not in (0, -signal.SIGTERM):
            log.warning("event=server-process-stopped index=%d status=%s", self.index, status)
            return False
        return True

    async def _end(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            return await self.proc.wait()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    message: dict[str, Any]) -> dict[str, Any]:
    await send(writer, message)
    line = await reader.readline()
    if not line:
        raise ConnectionResetError("the server process is gone")
    answer: dict[str, Any] = json.loads(line)
    return answer


class Supervisor:
    def __init__(self, config: GatewayConfig, listeners: list[list[socket.socket]]) -> None:
        # The supervisor serves /metrics itself; one server process runs gc passes for all
        # (passes are safe side by side, but N of them would do the same work N times).
        self.config = config
        self.failed = False  # a server process could not be kept running
        self.retired = Metrics()  # the counts of server processes that have died
        count = len(listeners)
        shared = dataclasses.replace(
            config, port=listeners[0][0].getsockname()[1], processes=1, metrics_port=None,
            workers=-(-config.workers // count), upload_workers=-(-config.upload_workers // count))
        self.servers = [
            ServerProcess(i, dataclasses.replace(shared, gc_passes=i == 0), group)
            for i, group in enumerate(listeners)]

    async def start(self) -> None:
        """Start them all; if one cannot start, the first reason (the caller stops them)."""
        await _all_or_first_error(server.start() for server in self.servers)

    async def collect(self) -> Metrics:
        """The series summed over server processes, the dead ones' included: counters never
        go down, as Prometheus wants of one target."""
        await asyncio.gather(*(s.metrics() for s in self.servers))
        total = Metrics()
        total.add(self.retired.snapshot())
        for server in self.servers:
            if server.last is not None:
                total.add(server.last)
        return total

    def _retire(self, server: ServerProcess) -> None:
        if server.last is not None:
            self.retired.add({**server.last, "in_flight": 0})
            server.last = None

    async def watch(self, stop: asyncio.Event) -> None:
        """Restart server processes that die; give up (and stop) if they keep dying."""
        deaths: collections.deque[float] = collections.deque(maxlen=CRASH_LOOP[0])
        while not stop.is_set():
            waits = {asyncio.ensure_future(s.proc.wait()): s for s in self.servers
                     if s.proc is not None}
            stopping = asyncio.ensure_future(stop.wait())
            done, _pending = await asyncio.wait([*waits, stopping],
                                                return_when=asyncio.FIRST_COMPLETED)
            for future in [*waits, stopping]:
                if future not in done:
                    future.cancel()
            if stop.is_set():
                return
            for future in done:
                server = waits[future]
                self._retire(server)
                log.warning("event=server-process-exited index=%d status=%s lived_s=%.1f",
                            server.index, future.result(), time.monotonic() - server.started)
                deaths.append(time.monotonic())
                if len(deaths) == deaths.maxlen and deaths[-1] - deaths[0] < CRASH_LOOP[1]:
                    log.error("event=server-process-crash-loop deaths=%d seconds=%.0f: "
                              "stopping the gateway", len(deaths), CRASH_LOOP[1])
                    self.failed = True
                    stop.set()
                    return
                try:
                    await server.start()
                except CannotStart as e:
                    log.error("event=server-process-restart-failed index=%d error=%s",
                              server.index, e)
                    self.failed = True
                    stop.set()
                    return
                log.info("event=server-process-restarted index=%d", server.index)

    async def stop(self) -> bool:
        """Stop them all at once; True if each stopped as asked."""
        # aiohttp gives handlers up to twice its shutdown timeout, then the pools drain.
        timeout = 2 * self.config.shutdown_timeout + 30
        return all(await asyncio.gather(*(s.stop(timeout) for s in self.servers)))


async def _all_or_first_error(works: Iterable[Awaitable[None]]) -> None:
    """Await all of `works`; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(work) for work in works]
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def _unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run `work` to its end (True), or cancel it when `stop` is set first (False)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def supervise(config: GatewayConfig) -> int:
    """Serve with `config.processes` server processes until SIGTERM/SIGINT; the exit status."""
    try:
        ssl_context(config)  # a bad certificate: one line now, not one per server process
        listeners = listen_sockets(config.host, config.port, config.processes)
    except START_ERRORS as e:
        print(f"vfsd gateway: cannot start: {e}", file=sys.stderr, flush=True)
        return 1
    try:
        return await _supervise(config, listeners)
    finally:
        close_all(listeners)


async def _supervise(config: GatewayConfig, listeners: list[list[socket.socket]]) -> int:
    stop = stop_on_signals()  # a SIGTERM while starting stops the start, cleanly
    supervisor = Supervisor(config, listeners)
    metrics_runner: web.AppRunner | None = None
    try:
        if not await _unless_stopped(supervisor.start(), stop):
            return 0 if await supervisor.stop() else 1
        metrics_runner = await start_metrics(config, supervisor.collect)
    except (CannotStart, *START_ERRORS) as e:
        print(f"vfsd gateway: cannot start: {e}", file=sys.stderr, flush=True)
        await supervisor.stop()
        return 1
    announce(config, listeners[0][0].getsockname()[1], metrics_runner, config.processes)
    watcher = asyncio.ensure_future(supervisor.watch(stop))
    # A watcher that ends for any reason leaves dead server processes unreplaced: stop.
    watcher.add_done_callback(lambda _task: stop.set())
    try:
        await stop.wait()
    finally:
        print("vfsd gateway: stopping", flush=True)
        watcher.cancel()
        for outcome in await asyncio.gather(watcher, return_exceptions=True):
            if not isinstance(outcome, (asyncio.CancelledError, type(None))):
                log.error("event=supervisor-watch-failed error=%r", outcome)
                supervisor.failed = True
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        close_all(listeners)  # new connections are refused, not queued, from now on
        clean = await supervisor.stop()
    return 0 if clean and not supervisor.failed else 1
