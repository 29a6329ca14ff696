"""The ceiling for an aiohttp S3-ish server: PUT streams the body to a file, GET sends it back.

    python bench/bare_aiohttp.py --dir TMPFS_DIR --port PORT

No auth, no XML, no metadata: the path (query string ignored) names a file in --dir. Used by
bench/s3.py as the "bare aiohttp" target; the directory is meant to be tmpfs so the disk is
not what is measured. GET sends the file in 1 MiB pieces read in the event loop, as a plain aiohttp
server does (no sendfile); a body of at most 1 MiB goes out in one piece.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from aiohttp import web

PIECE = 1 << 20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    root: Path = args.dir

    def name(request: web.Request) -> Path:
        return root / request.path.strip("/").replace("/", "_")

    async def put(request: web.Request) -> web.Response:
        path = name(request)
        tmp = path.with_name(path.name + ".tmp")
        # Blocking file calls in the loop on purpose: tmpfs, and this is the no-frills ceiling.
        with open(tmp, "wb") as f:  # noqa: ASYNC230
            async for piece in request.content.iter_chunked(PIECE):
                f.write(piece)
        os.replace(tmp, path)
        return web.Response(status=200)

    async def get(request: web.Request) -> web.StreamResponse:
        path = name(request)
        if not path.is_file():
            return web.Response(status=404)
        with open(path, "rb") as f:  # noqa: ASYNC230
            size = os.fstat(f.fileno()).st_size
            if size <= PIECE:
                return web.Response(body=f.read(), content_type="application/octet-stream")
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = size
            await response.prepare(request)
            while piece := f.read(PIECE):
                await response.write(piece)
            await response.write_eof()
            return response

    app = web.Application(client_max_size=1 << 31)
    app.router.add_route("PUT", "/{tail:.*}", put)
    app.router.add_route("GET", "/{tail:.*}", get)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
