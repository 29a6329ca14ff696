"""`python -m gateway --store PATH [--host H] [--port P] [--tls-cert PEM --tls-key PEM]
[--metrics-listen HOST:PORT]`: the S3 gateway over a vfsd store."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import GatewayConfig, default_processes
from .server import serve


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="Serve a vfsd store over S3 (SigV4; keys from `vfsd user add`).")
    parser.add_argument("--store", required=True, type=Path, help="the store directory")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (127.0.0.1)")
    parser.add_argument("--port", default=9000, type=int, help="listen port (9000; 0: any)")
    parser.add_argument("--region", default="us-east-1", help="the region clients sign for")
    parser.add_argument("--domain", action="append", dest="domains", metavar="DOMAIN",
                        help="serve virtual-host-style requests to BUCKET.DOMAIN "
                             "(repeatable; default: localhost)")
    parser.add_argument("--processes", type=int, default=default_processes(),
                        help="server processes sharing the port (default: one per core, up "
                             "to 4)")
    parser.add_argument("--workers", default=8, type=int,
                        help="threads for store calls, shared out among the server processes "
                             "(8)")
    parser.add_argument("--no-access-log", action="store_true", help="no per-request log line")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM",
                        help="serve HTTPS with this certificate (chain) file")
    parser.add_argument("--tls-key", type=Path, metavar="PEM",
                        help="the certificate's private key (if not in --tls-cert)")
    parser.add_argument("--metrics-listen", metavar="HOST:PORT",
                        help="serve Prometheus /metrics here (off by default; no auth, so "
                             "keep it on a private address)")
    parser.add_argument("--gc-interval", type=float, default=10.0, metavar="SECONDS",
                        help="seconds between passes giving back the space of deleted and "
                             "overwritten objects (10; 0: never)")
    args = parser.parse_args(argv)
    metrics_host, metrics_port = "127.0.0.1", None
    if args.metrics_listen:
        host, _, port = args.metrics_listen.rpartition(":")
        if not port.isdigit() or int(port) > 65535:
            parser.error(f"--metrics-listen {args.metrics_listen}: expected HOST:PORT")
        metrics_host, metrics_port = host.strip("[]") or "127.0.0.1", int(port)
    if args.processes < 1 or args.workers < 1:
        parser.error("--processes and --workers must be at least 1")
    if args.tls_key and not args.tls_cert:
        parser.error("--tls-key needs --tls-cert")
    config = GatewayConfig(store=args.store, host=args.host, port=args.port, region=args.region,
                           domains=tuple(args.domains or ("localhost",)), workers=args.workers,
                           access_log=not args.no_access_log, tls_cert=args.tls_cert,
                           tls_key=args.tls_key, metrics_host=metrics_host,
                           metrics_port=metrics_port, gc_interval=args.gc_interval or None,
                           processes=args.processes)
    return serve(config)


if __name__ == "__main__":
    sys.exit(main())
