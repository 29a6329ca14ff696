"""Prometheus metrics: counters and latency histograms kept by the access-log middleware, and
the text exposition format (version 0.0.4) served on a listener of its own.

A small writer rather than `prometheus_client`: the gateway keeps a handful of series, all
updated on the event loop (so no locks), and this keeps the gateway free of a process-global
registry (STYLE.md: no module-level globals).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: from a fast HEAD to a multi-GiB upload.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 300.0)


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        self.total += value
        self.count += 1


class Metrics:
    """The gateway's series. Mutated and rendered on the event loop only."""

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.bytes_in: defaultdict[str, int] = defaultdict(int)
        self.bytes_out: defaultdict[str, int] = defaultdict(int)
        self.latency: defaultdict[str, _Histogram] = defaultdict(_Histogram)
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
        out: list[str] = []

        def family(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        family("vfsd_gateway_requests_total", "counter", "S3 requests by operation and status.")
        for (operation, status), value in sorted(self.requests.items()):
            out.append(f'vfsd_gateway_requests_total{{operation="{_label(operation)}",'
                       f'status="{status}"}} {value}')
        family("vfsd_gateway_received_bytes_total", "counter",
               "Request body bytes received, by operation.")
        for operation, value in sorted(self.bytes_in.items()):
            out.append(f'vfsd_gateway_received_bytes_total{{operation="{_label(operation)}"}} '
                       f"{value}")
        family("vfsd_gateway_sent_bytes_total", "counter",
               "Response body bytes sent, by operation.")
        for operation, value in sorted(self.bytes_out.items()):
            out.append(f'vfsd_gateway_sent_bytes_total{{operation="{_label(operation)}"}} '
                       f"{value}")
        family("vfsd_gateway_request_duration_seconds", "histogram",
               "Time from request to the end of the response, by operation.")
        for operation, h in sorted(self.latency.items()):
            label = f'operation="{_label(operation)}"'
            running = 0
            for bound, count in zip(LATENCY_BUCKETS, h.counts, strict=False):
                running += count
                out.append(f'vfsd_gateway_request_duration_seconds_bucket{{{label},'
                           f'le="{bound}"}} {running}')
            out.append(f'vfsd_gateway_request_duration_seconds_bucket{{{label},le="+Inf"}} '
                       f"{h.count}")
            out.append(f"vfsd_gateway_request_duration_seconds_sum{{{label}}} {h.total}")
            out.append(f"vfsd_gateway_request_duration_seconds_count{{{label}}} {h.count}")
        family("vfsd_gateway_requests_in_flight", "gauge", "Requests being served now.")
        out.append(f"vfsd_gateway_requests_in_flight {self.in_flight}")
        return ("\n".join(out) + "\n").encode()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


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
