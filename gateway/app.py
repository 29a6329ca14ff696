"""The aiohttp application: factory, middlewares, the store's lifetime, dispatch.

Middlewares, outermost first: `access_log` (request id, one key=value line per request),
`s3_errors` (every S3Error and core error becomes S3's error XML — the only place that
happens), `authenticate` (SigV4). Then one catch-all route dispatches through the `Router`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from vfsd.store import Store, journalrecovery
from vfsd.store.errors import NoSpace, StoreError
from vfsd.store.multipart import Uploads
from vfsd.store.objects import Objects

from . import auth, buckets, listing, multipart, objects, xml
from .body import CONTINUE_SENT, send_continue
from .collector import COLLECTOR, collector_context
from .config import GatewayConfig
from .context import (
    CONFIG,
    EXECUTOR,
    MULTIPART,
    OBJECTS,
    S3,
    STOPPING,
    STORE,
    UPLOADS,
    USERS,
    S3Request,
    UserCache,
    in_background,
)
from .errors import InternalError, NotImplementedS3, S3Error, from_core
from .metrics import METRICS, Metrics
from .pool import Pool
from .routing import Router, address

log = logging.getLogger("gateway")
access = logging.getLogger("gateway.access")
ROUTER = web.AppKey("router", Router)
JOURNAL_POLL = 1.0  # seconds: a dead mount's fsynced writes show within this, as a commit's do


class RequestIds:
    """Unique request ids: a random per-process prefix and a counter (secrets.token_hex per
    request costs a getrandom syscall, ~8% of a small GET's event-loop time)."""

    def __init__(self) -> None:
        self.prefix = secrets.token_hex(4).upper()
        self.count = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}{next(self.count):08X}"


REQUEST_IDS = web.AppKey("request_ids", RequestIds)


def create_app(config: GatewayConfig, metrics: Metrics | None = None) -> web.Application:
    """The S3 app; `metrics` collects per-request series (the /metrics listener renders it)."""
    app = web.Application(middlewares=[access_log, s3_errors, authenticate],
                          client_max_size=config.max_xml_body)
    app[CONFIG] = config
    app[METRICS] = metrics if metrics is not None else Metrics()
    app[REQUEST_IDS] = RequestIds()
    app[ROUTER] = Router(buckets.ROUTES, listing.ROUTES, objects.ROUTES, multipart.ROUTES)
    app[STOPPING] = threading.Event()
    app.cleanup_ctx.append(store_context)
    app.cleanup_ctx.append(collector_context)
    app.cleanup_ctx.append(journal_replay)
    # aiohttp would answer `Expect: 100-continue` before the middlewares run; handlers do it
    # themselves once the request is authenticated and its arguments checked (gateway.body).
    # [\s\S], not `.`: a key may hold a newline (S3 takes any UTF-8), and `.` stops there.
    app.router.add_route("*", r"/{path:[\s\S]*}", dispatch, expect_handler=_defer_continue)
    app.on_response_prepare.append(_before_headers)
    return app


async def _defer_continue(request: web.Request) -> None:
    return None


async def _before_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every response, streamed ones too (their headers go before the middlewares see
    them), carries its request id. A client that sent `Expect: 100-continue` with an empty
    body still gets its 100 Continue first: without it, the aws CLI's connection keeps the
    final status as a stale interim one and its next request on that connection waits for
    the read timeout (60 s)."""
    s3 = request.get(S3)
    if s3 is not None:
        response.headers.setdefault("x-amz-request-id", s3.request_id)
        response.headers.setdefault("x-amz-id-2", s3.request_id)
    if request.content_length == 0:
        await send_continue(request)


async def store_context(app: web.Application) -> AsyncIterator[None]:
    """The store and the thread pool live exactly as long as the app."""
    config = app[CONFIG]
    executor = Pool(config.workers, "vfsd-gateway")
    uploads = Pool(config.upload_workers, "vfsd-upload")
    try:
        store = Store.open(config.store)
        # A mount that died leaves what it fsynced in its journal: serve it, not older data.
        _replay_journals(store)
    except BaseException:
        executor.shutdown()
        uploads.shutdown()
        raise
    app[EXECUTOR] = executor
    app[UPLOADS] = uploads
    app[STORE] = store
    app[OBJECTS] = Objects(store)
    app[MULTIPART] = Uploads(app[OBJECTS])
    app[USERS] = UserCache(app)
    try:
        yield
    finally:
        app[STOPPING].set()  # body readers waiting on a socket give up
        uploads.shutdown(wait=True, cancel_futures=True)
        executor.shutdown(wait=True, cancel_futures=True)
        store.close()


def _replay_journals(store: Store) -> None:
    recovered = journalrecovery.recover(store)
    if recovered.journals:
        log.info("event=journal-recovered journals=%d sets_replayed=%d sets_dropped=%d",
                 recovered.journals, recovered.replayed, recovered.dropped)


async def journal_replay(app: web.Application) -> AsyncIterator[None]:
    """Replay the journal of a mount that dies while we serve, within JOURNAL_POLL seconds.
    What it fsynced was acknowledged; until replayed, we would serve the bytes from before
    (a QA pass saw them, and a CopyObject would have made them permanent). One server
    process does it (the one that runs gc passes); recover is safe beside a mount's."""
    async with in_background(_watch_journals(app) if app[CONFIG].gc_passes else None):
        yield


async def _watch_journals(app: web.Application) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(JOURNAL_POLL)
        try:
            await loop.run_in_executor(app[EXECUTOR], _replay_journals, app[STORE])
        except StoreError as e:
            log.warning("event=journal-replay-failed error=%s", e)


async def dispatch(request: web.Request) -> web.StreamResponse:
    s3 = request[S3]
    operation = request.app[ROUTER].select(request.method, s3.bucket, s3.key, request.query)
    s3.operation = operation.name
    return await operation.handler(request)


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    config = request.app[CONFIG]
    bucket, key, virtual = address(request.host, request.raw_path, config)
    s3 = S3Request(request.app[REQUEST_IDS].next(), bucket, key,
                   virtual_host=bucket if virtual else None)
    request[S3] = s3
    status = 500
    response: web.StreamResponse | None = None
    metrics = request.app[METRICS]
    metrics.in_flight += 1
    try:
        response = await handler(request)
        status = response.status
        return response
    except ConnectionError:
        # The client went away (499 is nginx's convention). Raised on, aiohttp would log it
        # as a failed handler, traceback and all; this answer goes nowhere, quietly.
        status = 499
        return web.Response(status=status)
    finally:
        metrics.in_flight -= 1
        elapsed = (time.monotonic() - s3.started) * 1000
        sent = _sent(response, s3)
        received = getattr(request.content, "total_bytes", 0)  # bytes read off the wire
        metrics.observe(s3.operation if s3.operation != "-" else "Unknown", status, received,
                        sent, elapsed / 1000)
        if config.access_log:
            user = s3.identity.user.name if s3.identity else "-"
            access.info(
                "request_id=%s remote=%s user=%s op=%s method=%s bucket=%s key=%s status=%d "
                "error=%s bytes_in=%d bytes_out=%d ms=%.1f",
                s3.request_id, request.remote, user, s3.operation, request.method,
                s3.bucket or "-", _quote(s3.key_text) if s3.key else "-", status, s3.error,
                received, sent, elapsed)


def _sent(response: web.StreamResponse | None, s3: S3Request) -> int:
    """Body bytes of the response: a whole body (sent after this middleware returns), or
    what a streamed one wrote."""
    if isinstance(response, web.Response) and response.body is not None:
        return response.content_length or 0
    return s3.streamed


def _quote(text: str) -> str:
    """A key as one token of a log line: quotes and backslashes escaped, and control
    characters written as escapes, so that no key can end the line or forge another."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    if not escaped.isprintable():
        escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode()
                          for c in escaped)
    return '"' + escaped + '"'


@web.middleware
async def s3_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    s3 = request[S3]
    try:
        response = await handler(request)
    except S3Error as e:
        error = e
    except NoSpace:
        error = await request.app[COLLECTOR].answer_no_space()
    except StoreError as e:
        error = from_core(e)
        if isinstance(error, InternalError):
            log.error("%s %s: %s", request.method, s3.resource, e, exc_info=e)
    except (web.HTTPException, ConnectionError):
        raise
    except Exception as e:  # a bug: log it, answer InternalError, keep serving
        log.exception("%s %s failed", request.method, s3.resource)
        error = InternalError()
        del e
    else:
        response.headers.setdefault("x-amz-request-id", s3.request_id)
        response.headers.setdefault("x-amz-id-2", s3.request_id)
        return response
    s3.error = error.code
    close = _body_left_unsent(request)
    body = xml.error_document(error.code, error.message, s3.resource, s3.request_id,
                              _error_fields(error, s3))
    headers = {"x-amz-request-id": s3.request_id, "x-amz-id-2": s3.request_id, **error.headers}
    if request.method == "HEAD":
        response = web.Response(status=error.status, headers=headers)
    else:
        response = web.Response(status=error.status, body=body, content_type=xml.CONTENT_TYPE,
                                headers=headers)
    if close:
        response.force_close()
    return response


def _body_left_unsent(request: web.Request) -> bool:
    """A client that asked `Expect: 100-continue` and got a final answer instead will not
    send its body, and one that is not waiting may still be sending it: either way the
    connection's framing is lost, so the connection closes after the error."""
    if not request.can_read_body or request.content.at_eof():
        return False
    return (request.headers.get("Expect", "").lower() == "100-continue"
            and not request.get(CONTINUE_SENT))


def _error_fields(error: S3Error, s3: S3Request) -> dict[str, str]:
    fields = dict(error.extra)
    if error.code == "NoSuchBucket" and s3.bucket:
        fields.setdefault("BucketName", s3.bucket)
    if error.code == "NoSuchKey" and s3.key:
        fields.setdefault("Key", s3.key_text)
    return fields


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    config = request.app[CONFIG]
    s3 = request[S3]
    if (request.method == "POST" and s3.bucket and s3.key is None
            and request.content_type == "multipart/form-data"):
        # A browser form's upload signs its policy, not the request: without this it would
        # look anonymous and get AccessDenied, which says nothing of why.
        raise NotImplementedS3("POST uploads from HTML forms are not implemented by this "
                               "gateway; use PUT (presigned PUT URLs work)")
    s3.identity = await auth.verify(
        request.method, request.raw_path, request.headers, request.app[USERS].lookup,
        config.region, config.max_clock_skew, bucket_host=request[S3].virtual_host)
    return await handler(request)
