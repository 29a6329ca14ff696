"""Request bodies: streamed into a worker thread piece by piece, or read whole when small.

A PUT body never sits in memory whole: `BodyStream.pieces()` runs in the worker thread that
stages the object, and fetches each piece (config.body_piece bytes) from the event loop as the
core asks for it, so the socket is read only as fast as chunks become durable. The signed
payload hash and any x-amz-checksum-* are computed on the way and checked after the last
byte, before the core commits: a mismatch raises inside the core's staging loop, and nothing
becomes visible.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import threading
import time
from collections.abc import Iterator

from aiohttp import web

from .errors import (
    BadDigest, IncompleteBody, MalformedXML, RequestTimeout, XAmzContentSHA256Mismatch,
)
from .headers import Checksum, content_md5

CONTINUE_SENT = web.RequestKey("continue_sent", bool)


async def send_continue(request: web.Request) -> None:
    """Answer `Expect: 100-continue` once we know we want the body (the app defers aiohttp's
    automatic answer so that auth and argument errors are sent before any body is)."""
    if request.get(CONTINUE_SENT):
        return
    request[CONTINUE_SENT] = True
    if (request.version >= (1, 1)
            and request.headers.get("Expect", "").lower() == "100-continue"):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0


class BodyStream:
    def __init__(self, request: web.Request, length: int, payload_sha256: str | None,
                 checksum: Checksum | None, piece: int, idle_timeout: float,
                 stopping: threading.Event):
        self.request = request
        self.loop = asyncio.get_running_loop()
        self.length = length
        self.payload_sha256 = payload_sha256
        self.sha256 = hashlib.sha256() if payload_sha256 else None
        self.checksum = checksum
        self.piece = piece
        self.idle_timeout = idle_timeout
        self.stopping = stopping
        self.received = 0

    async def _read(self, size: int) -> bytes:
        await send_continue(self.request)
        return await self.request.content.readexactly(size)

    def pieces(self) -> Iterator[bytes]:
        """The body, in pieces; call from a worker thread, never from the event loop."""
        while self.received < self.length:
            size = min(self.piece, self.length - self.received)
            data = self._wait(asyncio.run_coroutine_threadsafe(self._read(size), self.loop))
            self.received += len(data)
            if self.sha256 is not None:
                self.sha256.update(data)
            if self.checksum is not None:
                self.checksum.update(data)
            yield data
        self.verify()

    def _wait(self, future: concurrent.futures.Future[bytes]) -> bytes:
        deadline = time.monotonic() + self.idle_timeout
        while True:
            try:
                return future.result(timeout=0.25)
            except concurrent.futures.TimeoutError:
                if self.stopping.is_set() or time.monotonic() > deadline:
                    future.cancel()
                    raise RequestTimeout() from None
            except concurrent.futures.CancelledError:
                raise RequestTimeout() from None
            except Exception:  # EOF, reset, content-length error: the client went away
                raise IncompleteBody() from None

    def verify(self) -> None:
        if self.sha256 is not None:
            computed = self.sha256.hexdigest()
            if not hmac.compare_digest(computed, self.payload_sha256 or ""):
                raise XAmzContentSHA256Mismatch(
                    ClientComputedContentSHA256=self.payload_sha256 or "",
                    S3ComputedContentSHA256=computed)
        if self.checksum is not None and not self.checksum.matches():
            raise BadDigest(f"The {self.checksum.algorithm.upper()} you specified did not "
                            "match the calculated checksum.")


async def read_small(request: web.Request, payload_sha256: str | None,
                     checksum: Checksum | None, limit: int) -> bytes:
    """A whole small body (XML requests), checked like a streamed one, plus Content-MD5."""
    if request.content_length is not None and request.content_length > limit:
        raise MalformedXML(f"the request body is over {limit} bytes")
    await send_continue(request)
    try:
        body = await request.content.read(limit + 1)
        while len(body) <= limit and not request.content.at_eof():
            more = await request.content.read(limit + 1 - len(body))
            if not more:
                break
            body += more
    except Exception:
        raise IncompleteBody() from None
    if len(body) > limit:
        raise MalformedXML(f"the request body is over {limit} bytes")
    if request.content_length is not None and len(body) != request.content_length:
        raise IncompleteBody()
    if payload_sha256 is not None:
        computed = hashlib.sha256(body).hexdigest()
        if not hmac.compare_digest(computed, payload_sha256):
            raise XAmzContentSHA256Mismatch(ClientComputedContentSHA256=payload_sha256,
                                            S3ComputedContentSHA256=computed)
    md5 = content_md5(request.headers)
    if md5 is not None and hashlib.md5(body).digest() != md5:
        raise BadDigest()
    if checksum is not None:
        checksum.update(body)
        if not checksum.matches():
            raise BadDigest(f"The {checksum.algorithm.upper()} you specified did not match "
                            "the calculated checksum.")
    return body
