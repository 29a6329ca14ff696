"""The gateway's one frozen configuration, built by `gateway.__main__` (or a test) and passed
down explicitly: no module-level settings."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GiB = 1 << 30


@dataclass(frozen=True)
class GatewayConfig:
    store: Path
    host: str = "127.0.0.1"
    port: int = 9000
    region: str = "us-east-1"
    # Host names under which `bucket.<domain>` is virtual-host-style addressing.
    domains: tuple[str, ...] = ("localhost",)
    # Server processes sharing the port (SO_REUSEPORT): one event loop runs on one core at a
    # time, so small requests scale with cores only across processes (gateway/supervisor.py).
    processes: int = 1
    # Threads running short core calls (metadata, reads, listings), shared out among the
    # server processes (each gets its share, rounded up): the store sees as many calls in
    # flight as one process gave it, and each process's threads contend less for its GIL.
    workers: int = 8
    # Threads staging PUT bodies: each waits on its client's socket for as long as the upload
    # lasts, so uploads get their own pool and cannot starve everything else. It also bounds
    # concurrent uploads (more wait their turn). Shared out among server processes as
    # `workers` is.
    upload_workers: int = 32
    max_put_size: int = 5 * GiB  # single PUT limit (S3's), larger needs multipart
    body_piece: int = 1 << 20  # request body read from the socket per hop into a worker
    read_window: int = 2 << 20  # object bytes read per hop when streaming a GET
    # Plain-HTTP GETs send chunk bodies from the segment files (gateway/sendfile.py): no
    # buffer, so a hop can cover more. Answers up to `inline_answer` bytes are read and sent
    # with their headers in one write instead, which costs less than two system calls.
    send_window: int = 4 << 20
    inline_answer: int = 256 << 10
    body_idle_timeout: float = 60.0  # seconds without body bytes before RequestTimeout
    max_clock_skew: float = 15 * 60  # seconds (S3's RequestTimeTooSkewed)
    max_xml_body: int = 2 << 20  # DeleteObjects (1000 keys) and other XML requests
    shutdown_timeout: float = 10.0
    # Seconds between gc passes (vfsd/store/gc.py): space of deleted and overwritten objects,
    # old change-log entries. A mount of the same store runs its own; passes are safe side
    # by side. None: never (tests that count segments).
    gc_interval: float | None = 10.0
    # False: leave the passes to another process (the first of a gateway's server processes)
    # and only let go, every gc_interval, of the segments its passes retire.
    gc_passes: bool = True
    access_log: bool = True
    # TLS: both set, or neither (plain HTTP). PEM files; the key may be in the cert file.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Prometheus /metrics on a listener of its own (unauthenticated: keep it private); off
    # unless metrics_port is set (0 picks a free port).
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The configuration as JSON values: what a supervisor hands its server processes."""
        return {name: str(value) if isinstance(value, Path) else value
                for name, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> GatewayConfig:
        paths = {"store", "tls_cert", "tls_key"}
        return cls(**{name: Path(value) if name in paths and value is not None
                      else tuple(value) if name == "domains" else value
                      for name, value in values.items()})

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def default_processes() -> int:
    """One server process per core this process may run on, up to four (each has its own
    thread pools, caches and store handles; more than four has not been measured)."""
    return max(1, min(4, len(os.sched_getaffinity(0))))
