"""Validation of file names, bucket names and object keys."""

from __future__ import annotations

import re

from .errors import InvalidName, NameTooLong

NAME_MAX = 255
_BUCKET = re.compile(rb"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(rb"^\d+\.\d+\.\d+\.\d+$")


def check_name(name: bytes) -> bytes:
    """A single path component: non-empty, no '/', no NUL, not '.' or '..', at most 255 bytes."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise InvalidName(f"invalid name {name.decode(errors='replace')!r}: no '/', NUL, '.' or '..'")
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name is {len(name)} bytes; the limit is {NAME_MAX}")
    return name


def is_bucket_name(name: bytes) -> bool:
    """S3's rules: 3-63 of a-z 0-9 . -, starting and ending alphanumeric, no '..', not an IP."""
    return bool(_BUCKET.match(name)) and b".." not in name and not _IPV4.match(name)


def split_key(key: bytes) -> list[bytes]:
    """An object key as path components; raises InvalidName for keys that cannot be a path."""
    parts = key.split(b"/")
    for part in parts:
        check_name(part)
    return parts
