"""Slow uploads do not starve the gateway: each PUT waits on its client in the upload pool,
while metadata calls and reads keep their own threads."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ClientError

pytestmark = pytest.mark.timeout(60)


def test_stalled_uploads_leave_the_gateway_responsive(gateway, s3, bucket):
    s3.put_object(Bucket=bucket, Key="readable", Body=b"still here")
    presigner = gateway.client(signature_version="s3v4")
    stalled = []
    try:
        for i in range(12):  # more than the 8 threads of the main pool
            url = urlsplit(presigner.generate_presigned_url(
                "put_object", Params={"Bucket": bucket, "Key": f"slow/{i}"}))
            sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=30)
            sock.sendall(f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                         f"Content-Length: 10000000\r\n\r\n".encode() + b"s" * 100_000)
            stalled.append(sock)
        started = time.monotonic()
        assert s3.get_object(Bucket=bucket, Key="readable")["Body"].read() == b"still here"
        assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 1
        assert time.monotonic() - started < 5
    finally:
        for sock in stalled:
            sock.close()
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="slow/0")
