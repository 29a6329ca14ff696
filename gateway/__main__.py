"""`python -m gateway --store PATH [--host H] [--port P]`: the S3 gateway over a vfsd store."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import GatewayConfig
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
    parser.add_argument("--workers", default=8, type=int, help="threads for store calls (8)")
    parser.add_argument("--no-access-log", action="store_true", help="no per-request log line")
    args = parser.parse_args(argv)
    config = GatewayConfig(store=args.store, host=args.host, port=args.port, region=args.region,
                           domains=tuple(args.domains or ("localhost",)), workers=args.workers,
                           access_log=not args.no_access_log)
    return serve(config)


if __name__ == "__main__":
    sys.exit(main())
