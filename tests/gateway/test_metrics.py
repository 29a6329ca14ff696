"""Prometheus /metrics on its own listener: requests by operation and status, bytes in and
out, latency histograms."""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request

import pytest
from botocore.exceptions import ClientError
from s3gateway import GatewayProcess, client, free_port, make_store

pytestmark = pytest.mark.timeout(60)
_SAMPLE = re.compile(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$')


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, line
        name, labels, value = match.groups()
        pairs = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or ""))
        samples[(name, pairs)] = float(value)
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics(tmp_path):
    keys = make_store(tmp_path / "store")
    port = free_port()
    process = GatewayProcess(tmp_path / "store", tmp_path / "gateway.log",
                             ["--metrics-listen", f"127.0.0.1:{port}"]).start()
    try:
        s3 = client(process.endpoint, keys)
        s3.create_bucket(Bucket="mets")
        data = os.urandom(300_000)
        s3.put_object(Bucket="mets", Key="k", Body=data)
        assert s3.get_object(Bucket="mets", Key="k")["Body"].read() == data
        with pytest.raises(ClientError):
            s3.head_object(Bucket="mets", Key="missing")
        samples = scrape(port)
        assert value(samples, "vfsd_gateway_requests_total", operation="PutObject",
                     status="200") == 1
        assert value(samples, "vfsd_gateway_requests_total", operation="GetObject",
                     status="200") == 1
        assert value(samples, "vfsd_gateway_requests_total", operation="HeadObject",
                     status="404") == 1
        assert value(samples, "vfsd_gateway_received_bytes_total",
                     operation="PutObject") >= len(data)
        assert value(samples, "vfsd_gateway_sent_bytes_total",
                     operation="GetObject") == len(data)
        assert value(samples, "vfsd_gateway_request_duration_seconds_count",
                     operation="PutObject") == 1
        assert value(samples, "vfsd_gateway_request_duration_seconds_bucket",
                     operation="GetObject", le="+Inf") == 1
        assert value(samples, "vfsd_gateway_request_duration_seconds_bucket",
                     operation="GetObject", le="300.0") == 1
        assert value(samples, "vfsd_gateway_requests_in_flight") == 0
        # the S3 port does not serve /metrics (it is a bucket name there, and needs auth)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{process.endpoint}/metrics", timeout=10)
        assert e.value.code == 403
    finally:
        assert process.stop() == 0, process.log()
    assert f"metrics at http://127.0.0.1:{port}/metrics" in process.log()


def test_metrics_off_by_default(gateway):
    assert "metrics at" not in gateway.process.log()
