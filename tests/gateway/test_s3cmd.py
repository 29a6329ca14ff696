"""s3cmd from Debian against the gateway: a third client with its own signing and parsing."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("s3cmd") is None, reason="s3cmd not installed")]


def test_s3cmd_round_trip(gateway, tmp_path):
    config = tmp_path / "s3cfg"
    config.write_text(
        "[default]\n"
        f"access_key = {gateway.keys.access_key}\n"
        f"secret_key = {gateway.keys.secret_key}\n"
        f"host_base = 127.0.0.1:{gateway.port}\n"
        f"host_bucket = 127.0.0.1:{gateway.port}\n"
        "use_https = False\n"
        "signature_v2 = False\n"
        "bucket_location = us-east-1\n"
    )

    def s3cmd(*args: str) -> str:
        result = subprocess.run(["s3cmd", "-c", str(config), "--no-progress", *args],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    data = os.urandom(3 * 1024 * 1024 + 5)
    (tmp_path / "up.bin").write_bytes(data)
    s3cmd("mb", "s3://s3cmd-bucket")
    s3cmd("put", str(tmp_path / "up.bin"), "s3://s3cmd-bucket/dir/up.bin")
    listing = s3cmd("ls", "-r", "s3://s3cmd-bucket")
    assert "s3://s3cmd-bucket/dir/up.bin" in listing
    s3cmd("get", "s3://s3cmd-bucket/dir/up.bin", str(tmp_path / "down.bin"))
    assert hashlib.sha256((tmp_path / "down.bin").read_bytes()).digest() == \
        hashlib.sha256(data).digest()
    info = s3cmd("info", "s3://s3cmd-bucket/dir/up.bin")
    assert hashlib.md5(data).hexdigest() in info
    s3cmd("del", "s3://s3cmd-bucket/dir/up.bin")
    assert "up.bin" not in s3cmd("ls", "-r", "s3://s3cmd-bucket")
    s3cmd("rb", "s3://s3cmd-bucket")
