"""Several server processes on one port: what lets small requests use more than one core.

A gateway process spends most of a small request in Python on its event-loop thread, so one
process tops out near one core however many the machine has. With `processes` > 1 this
process becomes a supervisor:

- it binds the port once without SO_REUSEPORT (so a port anything else holds, another gateway
  included, is refused), then sets SO_REUSEPORT on that bound socket and never listens on it:
  it only keeps the port, and a port 0 resolved, for its server processes;
- it starts `processes` server processes (`python -m gateway.worker`), each listening on the
  port with SO_REUSEPORT, so the kernel spreads connections across them. Each opens the store
  itself: LMDB is made for many processes, and each already shares it with the mount;
- it talks to each over a socket pair (gateway/worker.py has the protocol): the configuration
  goes down, "ready" or the reason it could not start comes back, and later the metrics series
  that the supervisor's /metrics listener sums;
- it restarts a server process that dies, unless they keep dying (a crash loop stops the
  gateway instead), and on SIGTERM/SIGINT stops them all, each finishing its requests.

Server processes die with the supervisor (PR_SET_PDEATHSIG), so `kill -9` of the gateway's pid
stops all of it, as it would a single process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from .config import GatewayConfig
from .metrics import Metrics
from .server import START_ERRORS, announce, ssl_context, start_metrics, stop_on_signals

log = logging.getLogger("gateway.supervisor")

# Server processes that die this often are not restarted (whatever kills them would kill
# the next ones too): the gateway stops instead, for its own supervisor to see.
CRASH_LOOP = (3, 60.0)  # deaths, seconds
START_TIMEOUT = 120.0  # opening a big store replays dead mounts' journals first
CONTROL_LINE = 16 << 20  # longest message on a control socket (a metrics snapshot)


class CannotStart(Exception):
    pass


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, to share with server processes through SO_REUSEPORT.

    The bind happens without the option, so it fails like any server's would when the port is
    taken (by a gateway too); the option set afterwards is what the kernel compares when the
    server processes bind. The socket never listens: the kernel hands connections only to
    listening sockets."""
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    holder = socket.socket(family, kind, proto)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(address)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except BaseException:
        holder.close()
        raise
    return holder


class ServerProcess:
    """One `python -m gateway.worker` and its end of the control socket pair."""

    def __init__(self, index: int, config: GatewayConfig) -> None:
        self.index = index
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.started = 0.0
        self.lock = asyncio.Lock()  # one question at a time on the control socket

    async def start(self) -> None:
        """Start the process and wait until it listens; CannotStart says why it did not."""
        ours, theirs = socket.socketpair()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.worker", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        self.started = time.monotonic()
        self.reader, self.writer = await asyncio.open_unix_connection(sock=ours,
                                                                      limit=CONTROL_LINE)
        hello = {"index": self.index, "config": self.config.to_json()}
        try:
            answer = await asyncio.wait_for(self.ask(hello), START_TIMEOUT)
        except (ConnectionError, TimeoutError):
            answer = {"failed": "its process exited while starting"}
        if "failed" in answer:
            await self.stop()
            raise CannotStart(answer["failed"])

    async def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.reader is not None and self.writer is not None
        async with self.lock:
            self.writer.write(json.dumps(message).encode() + b"\n")
            await self.writer.drain()
            line = await self.reader.readline()
        if not line:
            raise ConnectionResetError("the server process is gone")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def metrics(self) -> dict[str, Any] | None:
        """Its series, or None if it is gone (it takes its counts with it, as a Prometheus
        target that restarts does)."""
        try:
            return (await self.ask({"metrics": True}))["metrics"]
        except (ConnectionError, OSError):
            return None

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (it finishes the requests it has), then SIGKILL after `timeout`."""
        if self.writer is not None:
            self.writer.close()
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode


class Supervisor:
    def __init__(self, config: GatewayConfig, port: int) -> None:
        # The server processes bind the port this process holds; the supervisor serves
        # /metrics itself, and one server process runs gc for all (passes are safe side by
        # side, but N of them would only do the same work N times).
        self.config = config
        self.failed = False  # a server process could not be kept running
        shared = dataclasses.replace(config, port=port, processes=1, metrics_port=None)
        self.servers = [
            ServerProcess(i, shared if i == 0 else dataclasses.replace(shared, gc_interval=None))
            for i in range(config.processes)]

    async def start(self) -> None:
        try:
            await asyncio.gather(*(server.start() for server in self.servers))
        except BaseException:
            await self.stop()
            raise

    async def collect(self) -> Metrics:
        total = Metrics()
        for snapshot in await asyncio.gather(*(s.metrics() for s in self.servers)):
            if snapshot is not None:
                total.add(snapshot)
        return total

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
                lived = time.monotonic() - server.started
                log.warning("event=server-process-exited index=%d status=%s lived_s=%.1f",
                            server.index, future.result(), lived)
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
        """Stop them all at once; True if each stopped cleanly."""
        timeout = self.config.shutdown_timeout + 20
        statuses = await asyncio.gather(*(s.stop(timeout) for s in self.servers))
        for server, status in zip(self.servers, statuses, strict=True):
            if status not in (0, None):
                log.warning("event=server-process-stopped index=%d status=%s", server.index,
                            status)
        return all(status in (0, None) for status in statuses)


async def supervise(config: GatewayConfig) -> int:
    """Serve with `config.processes` server processes until SIGTERM/SIGINT; the exit status."""
    try:
        ssl_context(config)  # a bad certificate: one line now, not one per server process
        holder = reserve_port(config.host, config.port)
    except START_ERRORS as e:
        print(f"vfsd gateway: cannot start: {e}", file=sys.stderr, flush=True)
        return 1
    with holder:
        stop = stop_on_signals()  # a SIGTERM while starting stops the start, cleanly
        supervisor = Supervisor(config, holder.getsockname()[1])
        metrics_runner: web.AppRunner | None = None
        try:
            if not await _unless_stopped(supervisor.start(), stop):
                return 0 if await supervisor.stop() else 1
            metrics_runner = await start_metrics(config, supervisor.collect)
        except (CannotStart, *START_ERRORS) as e:
            print(f"vfsd gateway: cannot start: {e}", file=sys.stderr, flush=True)
            await supervisor.stop()
            return 1
        announce(config, holder.getsockname()[1], metrics_runner, config.processes)
        watcher = asyncio.ensure_future(supervisor.watch(stop))
        try:
            await stop.wait()
        finally:
            print("vfsd gateway: stopping", flush=True)
            watcher.cancel()
            if metrics_runner is not None:
                await metrics_runner.cleanup()
            clean = await supervisor.stop()
    return 0 if clean and not supervisor.failed else 1


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
