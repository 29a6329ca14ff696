"""Multipart upload operations: CreateMultipartUpload, UploadPart, UploadPartCopy,
CompleteMultipartUpload, AbortMultipartUpload, ListParts, ListMultipartUploads.

The semantics (staging, references, stitching) are in `vfsd.store.multipart`; this module
parses requests and renders S3's XML.
"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from vfsd.store.checksums import TYPES as CHECKSUM_TYPES
from vfsd.store.checksums import type_of as checksum_type_of

from . import xml
from .body import open_body, read_small
from .buckets import xml_response
from .context import CONFIG, MULTIPART, S3, owner, run, run_upload
from .errors import InvalidArgument, InvalidRequest, MalformedXML
from .headers import checksum, conditions, content_headers, content_md5, user_metadata
from .listing import raw_params
from .objects import _refuse_unsupported, copy_source, write_conditions

MAX_PART_SIZE = 5 << 30
MAX_PARTS_LISTED = 1000
MAX_UPLOADS_LISTED = 1000
CHECKSUM_ALGORITHMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    value = request.query.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise InvalidArgument(f"{name} must be an integer", ArgumentName=name,
                              ArgumentValue=value) from None
    if not low <= number <= high:
        raise InvalidArgument(f"{name} must be between {low} and {high}", ArgumentName=name,
                              ArgumentValue=value)
    return number


def _upload_id(request: web.Request) -> str:
    return request.query.get("uploadId", "")


async def create_multipart_upload(request: web.Request) -> web.Response:
    s3 = request[S3]
    _refuse_unsupported(request)
    algorithm = request.headers.get("x-amz-checksum-algorithm")
    if algorithm is not None and algorithm.upper() not in CHECKSUM_ALGORITHMS:
        raise InvalidRequest(f"Checksum algorithm {algorithm} is not supported")
    upload = await run(request, request.app[MULTIPART].create, s3.bucket, s3.key,
                       metadata=user_metadata(request.headers),
                       headers=content_headers(request.headers),
                       checksum_algorithm=algorithm.lower() if algorithm else None,
                       checksum_type=_checksum_type(request))
    doc = xml.Node("InitiateMultipartUploadResult", xmlns=xml.NS)
    doc.add("Bucket", s3.bucket).add("Key", s3.key_text).add("UploadId", upload.upload_id)
    headers = {}
    if upload.checksum_algorithm and upload.checksum_type:
        headers["x-amz-checksum-algorithm"] = upload.checksum_algorithm.upper()
        headers["x-amz-checksum-type"] = upload.checksum_type
    response = xml_response(doc.render())
    response.headers.update(headers)
    return response


async def upload_part(request: web.Request) -> web.Response:
    s3 = request[S3]
    if "x-amz-copy-source" in request.headers:
        s3.operation = "UploadPartCopy"
        return await upload_part_copy(request)
    if "uploadId" not in request.query or "partNumber" not in request.query:
        raise InvalidRequest("UploadPart needs both partNumber and uploadId")
    number = _int(request, "partNumber", 0, 1, 10_000)
    stream, check = open_body(request, MAX_PART_SIZE)
    part = await run_upload(
        request, request.app[MULTIPART].upload_part, s3.bucket, s3.key, _upload_id(request),
        number, stream.pieces(), content_md5=content_md5(request.headers),
        checksum=(lambda: check.pair) if check is not None else None)
    out = {"ETag": f'"{part.etag}"'}
    if check is not None:
        out[check.header] = check.expected
    return web.Response(status=200, headers=out)


async def upload_part_copy(request: web.Request) -> web.Response:
    s3 = request[S3]
    number = _int(request, "partNumber", 0, 1, 10_000)
    src_bucket, src_key = copy_source(request.headers)
    span = None
    spec = request.headers.get("x-amz-copy-source-range")
    if spec is not None:
        unit, _, rest = spec.strip().partition("=")
        first, _, last = rest.partition("-")
        try:
            start, stop = int(first), int(last) + 1
        except ValueError:
            start = stop = -1
        if unit != "bytes" or start < 0 or stop <= start:
            raise InvalidArgument("The x-amz-copy-source-range value must be of the form "
                                  "bytes=first-last where first and last are the zero-based "
                                  "offsets of the first and last bytes to copy",
                                  ArgumentName="x-amz-copy-source-range", ArgumentValue=spec)
        span = (start, stop)
    part = await run_upload(
        request, request.app[MULTIPART].upload_part_copy, s3.bucket, s3.key,
        _upload_id(request), number, src_bucket, src_key, span,
        conditions(request.headers, "x-amz-copy-source-"))
    doc = xml.Node("CopyPartResult", xmlns=xml.NS)
    doc.add("LastModified", xml.timestamp(part.mtime_ns)).add("ETag", f'"{part.etag}"')
    return xml_response(doc.render())


def _checksum_type(request: web.Request) -> str | None:
    value = request.headers.get("x-amz-checksum-type")
    if value is None:
        return None
    if value.upper() not in CHECKSUM_TYPES:
        raise InvalidRequest(f"x-amz-checksum-type must be one of {', '.join(CHECKSUM_TYPES)}")
    return value.upper()


def parse_complete(body: bytes) -> tuple[list[tuple[int, str]], dict[int, tuple[str, str]]]:
    """(part number and ETag of each listed part, the checksums the list gives them)."""
    root = xml.parse(body)
    if root.tag != "CompleteMultipartUpload":
        raise MalformedXML()
    parts = []
    listed: dict[int, tuple[str, str]] = {}
    for element in root.findall("Part"):
        number, etag = element.findtext("PartNumber"), element.findtext("ETag")
        if number is None or etag is None:
            raise MalformedXML()
        try:
            parts.append((int(number.strip()), etag.strip()))
        except ValueError:
            raise MalformedXML() from None
        for algorithm in CHECKSUM_ALGORITHMS:
            value = element.findtext(f"Checksum{algorithm}")
            if value is not None:
                listed[parts[-1][0]] = (algorithm.lower(), value.strip())
    if not parts:
        raise MalformedXML("You must specify at least one part")
    return parts, listed


async def complete_multipart_upload(request: web.Request) -> web.Response:
    s3 = request[S3]
    identity = s3.identity
    # x-amz-checksum-<algorithm> here is the object's checksum (made of its parts'), not the
    # XML body's; a COMPOSITE one may come with its -<part count>.
    claimed = checksum({name: value.strip().partition("-")[0]
                        for name, value in request.headers.items()
                        if name.lower().startswith("x-amz-checksum-")})
    checksum_type = _checksum_type(request)
    wanted = write_conditions(request.headers)
    body = await read_small(request, identity.payload_sha256 if identity else None, None,
                            request.app[CONFIG].max_xml_body)
    parts, listed = parse_complete(body)
    info = await run(request, request.app[MULTIPART].complete, s3.bucket, s3.key,
                     _upload_id(request), parts, listed_checksums=listed,
                     checksum=claimed.pair if claimed is not None else None,
                     checksum_type=checksum_type, conditions=wanted)
    doc = xml.Node("CompleteMultipartUploadResult", xmlns=xml.NS)
    location = f"{request.scheme}://{request.host}/{s3.bucket}/{quote(s3.key or b'')}"
    doc.add("Location", location).add("Bucket", s3.bucket).add("Key", s3.key_text)
    doc.add("ETag", f'"{info.etag}"')
    if info.checksum is not None:
        algorithm, value = info.checksum
        doc.add(f"Checksum{algorithm.upper()}", value)
        doc.add("ChecksumType", checksum_type_of(value))
    return xml_response(doc.render())


async def abort_multipart_upload(request: web.Request) -> web.Response:
    s3 = request[S3]
    await run(request, request.app[MULTIPART].abort, s3.bucket, s3.key, _upload_id(request))
    return web.Response(status=204)


def _people(doc: xml.Node, request: web.Request) -> None:
    ident, name = owner(request)
    for tag in ("Initiator", "Owner"):
        doc.child(tag).add("ID", ident).add("DisplayName", name)


async def list_parts(request: web.Request) -> web.Response:
    s3 = request[S3]
    marker = _int(request, "part-number-marker", 0, 0, 10_000)
    max_parts = _int(request, "max-parts", MAX_PARTS_LISTED, 0, MAX_PARTS_LISTED)
    upload, parts, truncated = await run(request, request.app[MULTIPART].list_parts,
                                         s3.bucket, s3.key, _upload_id(request), marker,
                                         max_parts)
    doc = xml.Node("ListPartsResult", xmlns=xml.NS)
    doc.add("Bucket", s3.bucket).add("Key", s3.key_text).add("UploadId", upload.upload_id)
    _people(doc, request)
    doc.add("StorageClass", "STANDARD").add("PartNumberMarker", marker)
    if parts:
        doc.add("NextPartNumberMarker", parts[-1].number)
    doc.add("MaxParts", max_parts).add("IsTruncated", truncated)
    if upload.checksum_algorithm and upload.checksum_type:
        doc.add("ChecksumAlgorithm", upload.checksum_algorithm.upper())
        doc.add("ChecksumType", upload.checksum_type)
    for part in parts:
        node = doc.child("Part")
        node.add("PartNumber", part.number).add("LastModified", xml.timestamp(part.mtime_ns))
        node.add("ETag", f'"{part.etag}"').add("Size", part.size)
        if part.checksum:
            node.add(f"Checksum{part.checksum[0].upper()}", part.checksum[1])
    return xml_response(doc.render())


async def list_multipart_uploads(request: web.Request) -> web.Response:
    s3 = request[S3]
    params = raw_params(request)
    encoding = params.get("encoding-type")
    if encoding is not None and encoding.lower() != b"url":
        raise InvalidArgument("Invalid Encoding Method specified in Request",
                              ArgumentName="encoding-type")

    def text(value: bytes) -> str:
        return quote(value, safe="/") if encoding is not None else value.decode(
            errors="replace")

    prefix = params.get("prefix", b"")
    delimiter = params.get("delimiter", b"")
    key_marker = params.get("key-marker", b"")
    id_marker = params.get("upload-id-marker", b"").decode(errors="replace")
    max_uploads = _int(request, "max-uploads", MAX_UPLOADS_LISTED, 0, MAX_UPLOADS_LISTED)
    listed, truncated = await run(request, request.app[MULTIPART].list_uploads, s3.bucket,
                                  prefix, key_marker, id_marker, max_uploads, delimiter)
    doc = xml.Node("ListMultipartUploadsResult", xmlns=xml.NS)
    doc.add("Bucket", s3.bucket).add("KeyMarker", text(key_marker))
    doc.add("UploadIdMarker", id_marker)
    if listed:
        last = listed[-1]
        doc.add("NextKeyMarker", text(last if isinstance(last, bytes) else last.key))
        doc.add("NextUploadIdMarker", "" if isinstance(last, bytes) else last.upload_id)
    doc.add("Prefix", text(prefix))
    if delimiter:
        doc.add("Delimiter", text(delimiter))
    if encoding is not None:
        doc.add("EncodingType", "url")
    doc.add("MaxUploads", max_uploads).add("IsTruncated", truncated)
    ident, name = owner(request)
    for entry in listed:
        if isinstance(entry, bytes):
            continue
        node = doc.child("Upload")
        node.add("Key", text(entry.key)).add("UploadId", entry.upload_id)
        for tag in ("Initiator", "Owner"):
            node.child(tag).add("ID", ident).add("DisplayName", name)
        node.add("StorageClass", "STANDARD").add("Initiated", xml.timestamp(entry.initiated_ns))
    for entry in listed:
        if isinstance(entry, bytes):
            doc.child("CommonPrefixes").add("Prefix", text(entry))
    return xml_response(doc.render())


ROUTES = [
    ("object", "POST", "uploads", "CreateMultipartUpload", create_multipart_upload),
    ("object", "PUT", "partNumber", "UploadPart", upload_part),
    ("object", "PUT", "uploadId", "UploadPart", upload_part),
    ("object", "POST", "uploadId", "CompleteMultipartUpload", complete_multipart_upload),
    ("object", "DELETE", "uploadId", "AbortMultipartUpload", abort_multipart_upload),
    ("object", "GET", "uploadId", "ListParts", list_parts),
    ("bucket", "GET", "uploads", "ListMultipartUploads", list_multipart_uploads),
]
