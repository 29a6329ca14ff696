"""`python -m gateway.worker CONTROL_FD LISTEN_FD...`: one server process of a supervised
gateway (gateway/supervisor.py): it accepts connections on the listening sockets LISTEN_FD (one
per address of the host name) and talks to its supervisor over the socket CONTROL_FD.

The protocol is one JSON object per line, the supervisor asking and this process answering:

    {"index": N, "config": {...}}  ->  {"ready": true}  or  {"failed": "why"}
    {"metrics": true}              ->  {"metrics": {...}}   (Metrics.snapshot())

It stops, finishing its requests, on SIGTERM or SIGINT or when the control socket closes, and
dies with its supervisor.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from .config import GatewayConfig
from .metrics import Metrics
from .server import START_ERRORS, s3_runner, setup_logging, start_s3, stop_on_signals

PR_SET_PDEATHSIG = 1
CONTROL_LINE = 16 << 20  # longest message on a control socket (a metrics snapshot)


def die_with_parent() -> None:
    """SIGKILL when the supervisor dies, however it dies: a `kill -9` of the gateway stops
    all of it. The check after the call covers a supervisor that died before it."""
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


async def send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    """One message of the protocol, either way."""
    writer.write(json.dumps(message).encode() + b"\n")
    await writer.drain()


async def serve_supervised(control: socket.socket, listeners: Sequence[socket.socket]) -> int:
    stop = stop_on_signals()
    reader, writer = await asyncio.open_unix_connection(sock=control, limit=CONTROL_LINE)
    hello = json.loads(await reader.readline() or b"null")
    if hello is None:
        return 1  # the supervisor went away before saying anything
    config = GatewayConfig.from_json(hello["config"])
    metrics = Metrics()
    runner = s3_runner(config, metrics)
    try:
        await start_s3(runner, config, listeners)
    except START_ERRORS as e:
        await runner.cleanup()
        await send(writer, {"failed": str(e)})
        return 1
    await send(writer, {"ready": True})

    async def answer() -> None:
        try:
            while line := await reader.readline():
                if json.loads(line).get("metrics"):
                    await send(writer, {"metrics": metrics.snapshot()})
        except (ConnectionError, ValueError):
            pass
        stop.set()  # no supervisor: nobody can stop or restart this process any more

    answering = asyncio.ensure_future(answer())
    try:
        await stop.wait()
    finally:
        answering.cancel()
        await runner.cleanup()
        writer.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    die_with_parent()
    setup_logging()
    control, *listeners = (socket.socket(fileno=int(fd)) for fd in args)
    return asyncio.run(serve_supervised(control, listeners))


if __name__ == "__main__":
    sys.exit(main())
