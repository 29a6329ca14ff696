"""The mount's Prometheus /metrics: kernel requests by operation and result, their latency,
and the state of the write-back cache, served on a listener of its own (`--metrics-listen`).

The series are updated on the event loop only; the listener is a minimal HTTP/1.0 responder
on the same loop (one GET per connection), since the daemon has no HTTP stack otherwise.
"""

from __future__ import annotations

import errno
import socket
from collections import Counter, defaultdict
from collections.abc import Callable

import trio

from vfsd.prometheus import CONTENT_TYPE, Exposition, Histogram

# Seconds: a read answered from mapped pages (~20 µs) to an fsync waiting on a full pool.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                   0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
REQUEST_LIMIT = 8192  # bytes of request line and headers we read before answering
CLIENT_TIMEOUT = 5.0


def _histogram() -> Histogram:
    return Histogram(LATENCY_BUCKETS)


class MountMetrics:
    """Counters kept by the request handlers; gauges read at scrape time from `gauges`."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()
        self.latency: defaultdict[str, Histogram] = defaultdict(_histogram)
        self.crashes = 0  # handlers that raised something unexpected (answered EIO)
        self.gauges: Callable[[], dict[str, tuple[str, float]]] = dict

    def observe(self, operation: str, result: int, seconds: float) -> None:
        """`result` is 0 for success, else the errno answered."""
        self.requests[(operation, errno.errorcode.get(result, str(result)) if result
                       else "ok")] += 1
        self.latency[operation].observe(seconds)

    def render(self) -> bytes:
        out = Exposition()
        out.family("vfsd_mount_requests_total", "counter",
                   "Kernel requests by operation and result (ok or the errno answered).")
        for (operation, result), value in sorted(self.requests.items()):
            out.sample("vfsd_mount_requests_total", value,
                       {"operation": operation, "result": result})
        out.family("vfsd_mount_request_duration_seconds", "histogram",
                   "Time to answer a kernel request, by operation.")
        for operation, h in sorted(self.latency.items()):
            out.histogram("vfsd_mount_request_duration_seconds", h, {"operation": operation})
        out.family("vfsd_mount_handler_crashes_total", "counter",
                   "Requests answered EIO because a handler failed unexpectedly (see the log).")
        out.sample("vfsd_mount_handler_crashes_total", self.crashes)
        for name, (text, value) in self.gauges().items():
            out.family(name, "counter" if name.endswith("_total") else "gauge", text)
            out.sample(name, value)
        return out.render()


def bind(host: str, port: int) -> socket.socket:
    """The listener, bound before the mount is up so that a taken port fails the mount with
    one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(16)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot serve metrics on {host}:{port}: {e.strerror}") from None
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"


async def serve(sock: socket.socket, metrics: MountMetrics) -> None:
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))

    async def answer(stream: trio.SocketStream) -> None:
        try:
            await _answer(stream, metrics)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the scraper went away
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(answer, [listener])


async def _answer(stream: trio.SocketStream, metrics: MountMetrics) -> None:
    request = b""
    with trio.move_on_after(CLIENT_TIMEOUT):
        while b"\r\n\r\n" not in request and len(request) < REQUEST_LIMIT:
            data = await stream.receive_some(REQUEST_LIMIT)
            if not data:
                break
            request += data
    method, _, rest = request.partition(b" ")
    path = rest.partition(b" ")[0].partition(b"?")[0]
    if method not in (b"GET", b"HEAD") or b"\r\n\r\n" not in request:
        status, body, kind = "400 Bad Request", b"a GET of /metrics\n", "text/plain"
    elif path != b"/metrics":
        status, body, kind = "404 Not Found", b"only /metrics is here\n", "text/plain"
    else:
        status, body, kind = "200 OK", metrics.render(), CONTENT_TYPE
    head = (f"HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    await stream.send_all(head if method == b"HEAD" else head + body)
