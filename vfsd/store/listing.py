"""ListObjects over the key index: a page of keys in binary order, common prefixes rolled up
under a delimiter, in O(page) (DESIGN.md, "The namespace")."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import namespace
from .env import U64
from .errors import NoSuchKey
from .etags import ETAG_XATTR, unpack_record

if TYPE_CHECKING:
    from .objects import Objects

EMPTY_ETAG = hashlib.md5(b"").hexdigest()  # a folder marker's


@dataclass(frozen=True, slots=True)
class ListEntry:
    key: bytes
    size: int
    mtime_ns: int
    etag: str


@dataclass(slots=True)
class Listing:
    objects: list[ListEntry]
    prefixes: list[bytes]
    truncated: bool
    last: bytes | None  # the last key or common prefix returned: where the next page starts


def successor(prefix: bytes) -> bytes | None:
    """The least byte string greater than every string starting with `prefix` (None: none)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def list_objects(objects: Objects, bucket: str, prefix: bytes = b"", delimiter: bytes = b"",
                 start_after: bytes = b"", max_keys: int = 1000) -> Listing:
    """Keys of `bucket` in binary order after `start_after`, from the key index in
    O(page): with a delimiter, keys sharing a prefix up to the delimiter roll up into one
    common prefix, and the cursor jumps past the whole prefix in one seek. A common prefix
    not greater than `start_after` is skipped (so a page ending on one goes on after it).
    One read transaction (plus ETag recomputation for files changed through the mount)."""
    entries: list[ListEntry] = []
    prefixes: list[bytes] = []
    stale: list[int] = []
    truncated = False
    last: bytes | None = None
    if max_keys == 0:
        # S3 answers an empty page that is not truncated: truncated with no next marker
        # would send a client that pages "while truncated" back to the start forever.
        return Listing(entries, prefixes, truncated, last)
    with objects.env.read() as tx:
        base = U64.pack(objects.bucket_inode(tx, bucket).ino)
        full_prefix = base + prefix
        cursor = tx.cursor(tx.db.keys)
        if start_after and start_after >= prefix:
            found = cursor.set_range(base + start_after)
            if found and bytes(cursor.key()) == base + start_after:
                found = cursor.next()
        else:
            found = cursor.set_range(full_prefix)
        count = 0
        while found:
            raw_key = bytes(cursor.key())
            if not raw_key.startswith(full_prefix):
                break
            key = raw_key[8:]
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = key[:cut + len(delimiter)]
                if not (start_after and common <= start_after):
                    if count == max_keys:
                        truncated = True
                        break
                    prefixes.append(common)
                    count += 1
                    last = common
                after = successor(common)
                found = after is not None and cursor.set_range(base + after)
                continue
            if count == max_keys:
                truncated = True
                break
            inode = namespace.get_inode(tx, U64.unpack(cursor.value())[0])
            if inode.is_dir:  # an empty directory: a folder marker
                entries.append(ListEntry(key, 0, inode.mtime_ns, EMPTY_ETAG))
                count += 1
                last = key
                found = cursor.next()
                continue
            raw = tx.get(tx.db.xattrs, namespace.xattr_key(inode.ino, ETAG_XATTR))
            record = unpack_record(raw) if raw else None
            etag = record[2] if record and record[0] == inode.version else ""
            if not etag:
                stale.append(len(entries))
            entries.append(ListEntry(key, inode.size, inode.mtime_ns, etag))
            count += 1
            last = key
            found = cursor.next()
    for index in stale:
        entry = entries[index]
        try:
            info = objects.head_object(bucket, entry.key)
        except NoSuchKey:
            continue  # deleted since: it was there when the page was read
        entries[index] = ListEntry(entry.key, info.size, info.mtime_ns, info.etag)
    return Listing(entries, prefixes, truncated, last)
