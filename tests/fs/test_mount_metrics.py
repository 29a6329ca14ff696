"""The mount's Prometheus /metrics (`vfsd mount --metrics-listen`): kernel requests by
operation and result, latency histograms, dirty data; a taken port fails the mount."""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mounting import Mount, free_port, wait_for

pytestmark = pytest.mark.timeout(120)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode()


def sample(text: str, series: str) -> float:
    """The value of one exact series line (`name{labels}`), 0 if it is not there."""
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_mount_metrics(store_path: Path, tmp_path: Path):
    port = free_port()
    m = Mount(store_path, tmp_path / "mnt", "--commit-interval", "60",
              "--metrics-listen", f"127.0.0.1:{port}").start()
    try:
        with open(m.path / "f", "wb") as f:
            for _ in range(10):
                f.write(os.urandom(1 << 20))
                f.flush()
            # Not closed yet and the commit interval is long: the data is dirty in the cache.
            text = scrape(port)
            assert sample(text, "vfsd_mount_dirty_bytes") > 0
            assert sample(text, "vfsd_mount_dirty_files") == 1
            assert sample(text, "vfsd_mount_open_handles") >= 1
        with pytest.raises(FileNotFoundError):
            os.stat(m.path / "missing")
        (m.path / "d").mkdir()
        (m.path / "d" / "x").touch()
        with pytest.raises(OSError) as info:
            os.rmdir(m.path / "d")  # only the file system knows: the kernel asks us
        assert info.value.errno == errno.ENOTEMPTY
        wait_for(lambda: sample(scrape(port), "vfsd_mount_open_handles") == 0, 10,
                 "the kernel's release")
        text = scrape(port)
        writes = sample(text, 'vfsd_mount_requests_total{operation="write",result="ok"}')
        assert writes >= 10  # the kernel may split a 1 MiB write, never join two
        assert sample(text, 'vfsd_mount_requests_total{operation="lookup",result="ENOENT"}') >= 1
        assert sample(text, 'vfsd_mount_requests_total{operation="rmdir",result="ENOTEMPTY"}') == 1
        # Every request observed once in its histogram.
        assert sample(text, 'vfsd_mount_request_duration_seconds_count{operation="write"}') \
            == writes
        assert sample(text, 'vfsd_mount_request_duration_seconds_bucket{operation="write",'
                            'le="+Inf"}') == writes
        assert sample(text, "vfsd_mount_dirty_bytes") == 0  # close committed it
        assert sample(text, "vfsd_mount_handler_crashes_total") == 0
        assert "\nvfsd_mount_journal_slow_writes_total " in text
        assert "\nvfsd_mount_journal_writes_on_workers " in text
        with pytest.raises(urllib.error.HTTPError) as http:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
        assert http.value.code == 404
    finally:
        m.stop()
    assert f"metrics=http://127.0.0.1:{port}/metrics" in m.output()


def test_mount_metrics_port_taken(store_path: Path, tmp_path: Path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "vfsd", "mount", "--store", str(store_path), str(mnt),
             "--metrics-listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not os.path.ismount(mnt)
