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

from .auth import Streaming
from .context import CONFIG, S3, STOPPING
from .errors import (
    BadDigest,
    EntityTooLarge,
    IncompleteBody,
    InvalidArgument,
    InvalidRequest,
    MalformedXML,
    MissingContentLength,
    RequestTimeout,
    SignatureDoesNotMatch,
    XAmzContentSHA256Mismatch,
)
from .headers import Checksum, checksum, content_md5, trailing_checksum

CONTINUE_SENT = web.RequestKey("continue_sent", bool)


async def send_continue(request: web.Request) -> None:
    """Answer `Expect: 100-continue` once we know we want the body (the app defers aiohttp's
    automatic answer so that auth and argument errors are sent before any body is)."""
    if request.get(CONTINUE_SENT):
        return
    request[CONTINUE_SENT] = True
    if (request.version >= (1, 1)
            and request.headers.get("Expect", "").lower() == "100-continue"
            and request.transport is not None):
        # Straight to the transport: once a response is being prepared (app._before_headers)
        # its writer drops bytes past the declared Content-Length, and these are not body.
        request.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")


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
        self.preloaded: bytes | None = None

    async def _read(self, size: int) -> bytes:
        await send_continue(self.request)
        return await self.request.content.readexactly(size)

    async def preload(self) -> None:
        """Read a body of at most one piece here, on the event loop, before the worker hop:
        a worker asking the loop for it would cost two more thread hand-overs. Not for a
        client waiting on `Expect: 100-continue`: it must get the core's early errors (no
        such bucket, If-None-Match) before it sends anything."""
        if (self.length > self.piece
                or self.request.headers.get("Expect", "").lower() == "100-continue"):
            return
        try:
            await send_continue(self.request)
            # Usually the whole body has arrived with the headers: then no timer and no
            # waiter (the timeout's setup and teardown were ~4% of a 64 KiB PUT's loop time).
            data = self.request.content.read_nowait(self.length)
            if len(data) < self.length:
                async with asyncio.timeout(self.idle_timeout):
                    data += await self._read(self.length - len(data))
            self.preloaded = data
        except TimeoutError:
            raise RequestTimeout() from None
        except Exception:  # noqa: BLE001 - EOF, reset, content-length error: the client left
            raise IncompleteBody() from None

    def _take(self, data: bytes) -> bytes:
        self.received += len(data)
        if self.sha256 is not None:
            self.sha256.update(data)
        if self.checksum is not None:
            self.checksum.update(data)
        return data

    def pieces(self) -> Iterator[bytes]:
        """The body, in pieces; call from a worker thread, never from the event loop. The
        next piece is read from the socket while the core hashes and stages this one."""
        if self.preloaded is not None:
            data, self.preloaded = self.preloaded, None
            yield self._take(data)
        pending: concurrent.futures.Future[bytes] | None = None
        try:
            while self.received < self.length:
                if pending is None:
                    pending = self._request(self.received)
                data = self._wait(pending)
                ahead = self.received + len(data)
                pending = self._request(ahead) if ahead < self.length else None
                yield self._take(data)
        finally:
            if pending is not None:  # the core gave up on the body
                pending.cancel()
        self.verify()

    def _request(self, offset: int) -> concurrent.futures.Future[bytes]:
        size = min(self.piece, self.length - offset)
        return asyncio.run_coroutine_threadsafe(self._read(size), self.loop)

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
            except Exception:  # noqa: BLE001 - EOF, reset, content-length error: the client left
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
    except Exception:  # noqa: BLE001 - as in preload: the client went away
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


MAX_AWS_CHUNK = 16 << 20  # one aws-chunked chunk is held whole until its signature checks


class ChunkedBodyStream(BodyStream):
    """An aws-chunked body (Content-Encoding: aws-chunked), decoded as it streams:

        hex-size[;chunk-signature=SIG]\r\n DATA \r\n ... 0[;chunk-signature=SIG]\r\n
        [trailer-name:value\r\n ... [x-amz-trailer-signature:SIG\r\n]] \r\n

    With a signed mode each chunk's signature is checked, chained from the request's own
    signature, before its data goes on to the core (SignatureDoesNotMatch otherwise); the
    trailing checksum, when announced in x-amz-trailer, is checked after the last byte, and
    the decoded length against x-amz-decoded-content-length. Any failure raises inside the
    core's staging loop, so nothing becomes visible."""

    def __init__(self, request: web.Request, length: int, streaming: Streaming,
                 checksum: Checksum | None, trailing: Checksum | None, piece: int,
                 idle_timeout: float, stopping: threading.Event):
        super().__init__(request, length, None, checksum, piece, idle_timeout, stopping)
        self.streaming = streaming
        self.trailing = trailing

    async def _readline(self) -> bytes:
        await send_continue(self.request)
        line = await self.request.content.readuntil(b"\n")
        if not line.endswith(b"\n"):
            raise ValueError("the body ended inside a chunk header")
        return line.rstrip(b"\r\n")

    async def preload(self) -> None:
        return None  # the framing is decoded piece by piece in the worker

    def _line(self) -> bytes:
        return self._wait(asyncio.run_coroutine_threadsafe(self._readline(), self.loop))

    def _exactly(self, size: int) -> bytes:
        return self._wait(asyncio.run_coroutine_threadsafe(self._read(size), self.loop))

    def pieces(self) -> Iterator[bytes]:
        streaming = self.streaming
        previous = streaming.seed
        while True:
            size_text, _, extension = self._line().partition(b";")
            try:
                size = int(size_text.strip(), 16)
            except ValueError:
                raise IncompleteBody("The aws-chunked body is malformed.") from None
            if size > MAX_AWS_CHUNK or self.received + size > self.length:
                raise IncompleteBody("An aws-chunked chunk is larger than the decoded length "
                                     "or the largest chunk this gateway takes.")
            data = self._exactly(size) if size else b""
            if size and self._exactly(2) != b"\r\n":
                raise IncompleteBody("The aws-chunked body is malformed.")
            if streaming.signed:
                name, _, sent = extension.decode(errors="replace").partition("=")
                expected = streaming.chunk_signature(previous, hashlib.sha256(data).hexdigest())
                if name.strip() != "chunk-signature" or not hmac.compare_digest(
                        expected, sent.strip().lower()):
                    raise SignatureDoesNotMatch(
                        "The request signature we calculated does not match the signature "
                        "you provided. Check your key and signing method.")
                previous = expected
            if not size:
                break
            self.received += size
            if self.checksum is not None:
                self.checksum.update(data)
            if self.trailing is not None:
                self.trailing.update(data)
            yield data
        self._read_trailer(previous)
        if self.received != self.length:
            raise IncompleteBody(f"The body held {self.received} bytes; "
                                 f"x-amz-decoded-content-length said {self.length}.")
        self.verify()
        if self.trailing is not None:
            if not self.trailing.expected:
                raise InvalidRequest(f"The {self.trailing.header} trailer announced in "
                                     "x-amz-trailer was not sent.")
            if not self.trailing.matches():
                raise BadDigest(f"The {self.trailing.algorithm.upper()} you specified did "
                                "not match the calculated checksum.")

    def _read_trailer(self, previous: str) -> None:
        trailers: list[tuple[str, str]] = []
        signature = None
        if self.streaming.trailer:
            while True:
                line = self._line()
                if not line.strip():
                    break
                name, colon, value = line.decode(errors="replace").partition(":")
                if not colon:
                    raise IncompleteBody("The aws-chunked trailer is malformed.")
                name, value = name.strip().lower(), value.strip()
                if name == "x-amz-trailer-signature":
                    signature = value.lower()
                else:
                    trailers.append((name, value))
        elif self._line().strip():
            raise IncompleteBody("The aws-chunked body has bytes after its last chunk.")
        if self.streaming.signed and self.streaming.trailer:
            canonical = "".join(f"{n}:{v}\n" for n, v in trailers).encode()
            expected = self.streaming.trailer_signature(previous, canonical)
            if signature is None or not hmac.compare_digest(expected, signature):
                raise SignatureDoesNotMatch("The trailer signature does not match.")
        for name, value in trailers:
            if self.trailing is not None and name == self.trailing.header:
                self.trailing.set_trailer(value)


def open_body(request: web.Request, max_size: int) -> tuple[BodyStream, Checksum | None]:
    """The body of a PUT or UploadPart as a stream, and the checksum it must match: an
    x-amz-checksum-* header, or the trailer x-amz-trailer announces (aws-chunked bodies).
    The checksum's value is known once the stream has been consumed."""
    config = request.app[CONFIG]
    identity = request[S3].identity
    assert identity is not None
    check = checksum(request.headers)
    streaming = identity.streaming
    if streaming is None:
        length = request.content_length
        if length is None:
            raise MissingContentLength()
        if length > max_size:
            raise EntityTooLarge(ProposedSize=str(length), MaxSizeAllowed=str(max_size))
        stream = BodyStream(request, length, identity.payload_sha256, check, config.body_piece,
                            config.body_idle_timeout, request.app[STOPPING])
        return stream, check
    decoded = request.headers.get("x-amz-decoded-content-length")
    if decoded is None:
        raise MissingContentLength("You must provide x-amz-decoded-content-length with an "
                                   "aws-chunked body.")
    try:
        length = int(decoded)
    except ValueError:
        raise InvalidArgument("x-amz-decoded-content-length is not a number",
                              ArgumentName="x-amz-decoded-content-length",
                              ArgumentValue=decoded) from None
    if length < 0:
        raise InvalidArgument("x-amz-decoded-content-length is negative")
    if length > max_size:
        raise EntityTooLarge(ProposedSize=str(length), MaxSizeAllowed=str(max_size))
    trailing = trailing_checksum(request.headers) if streaming.trailer else None
    if trailing is not None and check is not None:
        raise InvalidRequest("Expecting a single x-amz-checksum- header. Multiple checksum "
                             "Types are not allowed.")
    stream = ChunkedBodyStream(request, length, streaming, check, trailing, config.body_piece,
                               config.body_idle_timeout, request.app[STOPPING])
    return stream, check or trailing
