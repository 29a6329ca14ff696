"""Addressing (path-style and virtual-host-style) and the table from (scope, method,
sub-resource) to operation. Each handler module lists its rows in `ROUTES`; the app builds one
`Router` from them, so a later module (multipart, replication) slots in with its own list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from aiohttp import web

from .config import GatewayConfig
from .errors import MethodNotAllowed, NotImplementedS3

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Operation:
    name: str  # S3's operation name, for the access log
    handler: Handler


# Query parameters that select a sub-resource (anything else is an ordinary parameter).
SUBRESOURCES = frozenset({
    "accelerate", "acl", "analytics", "attributes", "cors", "delete", "encryption",
    "intelligent-tiering", "inventory", "legal-hold", "lifecycle", "location", "logging",
    "metadataConfiguration", "metadataTable", "metrics", "notification", "object-lock",
    "ownershipControls", "partNumber", "policy", "policyStatus", "publicAccessBlock",
    "replication", "requestPayment", "restore", "retention", "select", "session", "tagging",
    "torrent", "uploadId", "uploads", "versionId", "versioning", "versions", "website",
})
MULTIPART = frozenset({"uploads", "uploadId", "partNumber"})

Route = tuple[str, str, str, str, Handler]  # scope, method, sub-resource, name, handler


def address(host: str | None, raw_path: str, config: GatewayConfig
            ) -> tuple[str | None, bytes | None, bool]:
    """(bucket, key, virtual-host style?) of a request. `bucket.<domain>` in Host is
    virtual-host style; anything else is path style (/bucket/key). The key is raw bytes (the
    percent-decoded path)."""
    path = unquote_to_bytes(raw_path.partition("?")[0])
    host = host or ""
    hostname = host if host.endswith("]") else host.rsplit(":", 1)[0]  # [v6]: no port
    hostname = hostname.lower().rstrip(".")
    for domain in config.domains:
        if hostname.endswith("." + domain):
            key = path[1:] if path.startswith(b"/") else path
            return hostname[: -len(domain) - 1], key or None, True
    trimmed = path[1:] if path.startswith(b"/") else path
    if not trimmed:
        return None, None, False
    bucket, slash, key = trimmed.partition(b"/")
    return bucket.decode(errors="replace"), (key if slash and key else None), False


class Router:
    def __init__(self, *tables: Iterable[Route]):
        self.routes: dict[tuple[str, str, str], Operation] = {}
        for table in tables:
            for scope, method, subresource, name, handler in table:
                self.add(scope, method, subresource, name, handler)

    def add(self, scope: str, method: str, subresource: str, name: str,
            handler: Handler) -> None:
        """scope: "service", "bucket" or "object"; subresource "" for none."""
        if scope not in ("service", "bucket", "object"):
            raise ValueError(f"unknown scope {scope!r}")
        self.routes[(scope, method, subresource)] = Operation(name, handler)

    def select(self, method: str, bucket: str | None, key: bytes | None,
               query: Mapping[str, str]) -> Operation:
        """The operation for a request; NotImplemented for a known sub-resource without a
        route (multipart, ACLs, …), MethodNotAllowed for a method without one."""
        scope = "service" if bucket is None else "bucket" if key is None else "object"
        found = [name for name in query if name in SUBRESOURCES]
        if "versionId" in found and query.get("versionId") in ("", "null"):
            found.remove("versionId")  # the one version an unversioned bucket has
        subresource = ""
        for name in found:
            if (scope, method, name) in self.routes:
                subresource = name
                break
        else:
            if found:
                what = "multipart upload" if set(found) & MULTIPART else f"?{found[0]}"
                raise NotImplementedS3(f"{what} is not implemented by this gateway")
        operation = self.routes.get((scope, method, subresource))
        if operation is None:
            raise MethodNotAllowed(f"{method} is not allowed on a {scope}")
        return operation
