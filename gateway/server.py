"""Run the gateway until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from vfsd.store.errors import StoreError

from .app import create_app
from .config import GatewayConfig


def serve(config: GatewayConfig) -> int:
    """Serve `config.store` on `config.host:config.port`; print the endpoint once listening.
    Returns the exit status: 0 after a clean stop, 1 if the gateway could not start."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return asyncio.run(_serve(config))
    except KeyboardInterrupt:
        return 0


async def _serve(config: GatewayConfig) -> int:
    runner = web.AppRunner(create_app(config), access_log=None, handle_signals=False,
                           shutdown_timeout=config.shutdown_timeout)
    try:
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
        await site.start()
    except (StoreError, OSError) as e:
        print(f"vfsd gateway: cannot start: {e}", file=sys.stderr, flush=True)
        await runner.cleanup()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    host, port = runner.addresses[0][:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"vfsd gateway: serving {config.store} at http://{shown}:{port} "
          f"(region {config.region})", flush=True)
    try:
        await stop.wait()
    finally:
        print("vfsd gateway: stopping", flush=True)
        await runner.cleanup()
    return 0
