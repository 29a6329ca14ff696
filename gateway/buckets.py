"""Service- and bucket-level operations: ListBuckets, CreateBucket, HeadBucket, DeleteBucket,
GetBucketLocation, GetBucketVersioning, DeleteObjects. Thin: parse, call the core in the pool, render."""

from __future__ import annotations

import base64
import binascii

from aiohttp import web

from vfsd.store.conditions import Conditions
from vfsd.store.errors import StoreError

from . import xml
from .body import read_small
from .context import CONFIG, OBJECTS, S3, owner, run
from .errors import (
    InvalidArgument,
    InvalidLocationConstraint,
    NotImplementedS3,
    S3Error,
    from_core,
)
from .headers import checksum, parse_etags


def xml_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=xml.CONTENT_TYPE)


async def list_buckets(request: web.Request) -> web.Response:
    prefix = request.query.get("prefix", "")
    token = request.query.get("continuation-token")
    start = ""
    if token:
        try:
            start = base64.urlsafe_b64decode(token.encode()).decode()
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise InvalidArgument("The continuation token provided is incorrect") from None
    limit = _int_param(request, "max-buckets", 10_000, 1, 10_000)
    buckets = [b for b in await run(request, request.app[OBJECTS].list_buckets)
               if b.name.startswith(prefix) and b.name > start]
    page, more = buckets[:limit], len(buckets) > limit
    owner_id, owner_name = owner(request)
    doc = xml.Node("ListAllMyBucketsResult", xmlns=xml.NS)
    doc.child("Owner").add("ID", owner_id).add("DisplayName", owner_name)
    listed = doc.child("Buckets")
    for bucket in page:
        listed.child("Bucket").add("Name", bucket.name).add(
            "CreationDate", xml.timestamp(bucket.created_ns)).add(
            "BucketRegion", request.app[CONFIG].region)
    if more:
        doc.add("ContinuationToken",
                base64.urlsafe_b64encode(page[-1].name.encode()).decode())
    if prefix:
        doc.add("Prefix", prefix)
    return xml_response(doc.render())


async def create_bucket(request: web.Request) -> web.Response:
    s3 = request[S3]
    config = request.app[CONFIG]
    if request.headers.get("x-amz-bucket-object-lock-enabled", "").lower() == "true":
        raise NotImplementedS3("object lock is not implemented")
    identity = s3.identity
    body = await read_small(request, identity.payload_sha256 if identity else None,
                            checksum(request.headers), config.max_xml_body)
    location = xml.parse_location_constraint(body)
    if location is not None and location != config.region:
        raise InvalidLocationConstraint(
            f"The specified location-constraint is not valid for this endpoint "
            f"(its region is {config.region})", LocationConstraint=location)
    assert s3.bucket is not None
    await run(request, request.app[OBJECTS].create_bucket, s3.bucket)
    return web.Response(status=200, headers={"Location": f"/{s3.bucket}"})


async def head_bucket(request: web.Request) -> web.Response:
    s3 = request[S3]
    await run(request, request.app[OBJECTS].head_bucket, s3.bucket)
    return web.Response(status=200, headers={
        "x-amz-bucket-region": request.app[CONFIG].region})


async def delete_bucket(request: web.Request) -> web.Response:
    await run(request, request.app[OBJECTS].delete_bucket, request[S3].bucket)
    return web.Response(status=204)


async def get_bucket_location(request: web.Request) -> web.Response:
    await run(request, request.app[OBJECTS].head_bucket, request[S3].bucket)
    region = request.app[CONFIG].region
    doc = xml.Node("LocationConstraint", xmlns=xml.NS)
    if region != "us-east-1":  # S3 answers an empty constraint for us-east-1
        doc.element.text = region
    return xml_response(doc.render())


async def get_bucket_versioning(request: web.Request) -> web.Response:
    """What S3 answers for a bucket never versioned (clients such as rclone ask routinely);
    turning versioning on (PUT ?versioning) is not implemented."""
    await run(request, request.app[OBJECTS].head_bucket, request[S3].bucket)
    return xml_response(xml.Node("VersioningConfiguration", xmlns=xml.NS).render())


async def delete_objects(request: web.Request) -> web.Response:
    s3 = request[S3]
    identity = s3.identity
    body = await read_small(request, identity.payload_sha256 if identity else None,
                            checksum(request.headers), request.app[CONFIG].max_xml_body)
    keys, quiet, etags = xml.parse_delete(body)
    wanted = {key: Conditions(if_match=parse_etags(etag)) for key, etag in etags.items()}
    outcomes = await run(request, request.app[OBJECTS].delete_objects, s3.bucket, keys,
                         wanted)
    doc = xml.Node("DeleteResult", xmlns=xml.NS)
    for key, error in outcomes:
        text = key.decode(errors="surrogateescape")
        if error is None:
            if not quiet:
                doc.child("Deleted").add("Key", text)
            continue
        mapped = from_core(error) if isinstance(error, StoreError) else S3Error()
        doc.child("Error").add("Key", text).add("Code", mapped.code).add(
            "Message", mapped.message)
    return xml_response(doc.render())


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgument(f"Provided {name} not an integer or within integer range",
                              ArgumentName=name, ArgumentValue=raw) from None
    if value < low:
        raise InvalidArgument(f"Argument {name} must be an integer between {low} and {high}",
                              ArgumentName=name, ArgumentValue=raw)
    return min(value, high)


ROUTES = [
    ("service", "GET", "", "ListBuckets", list_buckets),
    ("bucket", "PUT", "", "CreateBucket", create_bucket),
    ("bucket", "HEAD", "", "HeadBucket", head_bucket),
    ("bucket", "DELETE", "", "DeleteBucket", delete_bucket),
    ("bucket", "GET", "location", "GetBucketLocation", get_bucket_location),
    ("bucket", "GET", "versioning", "GetBucketVersioning", get_bucket_versioning),
    ("bucket", "POST", "delete", "DeleteObjects", delete_objects),
]
