"""Large objects stream through the gateway without being held in memory, and a PUT cut off by
kill -9 leaves nothing visible: the old version (or no object) and a clean fsck."""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import subprocess
import sys
import threading
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ClientError
from s3gateway import ROOT, client, make_store, wait_for

MiB = 1 << 20


def pseudo_random(size: int, seed: int = 1):
    """Deterministic data that does not deduplicate, generated a MiB at a time."""
    rng = random.Random(seed)
    for _ in range(size // MiB):
        yield rng.randbytes(MiB)


class Reader:
    """A file-like body for boto3 that generates its bytes (seekable, so boto3 can sign it)."""

    def __init__(self, size: int, seed: int = 1):
        self.size, self.seed, self.pos = size, seed, 0
        self._data = b"".join(pseudo_random(size, seed))

    def read(self, n: int = -1) -> bytes:
        end = self.size if n < 0 else min(self.size, self.pos + n)
        out = self._data[self.pos:end]
        self.pos = end
        return out

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else self.size + pos
        return self.pos

    def tell(self) -> int:
        return self.pos


@pytest.mark.timeout(300)
def test_64mib_round_trip_in_bounded_memory(tmp_path, gateway_process):
    store = tmp_path / "store"
    keys = make_store(store)
    process = gateway_process(store)
    s3 = client(process.endpoint, keys)
    s3.create_bucket(Bucket="big")
    s3.put_object(Bucket="big", Key="warm-up", Body=b"x" * 100_000)
    s3.get_object(Bucket="big", Key="warm-up")["Body"].read()
    baseline = process.status("VmRSS")
    size = 64 * MiB
    body = Reader(size)
    expected = hashlib.sha256(body._data).hexdigest()
    put = s3.put_object(Bucket="big", Key="object", Body=body)
    assert put["ETag"] == f'"{hashlib.md5(body._data).hexdigest()}"'
    del body
    got = s3.get_object(Bucket="big", Key="object")
    assert got["ContentLength"] == size
    digest = hashlib.sha256()
    for piece in got["Body"].iter_chunks(MiB):
        digest.update(piece)
    assert digest.hexdigest() == expected
    peak = process.status("VmHWM")
    growth = peak - baseline
    print(f"gateway RSS: baseline {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB, "
          f"growth {growth / MiB:.1f} MiB for a {size // MiB} MiB object")
    assert growth < 24 * MiB


@pytest.mark.timeout(300)
@pytest.mark.parametrize("existed", [True, False], ids=["replacing", "creating"])
def test_kill_9_during_a_large_put(tmp_path, gateway_process, existed):
    store = tmp_path / "store"
    keys = make_store(store)
    process = gateway_process(store)
    s3 = client(process.endpoint, keys, signature_version="s3v4")
    s3.create_bucket(Bucket="crash")
    old = os.urandom(3 * MiB + 5)
    if existed:
        s3.put_object(Bucket="crash", Key="big", Body=old)
    url = urlsplit(s3.generate_presigned_url(
        "put_object", Params={"Bucket": "crash", "Key": "big"}, ExpiresIn=600))
    segments = store / "segments"

    def segment_bytes() -> int:
        return sum(f.stat().st_size for f in segments.iterdir())

    before = segment_bytes()
    total = 1024 * MiB
    half_sent = threading.Event()
    release = threading.Event()
    outcome: dict[str, object] = {}

    def body():
        for i, piece in enumerate(pseudo_random(total, seed=7)):
            if i == 32:
                half_sent.set()
                release.wait(60)  # hold the rest back until the gateway is dead
            yield piece

    def client_thread() -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        try:
            conn.request("PUT", f"{url.path}?{url.query}", body=body(),
                         headers={"Content-Length": str(total)})
            outcome["status"] = conn.getresponse().status
        except OSError as e:
            outcome["error"] = e
        finally:
            conn.close()

    thread = threading.Thread(target=client_thread, daemon=True)
    thread.start()
    assert half_sent.wait(60)
    # Staged bodies reach the segments while the PUT is still open: kill in mid-upload.
    wait_for(lambda: segment_bytes() - before >= 16 * MiB, what="staged chunks")
    process.kill()
    release.set()
    thread.join(60)
    assert "status" not in outcome, outcome  # the PUT never completed

    fsck = subprocess.run([sys.executable, "-m", "vfsd", "fsck", "--store", str(store)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "unreferenced bytes" in fsck.stdout

    process = gateway_process(store)
    s3 = client(process.endpoint, keys)
    if existed:
        assert s3.get_object(Bucket="crash", Key="big")["Body"].read() == old
    else:
        with pytest.raises(ClientError) as e:
            s3.head_object(Bucket="crash", Key="big")
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert s3.list_objects_v2(Bucket="crash")["KeyCount"] == (1 if existed else 0)
    # The store still takes writes after the crash.
    s3.put_object(Bucket="crash", Key="after", Body=b"fine")
    assert s3.get_object(Bucket="crash", Key="after")["Body"].read() == b"fine"

