"""The aws CLI (v1, from PyPI) against the gateway: the high-level `aws s3` commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from s3gateway import env_with_keys

pytestmark = pytest.mark.timeout(120)
AWS = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")


@pytest.mark.skipif(AWS is None, reason="the aws CLI is not installed")
def test_aws_s3_commands(gateway, tmp_path):
    env = env_with_keys(gateway)

    def aws(*args: str) -> str:
        done = subprocess.run([AWS, "--endpoint-url", gateway.endpoint, *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"aws {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout

    bucket = f"cli-{os.getpid()}"
    aws("s3", "mb", f"s3://{bucket}")
    src = tmp_path / "up"
    (src / "dir").mkdir(parents=True)
    (src / "one.txt").write_text("one")
    (src / "dir" / "two.bin").write_bytes(os.urandom(3 << 20))
    aws("s3", "cp", str(src / "one.txt"), f"s3://{bucket}/one.txt")
    aws("s3", "sync", str(src), f"s3://{bucket}/synced")
    listing = aws("s3", "ls", "--recursive", f"s3://{bucket}")
    assert "one.txt" in listing and "synced/dir/two.bin" in listing
    assert "PRE dir/" in aws("s3", "ls", f"s3://{bucket}/synced/")
    down = tmp_path / "down"
    aws("s3", "sync", f"s3://{bucket}/synced", str(down))
    assert (down / "dir" / "two.bin").read_bytes() == (src / "dir" / "two.bin").read_bytes()
    assert aws("s3", "sync", str(src), f"s3://{bucket}/synced").strip() == ""  # up to date
    aws("s3api", "head-object", "--bucket", bucket, "--key", "one.txt")
    aws("s3", "rm", "--recursive", f"s3://{bucket}")
    aws("s3", "rb", f"s3://{bucket}")
    assert bucket not in aws("s3", "ls")
