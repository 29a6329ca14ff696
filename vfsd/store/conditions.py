"""HTTP conditional requests (If-Match, If-None-Match, If-Modified-Since,
If-Unmodified-Since) as S3 applies them to reads, writes and copies."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import NoSuchKey, NotModified, PreconditionFailed


@dataclass(frozen=True, slots=True)
class Conditions:
    """HTTP conditional headers, parsed: ETags unquoted ('*' allowed), times in unix seconds."""

    if_match: tuple[str, ...] | None = None
    if_none_match: tuple[str, ...] | None = None
    if_modified_since: float | None = None
    if_unmodified_since: float | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.if_match, self.if_none_match,
                                            self.if_modified_since, self.if_unmodified_since))

    def check(self, etag: str | None, mtime_ns: int, *, reading: bool = True) -> None:
        """RFC 7232 order. `etag` None means no object. A failed If-None-Match or
        If-Modified-Since is NotModified for a read, PreconditionFailed otherwise (writes,
        and CopyObject's x-amz-copy-source-if-* conditions)."""
        mtime = mtime_ns // 1_000_000_000  # HTTP dates have whole seconds
        if self.if_match is not None:
            if etag is None:
                raise NoSuchKey("the object does not exist")
            if not _etag_in(etag, self.if_match):
                raise PreconditionFailed("If-Match does not match the object's ETag")
        elif (self.if_unmodified_since is not None and etag is not None
              and mtime > self.if_unmodified_since):
            raise PreconditionFailed("the object was modified since If-Unmodified-Since")
        if self.if_none_match is not None:
            if etag is not None and _etag_in(etag, self.if_none_match):
                if reading:
                    raise NotModified("If-None-Match matches the object's ETag")
                raise PreconditionFailed("If-None-Match matches the object's ETag")
        elif (self.if_modified_since is not None and etag is not None
              and mtime <= self.if_modified_since):
            if reading:
                raise NotModified("the object was not modified since If-Modified-Since")
            raise PreconditionFailed("the object was not modified since If-Modified-Since")


def needs_etag(conditions: Conditions) -> bool:
    """Whether checking `conditions` needs the object's ETag (not only its existence)."""
    return conditions.if_match is not None or conditions.if_none_match not in (None, ("*",))


def _etag_in(etag: str, candidates: tuple[str, ...]) -> bool:
    return any(c == "*" or c == etag for c in candidates)
