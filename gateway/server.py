"""Run the gateway until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from vfsd.store.errors import StoreError

from .app import create_app
from .config import GatewayConfig
from .metrics import Metrics, metrics_app

MAX_HEADER_LINE = 32 * 1024
MAX_HEADERS = 1024
# What a listener that cannot start raises: reported in one line, exit status 1.
START_ERRORS = (StoreError, OSError, ValueError, ssl.SSLError)


def serve(config: GatewayConfig) -> int:
    """Serve `config.store` on `config.host:config.port`; print the endpoint once listening.
    Returns the exit status: 0 after a clean stop, 1 if the gateway could not start."""
    setup_logging()
    try:
        if config.processes > 1:
            from .supervisor import supervise

            return asyncio.run(supervise(config))
        return asyncio.run(_serve(config))
    except KeyboardInterrupt:
        return 0


def setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        # The access log writes a line per request: skip what logging gathers for fields this
        # format does not use (caller's frame, thread and process names: ~10 µs per line).
        logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
        logging._srcfile = None  # the knob logging's docs ("Optimization") name for this
    logging.getLogger("aiohttp.server").addFilter(_malformed_request_without_traceback)


def _malformed_request_without_traceback(record: logging.LogRecord) -> bool:
    """aiohttp answers a request it cannot parse (a garbled request line, too many or too
    long headers) with a plain 400 and logs a traceback at ERROR. That is the client's
    fault, not ours: one warning line instead."""
    if record.exc_info and isinstance(record.exc_info[1], HttpProcessingError):
        reason = " ".join(str(record.exc_info[1]).split())  # aiohttp's spans lines
        record.msg, record.args = "%s: %s", (record.getMessage(), reason)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
    return True


def ssl_context(config: GatewayConfig) -> ssl.SSLContext | None:
    """The server's TLS context from config.tls_cert/tls_key (PEM), or None for plain HTTP."""
    if config.tls_cert is None and config.tls_key is None:
        return None
    if config.tls_cert is None:
        raise ValueError("a TLS key needs a TLS certificate (tls_cert)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # OpenSSL's own words ("[SSL] PEM lib (_ssl.c:3905)", "[Errno 2] No such file or
    # directory") name neither the file nor the fault.
    files = f"{config.tls_cert}" + (f" and {config.tls_key}" if config.tls_key else "")
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except ssl.SSLError as e:
        raise ValueError(f"cannot load the TLS certificate and key from {files}: not a PEM "
                         f"certificate with its private key, or a key that does not match "
                         f"({e.reason or e})") from None
    except OSError as e:
        raise ValueError(f"cannot read the TLS certificate and key from {files}: "
                         f"{e.strerror or e}") from None
    return context


def s3_runner(config: GatewayConfig, metrics: Metrics) -> web.AppRunner:
    # auto_decompress=False: a PUT with Content-Encoding: gzip stores the bytes as sent (S3
    # keeps the encoding as metadata); aiohttp would inflate the body before we read it.
    # Header limits above aiohttp's (8 KiB lines, 128 headers): a request carrying too much
    # metadata reaches the app and gets MetadataTooLarge, not aiohttp's plain-text 400.
    return web.AppRunner(create_app(config, metrics), access_log=None, handle_signals=False,
                         shutdown_timeout=config.shutdown_timeout, auto_decompress=False,
                         max_line_size=MAX_HEADER_LINE, max_field_size=MAX_HEADER_LINE,
                         max_headers=MAX_HEADERS)


async def start_s3(runner: web.AppRunner, config: GatewayConfig,
                   listeners: Sequence[socket.socket] = ()) -> None:
    """Serve on config.host:config.port, or on `listeners` (a supervisor's sockets)."""
    await runner.setup()
    context = ssl_context(config)
    sites: list[web.BaseSite] = [web.SockSite(runner, listener, ssl_context=context)
                                 for listener in listeners]
    if not listeners:
        sites.append(web.TCPSite(runner, config.host, config.port, reuse_address=True,
                                 ssl_context=context))
    for site in sites:
        await site.start()


async def start_metrics(config: GatewayConfig, collect: Callable[[], Awaitable[Metrics]]
                        ) -> web.AppRunner | None:
    """The /metrics listener, if the configuration asks for one."""
    if config.metrics_port is None:
        return None
    runner = web.AppRunner(metrics_app(collect), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.metrics_host, config.metrics_port,
                          reuse_address=True).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def announce(config: GatewayConfig, port: int, metrics_runner: web.AppRunner | None,
             processes: int = 1) -> None:
    shown = f"[{config.host}]" if ":" in config.host else config.host
    more = f", {processes} processes" if processes > 1 else ""
    print(f"vfsd gateway: serving {config.store} at {config.scheme}://{shown}:{port} "
          f"(region {config.region}{more})", flush=True)
    if metrics_runner is not None:
        host, port = metrics_runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"vfsd gateway: metrics at http://{shown}:{port}/metrics", flush=True)


def stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _serve(config: GatewayConfig) -> int:
    """One process: the S3 listener and, if asked for, the /metrics one."""
    metrics = Metrics()
    runner = s3_runner(config, metrics)
    metrics_runner: web.AppRunner | None = None
    try:
        await start_s3(runner, config)

        async def collect() -> Metrics:
            return metrics

        metrics_runner = await start_metrics(config, collect)
    except START_ERRORS as e:
        print(f"vfsd gateway: cannot start: {e}", file=sys.stderr, flush=True)
        await runner.cleanup()
        return 1
    stop = stop_on_signals()
    announce(config, runner.addresses[0][1], metrics_runner)
    try:
        await stop.wait()
    finally:
        print("vfsd gateway: stopping", flush=True)
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await runner.cleanup()
    return 0
