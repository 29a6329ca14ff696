"""Object operations: PutObject, GetObject, HeadObject, DeleteObject, CopyObject.

Bodies stream both ways: a PUT's body goes from the socket into the core's staging loop piece
by piece (gateway.body), a GET's comes out of the core window by window, the next window read
while the previous one is written to the socket.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from aiohttp import web

from vfsd.store.checksums import type_of as checksum_type_of
from vfsd.store.conditions import Conditions
from vfsd.store.errors import NotModified, ObjectChanged
from vfsd.store.objects import ObjectInfo, Objects
from vfsd.store.segments import Extents

from . import xml
from .body import open_body
from .buckets import xml_response
from .context import CONFIG, EXECUTOR, OBJECTS, S3, run, run_upload
from .errors import (
    InvalidArgument,
    InvalidPartNumber,
    InvalidRequest,
    InvalidStorageClass,
    NotImplementedS3,
    ServiceUnavailable,
)
from .headers import (
    conditions,
    content_headers,
    content_md5,
    http_date,
    parse_etags,
    parse_range,
    user_metadata,
)
from .sendfile import ExtentSender, can_sendfile

log = logging.getLogger("gateway")

DEFAULT_CONTENT_TYPE = "binary/octet-stream"  # what S3 answers for objects stored without one
UNSUPPORTED_HEADERS = (
    "x-amz-tagging", "x-amz-object-lock-mode", "x-amz-object-lock-retain-until-date",
    "x-amz-object-lock-legal-hold", "x-amz-server-side-encryption-customer-algorithm",
    "x-amz-website-redirect-location",
)
RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}
HEADER_NAMES = {
    "content-type": "Content-Type", "content-encoding": "Content-Encoding",
    "content-disposition": "Content-Disposition", "content-language": "Content-Language",
    "cache-control": "Cache-Control", "expires": "Expires",
}


STORAGE_CLASSES = frozenset({
    "STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
    "GLACIER", "DEEP_ARCHIVE", "OUTPOSTS", "GLACIER_IR", "SNOW", "EXPRESS_ONEZONE",
})


# Accepting these and storing plain bytes would tell the client its data is encrypted.
ENCRYPTION_HEADERS = ("x-amz-server-side-encryption",
                      "x-amz-server-side-encryption-aws-kms-key-id")


def _refuse_unsupported(request: web.Request) -> None:
    storage_class = request.headers.get("x-amz-storage-class")
    if storage_class is not None and storage_class not in STORAGE_CLASSES:
        # Any valid class is taken and kept as STANDARD: the store has one class.
        raise InvalidStorageClass(StorageClassRequested=storage_class)
    for name in UNSUPPORTED_HEADERS:
        if name in request.headers:
            raise NotImplementedS3(f"the {name} header is not implemented by this gateway")
    for name in ENCRYPTION_HEADERS:
        if name in request.headers:
            raise NotImplementedS3(f"server-side encryption ({name}) is not implemented by "
                                   "this gateway: objects are stored unencrypted")


async def put_object(request: web.Request) -> web.Response:
    s3 = request[S3]
    config = request.app[CONFIG]
    headers = request.headers
    _refuse_unsupported(request)
    wanted = write_conditions(headers)
    digest = content_md5(headers)
    stream, check = open_body(request, config.max_put_size)
    await stream.preload()
    info = await run_upload(
        request, request.app[OBJECTS].put_object, s3.bucket, s3.key, stream.pieces(),
        metadata=user_metadata(headers), headers=content_headers(headers), content_md5=digest,
        checksum=(lambda: check.pair) if check is not None else None, conditions=wanted)
    out = {"ETag": f'"{info.etag}"'}
    if check is not None:
        out[check.header] = check.expected
    return web.Response(status=200, headers=out)


def write_conditions(headers: Mapping[str, str]) -> Conditions:
    """If-Match and If-None-Match of a write (PutObject, CompleteMultipartUpload)."""
    if_none_match = parse_etags(headers.get("if-none-match"))
    if if_none_match not in (None, ("*",)):
        raise NotImplementedS3("If-None-Match on a write takes only '*'")
    return Conditions(if_match=parse_etags(headers.get("if-match")), if_none_match=if_none_match)


def object_headers(request: web.Request, info: ObjectInfo) -> dict[str, str]:
    out = {
        "ETag": f'"{info.etag}"',
        "Last-Modified": http_date(info.mtime_ns),
        "Accept-Ranges": "bytes",
        "Content-Type": DEFAULT_CONTENT_TYPE,
    }
    for name, value in info.headers.items():
        out[HEADER_NAMES[name]] = value
    for name, value in info.metadata.items():
        out[f"x-amz-meta-{name}"] = value
    for param, header in RESPONSE_OVERRIDES.items():
        if param in request.query:
            out[header] = request.query[param]
    return out


async def get_object(request: web.Request) -> web.StreamResponse:
    return await _get(request, head=False)


async def head_object(request: web.Request) -> web.StreamResponse:
    return await _get(request, head=True)


async def _get(request: web.Request, head: bool) -> web.StreamResponse:
    s3 = request[S3]
    part_number = _part_number(request)
    config = request.app[CONFIG]
    objects = request.app[OBJECTS]
    sendfile = not head and can_sendfile(request)
    window = 0 if head else config.send_window if sendfile else config.read_window
    # One hop into the pool finds the object, checks conditions and range, and reads the first
    # window: each hop costs a thread wake-up and a GIL hand-over both ways.
    opening = request.app[EXECUTOR].call(
        functools.partial(_open_read, objects, s3.bucket, s3.key, conditions(request.headers),
                          request.headers.get("Range"), part_number, window,
                          config.inline_answer if sendfile else None),
        dropped=functools.partial(_abandoned, request))
    try:
        info, span, first, not_modified, held = await opening
    except asyncio.CancelledError:
        # Cancelled after the worker's answer was set but before this task resumed: the
        # answer is ours to let go of (the pool hands it to `dropped` only if it found the
        # future cancelled).
        if opening.done() and not opening.cancelled() and opening.exception() is None:
            _abandoned(request, opening.result())
        raise
    try:
        return await _answer(request, head, part_number, info, span, first, not_modified)
    finally:
        if held:  # in the pool, and not awaited: a cancelled GET must let go too
            _let_go(request, info.ino)


def _abandoned(request: web.Request,
               opened: tuple[ObjectInfo, Any, Piece, bool, bool]) -> None:
    """What `_open_read` found for a GET that was cancelled meanwhile: let go of it."""
    info, _span, first, _not_modified, held = opened
    _release(request, first)
    if held:
        _let_go(request, info.ino)


def _let_go(request: web.Request, ino: int) -> None:
    try:
        request.app[EXECUTOR].submit(request.app[OBJECTS].let_go, ino)
    except RuntimeError:  # the pool has shut down: the process is going
        pass


async def _answer(request: web.Request, head: bool, part_number: int | None,
                  info: ObjectInfo, span: tuple[int, int] | None, first: Piece,
                  not_modified: bool) -> web.StreamResponse:
    config = request.app[CONFIG]
    objects = request.app[OBJECTS]
    if not_modified:
        return web.Response(status=304, headers={"ETag": f'"{info.etag}"',
                                                 "Last-Modified": http_date(info.mtime_ns)})
    start, end = span or (0, info.size)
    headers = object_headers(request, info)
    checksum_mode = request.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED"
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
    if info.checksum is not None and checksum_mode and (span is None or part_number):
        # The whole object's, or for ?partNumber=N of a multipart object that part's.
        value = info.checksum[1]
        if part_number and info.part_sizes is not None:
            value = info.part_checksums[part_number - 1] if info.part_checksums else ""
        if value:
            headers[f"x-amz-checksum-{info.checksum[0]}"] = value
            headers["x-amz-checksum-type"] = checksum_type_of(info.checksum[1])
    if part_number is not None and info.part_sizes is not None:
        headers["x-amz-mp-parts-count"] = str(len(info.part_sizes))
    status = 206 if span else 200
    if not head and not isinstance(first, Extents) and start + len(first) == end:
        # The whole answer is in hand: aiohttp sends headers and body in one write (a view
        # would go through aiohttp's payload machinery instead; the copy is cheaper).
        body = first.obj if _whole_bytes(first) else bytes(first)  # type: ignore[union-attr]
        return web.Response(status=status, headers=headers, body=body)
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start
    try:
        await response.prepare(request)
    except BaseException:
        _release(request, first)
        raise
    if head:
        return response
    if isinstance(first, Extents):
        await _stream(request, response, start, end, first, config.send_window,
                      functools.partial(objects.extents, info.ino, info.version),
                      ExtentSender(request, response).send)
    else:
        await _stream(request, response, start, end, first, config.read_window,
                      functools.partial(objects.read, info.ino, info.version),
                      response.write)
    return response


def _whole_bytes(data: bytes | bytearray | memoryview) -> bool:
    return (isinstance(data, memoryview) and type(data.obj) is bytes
            and data.nbytes == len(data.obj))


Piece = bytes | bytearray | memoryview | Extents


def _part_number(request: web.Request) -> int | None:
    """GET/HEAD ?partNumber=N: the object's part N (a single-part object has one part), as a
    range of it (206)."""
    raw = request.query.get("partNumber")
    if raw is None:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        raise InvalidArgument("Part number must be an integer between 1 and 10000, inclusive")
    if "Range" in request.headers:
        raise InvalidRequest("Cannot specify both Range header and partNumber query parameter")
    return int(raw)


def _part_span(info: ObjectInfo, number: int) -> tuple[int, int] | None:
    sizes = info.part_sizes or (info.size,)
    if number > len(sizes):
        raise InvalidPartNumber(f"the object has {len(sizes)} part(s), not {number}")
    start = sum(sizes[:number - 1])
    return (start, start + sizes[number - 1]) if info.size else None


def _open_read(objects: Objects, bucket: str, key: bytes, wanted: Conditions,
               range_header: str | None, part_number: int | None, window: int,
               inline_answer: int | None
               ) -> tuple[ObjectInfo, tuple[int, int] | None, Piece, bool, bool]:
    """In a pool thread: (info, range, first window, not-modified, held) of a GET or HEAD
    (window 0). The first window is bytes, or, with `inline_answer` set, extents to sendfile
    when the answer is longer than that. An answer of several windows holds the object
    (`Objects.hold`; the caller lets go). A change between the lookup and the first window
    is retried here, before any header goes out."""
    for _attempt in range(3):
        info = objects.head_object(bucket, key)
        try:
            wanted.check(info.etag, info.mtime_ns, reading=True)
        except NotModified:
            return info, None, b"", True, False
        span = (_part_span(info, part_number) if part_number is not None
                else parse_range(range_header, info.size))
        start, end = span or (0, info.size)
        if not window or end == start:
            return info, span, b"", False, False
        read = (objects.extents if inline_answer is not None and end - start > inline_answer
                else objects.read)
        held = end - start > window
        if held:
            objects.hold(info.ino)
        try:
            return info, span, read(info.ino, info.version, start,
                                    min(window, end - start)), False, held
        except ObjectChanged:
            if held:
                objects.let_go(info.ino)
            continue
        except BaseException:
            if held:
                objects.let_go(info.ino)
            raise
    raise ServiceUnavailable("the object kept changing; please retry")


async def _stream(request: web.Request, response: web.StreamResponse, offset: int, end: int,
                  first: Piece, window: int, fetch: Callable[[int, int], Piece],
                  send: Callable[[Any], Awaitable[None]]) -> None:
    """Send `first` (the answer's bytes from `offset`), then the rest window by window,
    fetching the next in the pool while sending one. Headers are out: a failure here can
    only cut the connection (the client sees a short body, as S3 clients expect when an
    object changes under a GET)."""
    pending: asyncio.Future[Piece] | None = None
    piece = first
    try:
        while True:
            offset += len(piece)
            if offset < end:
                pending = asyncio.ensure_future(run(request, fetch, offset,
                                                    min(window, end - offset)))
            try:
                if piece:
                    await send(piece)
                    request[S3].streamed += len(piece)
            finally:
                _release(request, piece)
            if pending is None:
                break
            # Shielded: a cancelled GET must still close the extents the pool hands back.
            piece = await asyncio.shield(pending)
            pending = None
            if not piece:
                raise ObjectChanged("the object is shorter than it was")
        await response.write_eof()
    except ConnectionError:
        request[S3].error = "ClientDisconnected"
    except Exception as e:  # noqa: BLE001 - headers are out: no error response can follow
        # aiohttp finds the transport closed when it finishes the response, and lets it be.
        log.warning("GET %s cut off after headers: %s", request[S3].resource, e)
        request[S3].error = type(e).__name__
        if request.transport is not None:
            request.transport.close()
    finally:
        if pending is not None:
            pending.add_done_callback(functools.partial(_release_result, request))


def _release(request: web.Request, piece: Piece) -> None:
    if isinstance(piece, Extents):
        # In the pool: unmapping a window's populated map costs the event loop ~6%.
        try:
            request.app[EXECUTOR].submit(piece.close)
        except RuntimeError:  # the pool has shut down
            piece.close()


def _release_result(request: web.Request, future: asyncio.Future[Piece]) -> None:
    if not future.cancelled() and future.exception() is None:
        _release(request, future.result())


async def delete_object(request: web.Request) -> web.Response:
    s3 = request[S3]
    # If-Match makes it a conditional delete (412 when the ETag differs, 404 when there is no
    # object); If-None-Match and the other validators mean nothing to S3's DeleteObject.
    wanted = Conditions(if_match=parse_etags(request.headers.get("if-match")))
    await run(request, request.app[OBJECTS].delete_object, s3.bucket, s3.key, wanted)
    return web.Response(status=204)


def copy_source(headers: Mapping[str, str]) -> tuple[str, bytes]:
    """(bucket, key) of x-amz-copy-source (CopyObject, UploadPartCopy)."""
    source, _, source_query = headers["x-amz-copy-source"].partition("?")
    if source_query and source_query not in ("versionId=null", "versionId="):
        raise NotImplementedS3("versioned copy sources are not implemented")
    raw = unquote_to_bytes(source).lstrip(b"/")
    src_bucket, slash, src_key = raw.partition(b"/")
    if not slash or not src_key or not src_bucket:
        raise InvalidArgument("Copy Source must mention the source bucket and key: "
                              "sourcebucket/sourcekey", ArgumentName="x-amz-copy-source",
                              ArgumentValue=headers["x-amz-copy-source"])
    return src_bucket.decode(errors="replace"), src_key


async def copy_object(request: web.Request) -> web.Response:
    s3 = request[S3]
    headers = request.headers
    _refuse_unsupported(request)
    bucket, src_key = copy_source(headers)
    directive = headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise InvalidArgument("Unknown metadata directive.",
                              ArgumentName="x-amz-metadata-directive", ArgumentValue=directive)
    to_itself = (bucket, src_key) == (s3.bucket, s3.key)
    if to_itself and directive == "COPY" and "x-amz-storage-class" not in headers:
        raise InvalidRequest("This copy request is illegal because it is trying to copy an "
                             "object to itself without changing the object's metadata, storage "
                             "class, website redirect location or encryption attributes.")
    info = await run(request, request.app[OBJECTS].copy_object, bucket, src_key, s3.bucket,
                     s3.key, replace_metadata=directive == "REPLACE",
                     metadata=user_metadata(headers), headers=content_headers(headers),
                     source_conditions=conditions(headers, "x-amz-copy-source-"),
                     to_itself=to_itself)
    doc = xml.Node("CopyObjectResult", xmlns=xml.NS)
    doc.add("LastModified", xml.timestamp(info.mtime_ns)).add("ETag", f'"{info.etag}"')
    return xml_response(doc.render())


async def put_or_copy(request: web.Request) -> web.Response:
    if "x-amz-copy-source" in request.headers:
        request[S3].operation = "CopyObject"
        return await copy_object(request)
    return await put_object(request)


OBJECT_ATTRIBUTES = ("ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize")


async def get_object_attributes(request: web.Request) -> web.Response:
    """GetObjectAttributes: what x-amz-object-attributes asks of ETag, Checksum, ObjectParts
    (a multipart object's part sizes; part checksums are not kept once it is complete),
    StorageClass and ObjectSize, without the body."""
    s3 = request[S3]
    wanted = {a.strip() for a in request.headers.get("x-amz-object-attributes", "").split(",")
              if a.strip()}
    if not wanted or wanted - set(OBJECT_ATTRIBUTES):
        raise InvalidArgument("x-amz-object-attributes must name some of "
                              f"{', '.join(OBJECT_ATTRIBUTES)}",
                              ArgumentName="x-amz-object-attributes")
    max_parts = _int_header(request, "x-amz-max-parts", 1000)
    marker = _int_header(request, "x-amz-part-number-marker", 0)
    info = await run(request, request.app[OBJECTS].head_object, s3.bucket, s3.key)
    doc = xml.Node("GetObjectAttributesResponse", xmlns=xml.NS)
    if "ETag" in wanted:
        doc.add("ETag", info.etag)
    if "Checksum" in wanted and info.checksum is not None:
        algorithm, value = info.checksum
        doc.child("Checksum").add(f"Checksum{algorithm.upper()}", value).add(
            "ChecksumType", checksum_type_of(value))
    if "ObjectParts" in wanted and info.part_sizes is not None:
        parts = doc.child("ObjectParts")
        listed = list(enumerate(info.part_sizes, 1))[marker:marker + max_parts]
        parts.add("PartsCount", len(info.part_sizes)).add("PartNumberMarker", marker)
        if listed:
            parts.add("NextPartNumberMarker", listed[-1][0])
        parts.add("MaxParts", max_parts).add(
            "IsTruncated", bool(listed) and listed[-1][0] < len(info.part_sizes))
        for number, size in listed:
            parts.child("Part").add("PartNumber", number).add("Size", size)
    if "StorageClass" in wanted:
        doc.add("StorageClass", "STANDARD")
    if "ObjectSize" in wanted:
        doc.add("ObjectSize", info.size)
    response = xml_response(doc.render())
    response.headers["Last-Modified"] = http_date(info.mtime_ns)
    return response


def _int_header(request: web.Request, name: str, default: int) -> int:
    raw = request.headers.get(name)
    if raw is None:
        return default
    if not raw.strip().isdigit():
        raise InvalidArgument(f"{name} must be a non-negative integer", ArgumentName=name,
                              ArgumentValue=raw)
    return int(raw)


ROUTES = [
    ("object", "GET", "attributes", "GetObjectAttributes", get_object_attributes),
    ("object", "PUT", "", "PutObject", put_or_copy),
    ("object", "GET", "", "GetObject", get_object),
    ("object", "HEAD", "", "HeadObject", head_object),
    ("object", "GET", "partNumber", "GetObject", get_object),
    ("object", "HEAD", "partNumber", "HeadObject", head_object),
    ("object", "DELETE", "", "DeleteObject", delete_object),
]
