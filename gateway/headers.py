"""HTTP header parsing for S3: ranges, dates, conditions, metadata, digests and checksums."""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import zlib
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Protocol

import crc32c as _crc32c

try:  # CRC64NVME: the AWS common runtime (what botocore[crt] uses), when installed
    from awscrt import checksums as _crt_checksums
except ImportError:  # pragma: no cover - then x-amz-checksum-crc64nvme is NotImplemented
    _crt_checksums = None

from vfsd.store.conditions import Conditions
from vfsd.store.objects import CONTENT_HEADERS

from .errors import InvalidDigest, InvalidRange, InvalidRequest, NotImplementedS3

META_PREFIX = "x-amz-meta-"


def http_date(ns: int) -> str:
    return _http_date(ns // 1_000_000_000)


@lru_cache(maxsize=1024)
def _http_date(seconds: int) -> str:
    """formatdate costs ~5 µs, on every GET and HEAD (Last-Modified); hot objects repeat."""
    return email.utils.formatdate(seconds, usegmt=True)


def parse_http_date(value: str | None) -> float | None:
    """Unix seconds, or None for an absent or unparseable date (which RFC 7232 ignores)."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def parse_etags(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    out = []
    for item in value.split(","):
        item = item.strip()
        item = item.removeprefix("W/")
        out.append(item.strip('"'))
    return tuple(out)


def conditions(headers: Mapping[str, str], prefix: str = "") -> Conditions:
    """If-Match & co (prefix "") or CopyObject's x-amz-copy-source-if-* (prefix
    "x-amz-copy-source-")."""
    return Conditions(
        if_match=parse_etags(headers.get(prefix + "if-match")),
        if_none_match=parse_etags(headers.get(prefix + "if-none-match")),
        if_modified_since=parse_http_date(headers.get(prefix + "if-modified-since")),
        if_unmodified_since=parse_http_date(headers.get(prefix + "if-unmodified-since")),
    )


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """A Range header as [start, end) within `size`; None for no range or one S3 ignores
    (malformed, several ranges); InvalidRange (416) for one that cannot be satisfied."""
    if not value:
        return None
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix < 0:
                return None
            if suffix == 0 or size == 0:
                raise _unsatisfiable(value, size)
            return max(0, size - suffix), size
        start = int(first)
        stop = int(last) if last else None
    except ValueError:
        return None
    if start < 0 or (stop is not None and stop < start):
        return None
    if start >= size:
        raise _unsatisfiable(value, size)
    return start, size if stop is None else min(stop + 1, size)


def _unsatisfiable(value: str, size: int) -> InvalidRange:
    return InvalidRange(headers={"Content-Range": f"bytes */{size}"},
                        RangeRequested=value, ActualObjectSize=str(size))


def user_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    """x-amz-meta-<name>: value, names lower-cased (HTTP header names are case-blind)."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith(META_PREFIX) and len(lower) > len(META_PREFIX):
            meta = lower[len(META_PREFIX):]
            out[meta] = f"{out[meta]},{value}" if meta in out else value
    return out


def content_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The content headers to store. `aws-chunked` in Content-Encoding describes the request's
    framing, not the object, so it is dropped (as S3 does)."""
    out = {name: headers[name] for name in CONTENT_HEADERS if headers.get(name)}
    if "content-encoding" in out:
        kept = [c.strip() for c in out["content-encoding"].split(",")
                if c.strip() and c.strip().lower() != "aws-chunked"]
        if kept:
            out["content-encoding"] = ", ".join(kept)
        else:
            del out["content-encoding"]
    return out


def content_md5(headers: Mapping[str, str]) -> bytes | None:
    value = headers.get("content-md5")
    if value is None:
        return None
    try:
        digest = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidDigest() from None
    if len(digest) != 16:
        raise InvalidDigest()
    return digest


# --- flexible checksums (x-amz-checksum-*) -----------------------------------------------------

class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...

    def value(self) -> bytes: ...


class _Crc:
    def __init__(self, function):  # type: ignore[no-untyped-def]
        self.function, self.crc = function, 0

    def update(self, data: bytes | memoryview) -> None:
        self.crc = self.function(data, self.crc)

    def value(self) -> bytes:
        return self.crc.to_bytes(4, "big")


class _Crc64Nvme:
    def __init__(self) -> None:
        self.crc = 0

    def update(self, data: bytes | memoryview) -> None:
        assert _crt_checksums is not None
        self.crc = _crt_checksums.crc64nvme(data, self.crc)

    def value(self) -> bytes:
        return self.crc.to_bytes(8, "big")


class _Hash:
    def __init__(self, name: str):
        self.h = hashlib.new(name)

    def update(self, data: bytes | memoryview) -> None:
        self.h.update(data)

    def value(self) -> bytes:
        return self.h.digest()


CHECKSUMS: dict[str, tuple[Callable[[], Hasher], int]] = {
    "crc32": (lambda: _Crc(zlib.crc32), 4),
    "crc32c": (lambda: _Crc(_crc32c.crc32c), 4),
    "sha1": (lambda: _Hash("sha1"), 20),
    "sha256": (lambda: _Hash("sha256"), 32),
    "sha512": (lambda: _Hash("sha512"), 64),
    "md5": (lambda: _Hash("md5"), 16),
}
UNSUPPORTED_CHECKSUMS: tuple[str, ...] = ("xxhash64", "xxhash3", "xxhash128")
if _crt_checksums is not None:
    CHECKSUMS["crc64nvme"] = (_Crc64Nvme, 8)
else:  # pragma: no cover
    UNSUPPORTED_CHECKSUMS += ("crc64nvme",)


class Checksum:
    """A body checksum the client sent (x-amz-checksum-<algorithm>: base64), checked as the
    body streams by."""

    def __init__(self, algorithm: str, expected: str | None):
        """`expected` None: the value comes later, in the body's trailer (`set_trailer`)."""
        factory, self.length = CHECKSUMS[algorithm]
        self.algorithm, self.expected = algorithm, ""
        self.trailing = expected is None
        if expected is not None:
            self._set(expected, "header")
        self.hasher: Hasher = factory()

    def _set(self, value: str, where: str) -> None:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != self.length:
            raise InvalidRequest(f"Value for x-amz-checksum-{self.algorithm} {where} is "
                                 "invalid.")
        self.expected = value

    def set_trailer(self, value: str) -> None:
        self._set(value.strip(), "trailing header")

    @property
    def pair(self) -> tuple[str, str]:
        """(algorithm, value) as stored with the object (after the body, for a trailer)."""
        return self.algorithm, self.expected

    def update(self, data: bytes | memoryview) -> None:
        self.hasher.update(data)

    def matches(self) -> bool:
        return base64.b64encode(self.hasher.value()).decode() == self.expected

    @property
    def header(self) -> str:
        return f"x-amz-checksum-{self.algorithm}"


def trailing_checksum(headers: Mapping[str, str]) -> Checksum | None:
    """The checksum an aws-chunked body announces in x-amz-trailer, to come after the body."""
    value = headers.get("x-amz-trailer")
    if value is None:
        return None
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    if len(names) != 1 or not names[0].startswith("x-amz-checksum-"):
        raise InvalidRequest("x-amz-trailer must name one x-amz-checksum-* header")
    algorithm = names[0][len("x-amz-checksum-"):]
    if algorithm in UNSUPPORTED_CHECKSUMS:
        raise NotImplementedS3(f"x-amz-checksum-{algorithm} is not supported here")
    if algorithm not in CHECKSUMS:
        raise InvalidRequest(f"x-amz-checksum-{algorithm} is not a checksum algorithm")
    return Checksum(algorithm, None)


def checksum(headers: Mapping[str, str]) -> Checksum | None:
    found = [(name[len("x-amz-checksum-"):], value) for name, value in headers.items()
             if name.lower().startswith("x-amz-checksum-")
             and name.lower() not in ("x-amz-checksum-mode", "x-amz-checksum-type")]
    if not found:
        return None
    if len(found) > 1:
        raise InvalidRequest("Expecting a single x-amz-checksum- header. Multiple checksum "
                             "Types are not allowed.")
    algorithm, value = found[0][0].lower(), found[0][1]
    if algorithm in UNSUPPORTED_CHECKSUMS:
        raise NotImplementedS3(f"x-amz-checksum-{algorithm} is not supported here; use CRC32, "
                               "CRC32C, CRC64NVME, SHA1 or SHA256")
    if algorithm not in CHECKSUMS:
        raise InvalidRequest(f"x-amz-checksum-{algorithm} is not a checksum algorithm")
    return Checksum(algorithm, value.strip())
