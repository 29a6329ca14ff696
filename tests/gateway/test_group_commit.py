"""Concurrent PUTs share durable commits (vfsd/store/groupcommit.py): each still lands whole
and answers 200 only once durable; kill -9 among them leaves whole objects or none."""

from __future__ import annotations

import hashlib
import http.client
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ClientError
from s3gateway import ROOT, client, make_store, wait_for

pytestmark = pytest.mark.timeout(180)


def body_of(i: int, size: int = 70_000) -> bytes:
    """Distinct, non-deduplicating bodies: new segment bytes for every PUT."""
    seed = hashlib.sha256(str(i).encode()).digest()
    return (seed * (size // 32 + 1))[:size - 8] + i.to_bytes(8, "big")


def test_concurrent_puts_all_visible(gateway, s3, bucket):
    def put(i: int) -> str:
        return s3.put_object(Bucket=bucket, Key=f"c/{i}", Body=body_of(i))["ETag"]

    with ThreadPoolExecutor(16) as pool:
        etags = list(pool.map(put, range(96)))
    for i, etag in enumerate(etags):
        assert etag == f'"{hashlib.md5(body_of(i)).hexdigest()}"'
        assert s3.get_object(Bucket=bucket, Key=f"c/{i}")["Body"].read() == body_of(i)
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 96


def test_kill_9_during_concurrent_puts(tmp_path, gateway_process):
    store = tmp_path / "store"
    keys = make_store(store)
    process = gateway_process(store)
    s3 = client(process.endpoint, keys, signature_version="s3v4")
    s3.create_bucket(Bucket="crash")
    n = 400
    urls = [urlsplit(s3.generate_presigned_url("put_object", Params={
        "Bucket": "crash", "Key": f"k/{i}"}, ExpiresIn=600)) for i in range(n)]
    acknowledged: set[int] = set()
    lock = threading.Lock()

    def put(i: int) -> None:
        url = urls[i]
        try:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
            conn.request("PUT", f"{url.path}?{url.query}", body=body_of(i))
            if conn.getresponse().status == 200:
                with lock:
                    acknowledged.add(i)
            conn.close()
        except OSError:
            pass

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(put, i) for i in range(n)]
        wait_for(lambda: len(acknowledged) >= 40, what="some acknowledged PUTs")
        process.kill()  # with PUTs in every stage: receiving, staging, committing
        for f in futures:
            f.result()
    assert len(acknowledged) < n, "the kill came too late to test anything"

    fsck = subprocess.run([sys.executable, "-m", "vfsd", "fsck", "--store", str(store)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr

    process = gateway_process(store)
    s3 = client(process.endpoint, keys)
    present = 0
    for i in range(n):
        try:
            got = s3.get_object(Bucket="crash", Key=f"k/{i}")["Body"].read()
        except ClientError as e:
            assert e.response["Error"]["Code"] == "NoSuchKey"
            assert i not in acknowledged, f"k/{i} was acknowledged, then lost"
            continue
        assert got == body_of(i), f"k/{i} is not whole"
        present += 1
    assert present >= len(acknowledged)
