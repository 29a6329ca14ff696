"""ListObjects (v1) and ListObjectsV2 over the core's key index."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import quote, unquote_to_bytes

from aiohttp import web

from vfsd.store.listing import Listing

from . import xml
from .buckets import _int_param, xml_response
from .context import OBJECTS, S3, owner, run
from .errors import InvalidArgument

MAX_KEYS = 1000


def raw_params(request: web.Request) -> dict[str, bytes]:
    """Query parameters as bytes (keys may be any bytes; '+' is a space, as in forms)."""
    out: dict[str, bytes] = {}
    for part in request.raw_path.partition("?")[2].split("&"):
        if part:
            name, _, value = part.partition("=")
            out.setdefault(unquote_to_bytes(name.replace("+", " ")).decode(errors="replace"),
                           unquote_to_bytes(value.replace("+", " ")))
    return out


_TOKEN_VERSION = b"\x01"  # continuation tokens are opaque to clients: versioned, checked


def _token_encode(last: bytes) -> str:
    return base64.urlsafe_b64encode(_TOKEN_VERSION + last).decode()


def _token_decode(token: bytes) -> bytes:
    try:
        raw = base64.b64decode(token, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw.startswith(_TOKEN_VERSION):
        raise InvalidArgument("The continuation token provided is incorrect",
                              ArgumentName="continuation-token")
    return raw[len(_TOKEN_VERSION):]


async def list_objects(request: web.Request) -> web.Response:
    s3 = request[S3]
    params = raw_params(request)
    v2 = params.get("list-type") == b"2"
    if v2:
        s3.operation = "ListObjectsV2"
    encoding = params.get("encoding-type")
    if encoding is not None and encoding.lower() != b"url":
        raise InvalidArgument("Invalid Encoding Method specified in Request",
                              ArgumentName="encoding-type")
    url = encoding is not None

    def text(value: bytes) -> str:
        if url:
            return quote(value, safe="/")
        return value.decode(errors="replace")

    prefix = params.get("prefix", b"")
    delimiter = params.get("delimiter", b"")
    max_keys = _int_param(request, "max-keys", MAX_KEYS, 0, MAX_KEYS)
    if v2:
        token = params.get("continuation-token")
        start_after = params.get("start-after", b"")
        start = max(start_after, _token_decode(token)) if token is not None else start_after
    else:
        marker = params.get("marker", b"")
        start = marker
    listing: Listing = await run(request, request.app[OBJECTS].list_objects, s3.bucket, prefix,
                                 delimiter, start, max_keys)
    doc = xml.Node("ListBucketResult", xmlns=xml.NS)
    doc.add("Name", s3.bucket).add("Prefix", text(prefix))
    if v2:
        if token is not None:
            doc.add("ContinuationToken", token.decode(errors="replace"))
        if start_after:
            doc.add("StartAfter", text(start_after))
        doc.add("KeyCount", len(listing.objects) + len(listing.prefixes))
    else:
        doc.add("Marker", text(marker))
        if listing.truncated and listing.last is not None:
            doc.add("NextMarker", text(listing.last))
    doc.add("MaxKeys", max_keys)
    if delimiter:
        doc.add("Delimiter", text(delimiter))
    if url:
        doc.add("EncodingType", "url")
    doc.add("IsTruncated", listing.truncated)
    if v2 and listing.truncated and listing.last is not None:
        doc.add("NextContinuationToken", _token_encode(listing.last))
    fetch_owner = not v2 or params.get("fetch-owner", b"").lower() == b"true"
    owner_id, owner_name = owner(request)
    for entry in listing.objects:
        item = doc.child("Contents")
        item.add("Key", text(entry.key)).add("LastModified", xml.timestamp(entry.mtime_ns))
        item.add("ETag", f'"{entry.etag}"').add("Size", entry.size)
        if fetch_owner:
            item.child("Owner").add("ID", owner_id).add("DisplayName", owner_name)
        item.add("StorageClass", "STANDARD")
    for common in listing.prefixes:
        doc.child("CommonPrefixes").add("Prefix", text(common))
    return xml_response(doc.render())


ROUTES = [("bucket", "GET", "", "ListObjects", list_objects)]
