"""The Prometheus text exposition format (version 0.0.4), shared by the gateway's and the
mount's /metrics: histograms and a writer of metric families.

A small writer rather than `prometheus_client`: each daemon keeps a handful of series, all
updated on its event loop (so no locks), and this keeps them free of a process-global
registry (STYLE.md: no module-level globals).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Observations counted into buckets with upper bounds `bounds` (plus +Inf)."""

    def __init__(self, bounds: Sequence[float]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1


class Exposition:
    """Families of samples, written in order, rendered to the text format."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, text: str) -> None:
        self.lines.append(f"# HELP {name} {text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        self.lines.append(f"{name}{_labels(labels)} {value}")

    def histogram(self, name: str, h: Histogram, labels: Mapping[str, str] | None = None) -> None:
        running = 0
        for bound, count in zip(h.bounds, h.counts, strict=False):
            running += count
            self.sample(f"{name}_bucket", running, {**(labels or {}), "le": str(bound)})
        self.sample(f"{name}_bucket", h.count, {**(labels or {}), "le": "+Inf"})
        self.sample(f"{name}_sum", h.total, labels)
        self.sample(f"{name}_count", h.count, labels)

    def render(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode()


def _labels(labels: Mapping[str, str] | None) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escaped(value)}"' for key, value in labels.items()) + "}"


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
