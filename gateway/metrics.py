"""Prometheus metrics: counters and latency histograms kept by the access-log middleware,
served in the text format (vfsd/prometheus.py) on a listener of its own."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from vfsd.prometheus import CONTENT_TYPE, Exposition, Histogram

# Seconds: from a fast HEAD to a multi-GiB upload.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 300.0)


def _histogram() -> Histogram:
    return Histogram(LATENCY_BUCKETS)


class Metrics:
    """The gateway's series. Mutated and rendered on the event loop only."""

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.bytes_in: defaultdict[str, int] = defaultdict(int)
        self.bytes_out: defaultdict[str, int] = defaultdict(int)
        self.latency: defaultdict[str, Histogram] = defaultdict(_histogram)
        self.in_flight = 0

    def observe(self, operation: str, status: int, received: int, sent: int,
                seconds: float) -> None:
        self.requests[(operation, str(status))] += 1
        self.bytes_in[operation] += received
        self.bytes_out[operation] += sent
        self.latency[operation].observe(seconds)

    def snapshot(self) -> dict[str, Any]:
        """The series as JSON values: a server process's answer to its supervisor's scrape."""
        return {"requests": [[op, status, n] for (op, status), n in self.requests.items()],
                "bytes_in": dict(self.bytes_in), "bytes_out": dict(self.bytes_out),
                "latency": {op: [h.counts, h.total, h.count] for op, h in self.latency.items()},
                "in_flight": self.in_flight}

    def add(self, snapshot: dict[str, Any]) -> None:
        """Sum another process's series into these (`snapshot` as `snapshot()` makes it)."""
        for operation, status, count in snapshot["requests"]:
            self.requests[(operation, status)] += count
        for operation, count in snapshot["bytes_in"].items():
            self.bytes_in[operation] += count
        for operation, count in snapshot["bytes_out"].items():
            self.bytes_out[operation] += count
        for operation, (counts, total, count) in snapshot["latency"].items():
            histogram = self.latency[operation]
            histogram.counts = [a + b for a, b in zip(histogram.counts, counts, strict=True)]
            histogram.total += total
            histogram.count += count
        self.in_flight += snapshot["in_flight"]

    def render(self) -> bytes:
        out = Exposition()
        out.family("vfsd_gateway_requests_total", "counter", "S3 requests by operation and status.")
        for (operation, status), value in sorted(self.requests.items()):
            out.sample("vfsd_gateway_requests_total", value,
                       {"operation": operation, "status": status})
        out.family("vfsd_gateway_received_bytes_total", "counter",
                   "Request body bytes received, by operation.")
        for operation, value in sorted(self.bytes_in.items()):
            out.sample("vfsd_gateway_received_bytes_total", value, {"operation": operation})
        out.family("vfsd_gateway_sent_bytes_total", "counter",
                   "Response body bytes sent, by operation.")
        for operation, value in sorted(self.bytes_out.items()):
            out.sample("vfsd_gateway_sent_bytes_total", value, {"operation": operation})
        out.family("vfsd_gateway_request_duration_seconds", "histogram",
                   "Time from request to the end of the response, by operation.")
        for operation, h in sorted(self.latency.items()):
            out.histogram("vfsd_gateway_request_duration_seconds", h, {"operation": operation})
        out.family("vfsd_gateway_requests_in_flight", "gauge", "Requests being served now.")
        out.sample("vfsd_gateway_requests_in_flight", self.in_flight)
        return out.render()


METRICS = web.AppKey("metrics", Metrics)


def metrics_app(collect: Callable[[], Awaitable[Metrics]]) -> web.Application:
    """The /metrics listener's app (no S3 auth: bind it to a private address). `collect`
    gives the series to show: the server's own, or its processes' summed."""
    app = web.Application()

    async def serve_metrics(request: web.Request) -> web.Response:
        metrics = await collect()
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/metrics", serve_metrics)
    return app
