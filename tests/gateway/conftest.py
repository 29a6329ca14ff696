"""A real gateway in a subprocess on 127.0.0.1 and an ephemeral port, driven by boto3.

`gateway` is one gateway per test session (each test gets its own bucket); tests that kill or
restart the gateway use `gateway_process` to start their own.
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from s3gateway import Gateway, GatewayProcess, make_store

# The mount's helpers (tests/fs/mounting.py): coherence tests mount, full-disk tests fill one.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fs"))

from vfsd.store import Store, fsck


@pytest.fixture(scope="session")
def gateway(tmp_path_factory) -> Iterator[Gateway]:
    base = tmp_path_factory.mktemp("gateway")
    keys = make_store(base / "store")
    process = GatewayProcess(base / "store", base / "gateway.log").start()
    try:
        yield Gateway(base / "store", keys, process)
    finally:
        assert process.stop() == 0, process.log()
    # Everything the tests did through S3 left the store consistent.
    with Store.open(base / "store") as store:
        report = fsck.check(store)
    assert report.clean, "\n".join(report.damage)
    assert "Traceback" not in process.log(), process.log()


@pytest.fixture
def s3(gateway: Gateway):
    return gateway.client()


@pytest.fixture
def bucket(s3, request) -> str:
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"{name}-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def gateway_process(tmp_path) -> Iterator[Callable[[Path], GatewayProcess]]:
    """Start gateways of one's own (crash tests); all are stopped at teardown."""
    started: list[GatewayProcess] = []

    def start(store: Path, *args: str) -> GatewayProcess:
        process = GatewayProcess(store, tmp_path / f"gateway{len(started)}.log", args).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
