"""What handlers share: the app's keys, the per-request S3 state, and `run` (core calls in the
app's thread pool, never on the event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from vfsd.store import Store, users
from vfsd.store.multipart import Uploads
from vfsd.store.objects import Objects
from vfsd.store.users import User

from .auth import Identity
from .config import GatewayConfig
from .pool import Pool

T = TypeVar("T")

CONFIG = web.AppKey("config", GatewayConfig)
STORE = web.AppKey("store", Store)
OBJECTS = web.AppKey("objects", Objects)
MULTIPART = web.AppKey("multipart", Uploads)
EXECUTOR = web.AppKey("executor", Pool)
UPLOADS = web.AppKey("uploads", Pool)  # for calls that stream request bodies
STOPPING = web.AppKey("stopping", threading.Event)  # set at shutdown: body readers give up


@dataclass
class S3Request:
    """One request as S3 sees it; the access log prints it at the end."""

    request_id: str
    bucket: str | None
    key: bytes | None
    virtual_host: str | None = None  # the bucket, when it came from the Host header
    started: float = field(default_factory=time.monotonic)
    operation: str = "-"
    identity: Identity | None = None
    error: str = "-"
    streamed: int = 0  # body bytes a streamed response (GET) has written so far

    @property
    def resource(self) -> str:
        if self.bucket is None:
            return "/"
        key = "" if self.key is None else self.key.decode(errors="replace")
        return f"/{self.bucket}/{key}" if key else f"/{self.bucket}"

    @property
    def key_text(self) -> str:
        return (self.key or b"").decode(errors="surrogateescape")


S3 = web.RequestKey("s3", S3Request)


def run(request: web.Request, fn: Callable[..., T], *args: Any,
        **kwargs: Any) -> asyncio.Future[T]:
    """Call the synchronous core in the app's thread pool (the call is queued at once)."""
    return request.app[EXECUTOR].call(functools.partial(fn, *args, **kwargs))


def run_upload(request: web.Request, fn: Callable[..., T], *args: Any,
               **kwargs: Any) -> asyncio.Future[T]:
    """Call the core in the upload pool: for calls that consume a request body."""
    return request.app[UPLOADS].call(functools.partial(fn, *args, **kwargs))


class UserCache:
    """Access key -> user, looked up in the store off the event loop and kept for a few
    seconds (a removed user stops working within `ttl`)."""

    def __init__(self, app: web.Application, ttl: float = 5.0):
        self.app = app
        self.ttl = ttl
        self.entries: dict[str, tuple[User | None, float]] = {}

    async def lookup(self, access_key: str) -> User | None:
        now = time.monotonic()
        hit = self.entries.get(access_key)
        if hit is not None and hit[1] > now:
            return hit[0]
        user = await self.app[EXECUTOR].call(
            functools.partial(users.by_access_key, self.app[STORE], access_key))
        if len(self.entries) > 10_000:
            self.entries.clear()
        self.entries[access_key] = (user, now + self.ttl)
        return user


USERS = web.AppKey("users", UserCache)


def owner(request: web.Request) -> tuple[str, str]:
    """(ID, DisplayName) of the one account all users of a store share."""
    return request.app[STORE].config.node_id, "vfsd"


@contextlib.asynccontextmanager
async def in_background(loop_forever: Coroutine[Any, Any, None] | None) -> AsyncIterator[None]:
    """Run a periodic task (if any) for the app's life; cancelled and awaited at cleanup."""
    task = asyncio.create_task(loop_forever) if loop_forever is not None else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
