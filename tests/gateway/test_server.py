"""`python -m gateway`: starts, prints its endpoint, stops cleanly on SIGTERM and SIGINT,
and refuses to start on something that is not a store."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from s3gateway import ROOT, GatewayProcess, client, make_store

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_serves_until_signalled(tmp_path, signum):
    keys = make_store(tmp_path / "store")
    process = GatewayProcess(tmp_path / "store", tmp_path / "log").start()
    try:
        client(process.endpoint, keys).create_bucket(Bucket="upbucket")
        assert f"serving {tmp_path / 'store'} at {process.endpoint}" in process.log()
    finally:
        assert process.proc is not None
        process.proc.send_signal(signum)
        assert process.proc.wait(timeout=20) == 0, process.log()
    assert "access INFO" in process.log() and "op=CreateBucket" in process.log()


def test_refuses_a_missing_store(tmp_path):
    done = subprocess.run([sys.executable, "-m", "gateway", "--store", str(tmp_path / "nope"),
                           "--port", "0"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 1
    assert "cannot start" in done.stderr and "no store" in done.stderr
