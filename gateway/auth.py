"""AWS Signature Version 4 (the Authorization header and presigned URLs), and the legacy
Signature Version 2 presigned URL, which is what boto3's `generate_presigned_url` makes by
default (AWSAccessKeyId/Signature/Expires in the query).

`verify` checks everything about a request's signature that can be checked before its body is
read. A signed payload hash (x-amz-content-sha256 with a hex value) is returned to the caller,
which compares it with the body as the body streams by (XAmzContentSHA256Mismatch).
An aws-chunked body (STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER],
STREAMING-UNSIGNED-PAYLOAD-TRAILER) gets a `Streaming` with the signing key and the seed
signature; `gateway.body` checks each chunk's signature against it as the body arrives.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote_to_bytes

from vfsd.store.users import User

from .errors import (
    AccessDenied,
    AuthorizationHeaderMalformed,
    AuthorizationQueryParametersError,
    InvalidAccessKeyId,
    InvalidArgument,
    InvalidRequest,
    NotImplementedS3,
    RequestTimeTooSkewed,
    SignatureDoesNotMatch,
)

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy  # aiohttp's header type

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SPACES = re.compile(r"\s+")
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_ISO = "%Y-%m-%dT%H:%M:%SZ"

UserLookup = Callable[[str], Awaitable[User | None]]


STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING = (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Streaming:
    """An aws-chunked body (x-amz-content-sha256: STREAMING-*): what it takes to check the
    chain of chunk signatures that starts at the request's own signature."""

    mode: str  # one of STREAMING
    key: bytes  # the SigV4 signing key
    amz_date: str
    scope: str
    seed: str  # the request's signature: the first chunk's "previous signature"

    @property
    def signed(self) -> bool:
        return self.mode != STREAMING_UNSIGNED_TRAILER

    @property
    def trailer(self) -> bool:
        return self.mode != STREAMING_SIGNED

    def chunk_signature(self, previous: str, data_sha256: str) -> str:
        to_sign = (f"AWS4-HMAC-SHA256-PAYLOAD\n{self.amz_date}\n{self.scope}\n{previous}\n"
                   f"{EMPTY_SHA256}\n{data_sha256}")
        return hmac.digest(self.key, to_sign.encode(), "sha256").hex()

    def trailer_signature(self, previous: str, trailers: bytes) -> str:
        to_sign = "\n".join(["AWS4-HMAC-SHA256-TRAILER", self.amz_date, self.scope, previous,
                             hashlib.sha256(trailers).hexdigest()])
        return hmac.digest(self.key, to_sign.encode(), "sha256").hex()


@dataclass(frozen=True)
class Identity:
    """Who signed the request, and what its signature says about the body."""

    user: User
    payload_sha256: str | None  # hex digest the body must have; None when unsigned
    presigned: bool
    streaming: Streaming | None = None  # set for aws-chunked bodies


@dataclass(frozen=True)
class _Parsed:
    access_key: str
    date: str  # yyyymmdd from the credential scope
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str  # yyyymmddThhmmssZ
    payload: str  # what goes in the canonical request's last line


async def verify(method: str, raw_path: str, headers: CIMultiDictProxy[str],
                 lookup: UserLookup, region: str, max_skew: float,
                 now: datetime.datetime | None = None, bucket_host: str | None = None
                 ) -> Identity:
    """Authenticate a request or raise the S3 error AWS would. `bucket_host` is the bucket
    of a virtual-host-style request (SigV2 signs the path with the bucket in front)."""
    now = now or datetime.datetime.now(datetime.UTC)
    path, _, query = raw_path.partition("?")
    params = _query_pairs(query)
    if "authorization" in headers:
        parsed = _parse_header(headers)
        presigned = False
    elif any(k == "X-Amz-Algorithm" for k, _v in params):
        parsed = _parse_query(params, headers, now, max_skew)
        presigned = True
    elif any(k == "AWSAccessKeyId" for k, _v in params):
        return await _verify_v2_query(method, path, params, headers, lookup, now, bucket_host)
    else:
        raise AccessDenied("Anonymous access is not allowed; sign requests with AWS SigV4.")
    if parsed.date != parsed.amz_date[:8]:
        raise _malformed(presigned, f"Invalid credential date \"{parsed.date}\". This date is "
                         f"not the same as X-Amz-Date: \"{parsed.amz_date[:8]}\".")
    if parsed.region != region:
        raise _malformed(presigned, f"The authorization header is malformed; the region "
                         f"'{parsed.region}' is wrong; expecting '{region}'", region)
    if parsed.service != "s3":
        raise _malformed(presigned, f"The authorization header is malformed; incorrect "
                         f"service \"{parsed.service}\". This endpoint belongs to \"s3\".")
    if "host" not in parsed.signed_headers:
        raise _malformed(presigned, "The host header must be signed.")
    if not presigned:
        moment = _parse_amz_date(parsed.amz_date)
        if abs((now - moment).total_seconds()) > max_skew:
            raise RequestTimeTooSkewed(RequestTime=parsed.amz_date,
                                       ServerTime=now.strftime(_ISO),
                                       MaxAllowedSkewMilliseconds=str(int(max_skew * 1000)))
    user = await lookup(parsed.access_key)
    if user is None:
        raise InvalidAccessKeyId(AWSAccessKeyId=parsed.access_key)
    scope = f"{parsed.date}/{parsed.region}/{parsed.service}/aws4_request"
    key = signing_key(user.secret_key, parsed.date, parsed.region, parsed.service)
    canonical_headers = "".join(f"{name}:{_header_value(headers, name)}\n"
                                for name in parsed.signed_headers)
    # The request exactly as sent (cheap: no re-encoding; what botocore signs, since it
    # encodes the way SigV4 asks), then the canonical forms (for clients that send an encoding
    # other than the one they signed). Later forms are built only if earlier ones fail.
    def forms() -> Iterator[tuple[str, str]]:
        seen = set()
        for canonical_path in (path or "/", None):
            for query_part in (_raw_sorted_query(query, presigned), None):
                form = (canonical_uri(path) if canonical_path is None else canonical_path,
                        canonical_query(_signed_params(params, presigned)) if query_part is None
                        else query_part)
                if form not in seen:
                    seen.add(form)
                    yield form

    attempts = []
    for canonical_path, query_part in forms():
        canonical = "\n".join([method, canonical_path, query_part, canonical_headers,
                               ";".join(parsed.signed_headers), parsed.payload])
        to_sign = "\n".join([ALGORITHM, parsed.amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        expected = hmac.digest(key, to_sign.encode(), "sha256").hex()
        if hmac.compare_digest(expected, parsed.signature):
            payload = parsed.payload if _HEX64.match(parsed.payload) else None
            streaming = None
            if parsed.payload in STREAMING:
                streaming = Streaming(parsed.payload, key, parsed.amz_date, scope,
                                      parsed.signature)
            return Identity(user, payload, presigned, streaming)
        attempts.append((canonical, to_sign))
    canonical, to_sign = attempts[-1]  # the fully canonical form: what AWS would report
    raise SignatureDoesNotMatch(AWSAccessKeyId=parsed.access_key, StringToSign=to_sign,
                                SignatureProvided=parsed.signature, CanonicalRequest=canonical)


# Query parameters that SigV2 signs as part of the resource (botocore's HmacV1Auth list).
_V2_SUBRESOURCES = frozenset({
    "accelerate", "acl", "cors", "defaultObjectAcl", "location", "logging", "partNumber",
    "policy", "requestPayment", "torrent", "versioning", "versionId", "versions", "website",
    "uploads", "uploadId", "response-content-type", "response-content-language",
    "response-expires", "response-cache-control", "response-content-disposition",
    "response-content-encoding", "delete", "lifecycle", "tagging", "restore", "storageClass",
    "notification", "replication", "analytics", "metrics", "inventory", "select",
    "select-type", "object-lock",
})


async def _verify_v2_query(method: str, path: str, params: list[tuple[str, str]],
                           headers: CIMultiDictProxy[str], lookup: UserLookup,
                           now: datetime.datetime, bucket_host: str | None) -> Identity:
    """SigV2 query auth: HMAC-SHA1 over method, Content-MD5, Content-Type, Expires, the
    x-amz-* headers and the resource. The payload is never signed."""
    q = dict(params)
    access_key, signature, expires = (q.get("AWSAccessKeyId"), q.get("Signature"),
                                      q.get("Expires"))
    if not access_key or not signature or not expires:
        raise AccessDenied("Query-string authentication requires the Signature, Expires and "
                           "AWSAccessKeyId parameters")
    try:
        expiry = int(expires)
    except ValueError:
        raise AccessDenied("Invalid date (should be seconds since epoch)") from None
    if now.timestamp() > expiry:
        raise AccessDenied("Request has expired", Expires=expires,
                           ServerTime=now.strftime(_ISO))
    user = await lookup(access_key)
    if user is None:
        raise InvalidAccessKeyId(AWSAccessKeyId=access_key)
    amz = {}
    for name in headers:
        lower = name.lower()
        if lower.startswith("x-amz-") and lower not in amz:
            amz[lower] = ",".join(v.strip() for v in headers.getall(name))
    resource = (f"/{bucket_host}" if bucket_host else "") + (path or "/")
    sub = sorted((k, v) for k, v in params if k in _V2_SUBRESOURCES)
    if sub:
        resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in sub)
    to_sign = "\n".join([method, headers.get("content-md5", "").strip(),
                         headers.get("content-type", "").strip(), expires]) + "\n"
    to_sign += "".join(f"{k}:{v}\n" for k, v in sorted(amz.items())) + resource
    expected = base64.b64encode(
        hmac.new(user.secret_key.encode(), to_sign.encode(), hashlib.sha1).digest()).decode()
    if not hmac.compare_digest(expected, signature):
        raise SignatureDoesNotMatch(AWSAccessKeyId=access_key, StringToSign=to_sign,
                                    SignatureProvided=signature)
    return Identity(user, None, True)


def _malformed(presigned: bool, message: str, region: str | None = None) -> Exception:
    cls = AuthorizationQueryParametersError if presigned else AuthorizationHeaderMalformed
    return cls(message, Region=region) if region else cls(message)


def _check_payload(value: str, presigned: bool = False) -> str:
    if value in STREAMING and not presigned:
        return value
    if value.startswith("STREAMING-"):
        raise NotImplementedS3("aws-chunked request bodies (x-amz-content-sha256: "
                               f"{value}) are not supported yet")
    if value != UNSIGNED and not _HEX64.match(value):
        raise InvalidArgument("x-amz-content-sha256 must be UNSIGNED-PAYLOAD, or a valid "
                              "sha256 value.", ArgumentName="x-amz-content-sha256",
                              ArgumentValue=value)
    return value


def _credential(value: str, presigned: bool) -> tuple[str, str, str, str]:
    parts = value.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not parts[0]:
        raise _malformed(presigned, "Error parsing the X-Amz-Credential parameter; the "
                         "Credential is mal-formed; expecting \"<YOUR-AKID>/YYYYMMDD/REGION/"
                         "SERVICE/aws4_request\".")
    return parts[0], parts[1], parts[2], parts[3]


def _parse_header(headers: CIMultiDictProxy[str]) -> _Parsed:
    value = headers["authorization"]
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise InvalidRequest("The authorization mechanism you have provided is not supported. "
                             "Please use AWS4-HMAC-SHA256.")
    fields = {}
    for item in rest.split(","):
        name, eq, val = item.strip().partition("=")
        if eq:
            fields[name.strip()] = val.strip()
    try:
        credential = fields["Credential"]
        signed = fields["SignedHeaders"]
        signature = fields["Signature"]
    except KeyError:
        raise AuthorizationHeaderMalformed() from None
    access_key, date, region, service = _credential(credential, False)
    amz_date = headers.get("x-amz-date")
    if amz_date is None:
        date_header = headers.get("date")
        parsed = email.utils.parsedate_to_datetime(date_header) if date_header else None
        if parsed is None:
            raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
        amz_date = parsed.astimezone(datetime.UTC).strftime(_AMZ_DATE)
    _parse_amz_date(amz_date)
    payload = headers.get("x-amz-content-sha256")
    if payload is None:
        raise InvalidRequest("Missing required header for this request: x-amz-content-sha256")
    return _Parsed(access_key, date, region, service, _signed_headers(signed, False),
                   signature.lower(), amz_date, _check_payload(payload))


def _parse_query(params: list[tuple[str, str]], headers: CIMultiDictProxy[str],
                 now: datetime.datetime, max_skew: float) -> _Parsed:
    q = dict(params)
    required = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-Date",
                "X-Amz-SignedHeaders", "X-Amz-Expires")
    if any(name not in q for name in required):
        raise AuthorizationQueryParametersError()
    if q["X-Amz-Algorithm"] != ALGORITHM:
        raise AuthorizationQueryParametersError(
            "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"")
    access_key, date, region, service = _credential(q["X-Amz-Credential"], True)
    try:
        expires = int(q["X-Amz-Expires"])
    except ValueError:
        raise AuthorizationQueryParametersError(
            "X-Amz-Expires should be a number") from None
    if expires < 0:
        raise AuthorizationQueryParametersError("X-Amz-Expires must be non-negative")
    if expires > MAX_PRESIGN_EXPIRES:
        raise AuthorizationQueryParametersError(
            "X-Amz-Expires must be less than a week (in seconds) that is 604800")
    moment = _parse_amz_date(q["X-Amz-Date"], presigned=True)
    if (now - moment).total_seconds() > expires:
        deadline = moment + datetime.timedelta(seconds=expires)
        raise AccessDenied("Request has expired", Expires=deadline.strftime(_ISO),
                           ServerTime=now.strftime(_ISO))
    if (moment - now).total_seconds() > max_skew:
        raise AccessDenied("Request is not valid yet")
    payload = _check_payload(headers.get("x-amz-content-sha256", UNSIGNED), presigned=True)
    return _Parsed(access_key, date, region, service,
                   _signed_headers(q["X-Amz-SignedHeaders"], True), q["X-Amz-Signature"].lower(),
                   q["X-Amz-Date"], payload)


def _signed_headers(value: str, presigned: bool) -> tuple[str, ...]:
    names = tuple(n.strip().lower() for n in value.split(";") if n.strip())
    if not names:
        raise _malformed(presigned, "SignedHeaders is empty")
    return names


def _parse_amz_date(value: str, presigned: bool = False) -> datetime.datetime:
    try:
        return _amz_date(value)
    except ValueError:
        if presigned:
            raise AuthorizationQueryParametersError(
                "X-Amz-Date must be in the ISO8601 Long Format "
                "\"yyyyMMdd'T'HHmmss'Z'\"") from None
        raise AccessDenied(
            "AWS authentication requires a valid Date or x-amz-date header") from None


@lru_cache(maxsize=1024)
def _amz_date(value: str) -> datetime.datetime:
    """strptime costs ~15 µs; presigned URLs and busy clients repeat the same few dates."""
    return datetime.datetime.strptime(value, _AMZ_DATE).replace(tzinfo=datetime.UTC)


def _header_value(headers: Mapping[str, str], name: str) -> str:
    values = headers.getall(name, []) if hasattr(headers, "getall") else [headers.get(name, "")]
    return ",".join(_collapse_spaces(v.strip()) for v in values)


def _collapse_spaces(text: str) -> str:
    # Every \s but the plain space is unprintable: without those or a double space, the
    # regex would change nothing.
    if text.isprintable() and "  " not in text:
        return text
    return _SPACES.sub(" ", text)


def _query_pairs(query: str) -> list[tuple[str, str]]:
    """Raw query pairs, percent-decoded (not '+'-decoded: SigV4 clients encode spaces)."""
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_unquote(name), _unquote(value)))
    return pairs


def _unquote(text: str) -> str:
    # Most names and values have nothing to decode; unquote_to_bytes was a third of verify.
    if "%" not in text and text.isascii():
        return text
    return unquote_to_bytes(text).decode(errors="surrogateescape")


def _signed_params(params: list[tuple[str, str]], presigned: bool) -> list[tuple[str, str]]:
    return [(k, v) for k, v in params if not (presigned and k == "X-Amz-Signature")]


def _raw_sorted_query(query: str, presigned: bool) -> str:
    pairs = [part.partition("=") for part in query.split("&") if part]
    kept = sorted((k, v) for k, _eq, v in pairs if not (presigned and k == "X-Amz-Signature"))
    return "&".join(f"{k}={v}" for k, v in kept)


def _encode(value: str) -> str:
    return quote(value.encode(errors="surrogateescape"), safe="-_.~")


def canonical_query(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted((_encode(k), _encode(v)) for k, v in pairs))


def canonical_uri(raw_path: str) -> str:
    """The path as SigV4 canonicalises it for S3: each byte outside unreserved characters and
    '/' percent-encoded once (no normalisation of '.', '..' or '//')."""
    return quote(unquote_to_bytes(raw_path or "/"), safe="/~")


@lru_cache(maxsize=256)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key
