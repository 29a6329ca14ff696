"""HTTPS: a self-signed certificate, boto3 verifying it. Over TLS boto3 sends PutObject and
UploadPart bodies aws-chunked (STREAMING-UNSIGNED-PAYLOAD-TRAILER) with a trailing checksum."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.compat import HAS_CRT
from botocore.exceptions import BotoCoreError, ClientError
from s3gateway import ROOT, GatewayProcess, Keys, client, make_store

from vfsd.store import Store, fsck

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")]
MiB = 1 << 20


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class TlsGateway:
    def __init__(self, process: GatewayProcess, keys: Keys, cert: Path):
        self.process, self.keys, self.cert = process, keys, cert

    def client(self, **config):
        return client(self.process.endpoint, self.keys, verify=str(self.cert), **config)


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory) -> Iterator[TlsGateway]:
    base = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(base)
    keys = make_store(base / "store")
    process = GatewayProcess(base / "store", base / "gateway.log",
                             ["--tls-cert", str(cert), "--tls-key", str(key)], tls=True).start()
    try:
        yield TlsGateway(process, keys, cert)
    finally:
        assert process.stop() == 0, process.log()
    with Store.open(base / "store") as store:
        report = fsck.check(store)
    assert report.clean, report.damage
    assert "Traceback" not in process.log(), process.log()


def record_payload_modes(s3) -> list[tuple[str, str, str]]:
    """(operation, x-amz-content-sha256, x-amz-trailer) of each request boto3 sends."""
    seen: list[tuple[str, str, str]] = []

    def text(value) -> str:
        return value.decode() if isinstance(value, bytes) else str(value or "")

    def hook(request, **kwargs):
        headers = request.headers
        seen.append((kwargs["event_name"].rsplit(".", 1)[-1],
                     text(headers.get("x-amz-content-sha256")),
                     text(headers.get("x-amz-trailer"))))

    s3.meta.events.register("before-send.s3", hook)
    return seen


def test_put_get_over_tls(tls_gateway):
    s3 = tls_gateway.client()
    seen = record_payload_modes(s3)
    s3.create_bucket(Bucket="tls")
    data = os.urandom(3 * MiB + 7)
    put = s3.put_object(Bucket="tls", Key="a/b", Body=data)
    assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert ("PutObject", "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            "x-amz-checksum-crc32") in seen
    assert s3.get_object(Bucket="tls", Key="a/b")["Body"].read() == data
    head = s3.head_object(Bucket="tls", Key="a/b", ChecksumMode="ENABLED")
    assert "ChecksumCRC32" in head
    # botocore computes CRC32C and CRC64NVME only with awscrt (botocore[crt]); the gateway
    # needs awscrt for CRC64NVME
    algorithms = ("SHA1", "SHA256") + (("CRC32C", "CRC64NVME") if HAS_CRT else ())
    for algorithm in algorithms:
        s3.put_object(Bucket="tls", Key=algorithm, Body=data, ChecksumAlgorithm=algorithm)
        head = s3.head_object(Bucket="tls", Key=algorithm, ChecksumMode="ENABLED")
        assert f"Checksum{algorithm}" in head
        assert s3.get_object(Bucket="tls", Key=algorithm)["Body"].read() == data
        assert ("PutObject", "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                f"x-amz-checksum-{algorithm.lower()}") in seen


def test_multipart_over_tls(tls_gateway, tmp_path):
    s3 = tls_gateway.client()
    seen = record_payload_modes(s3)
    s3.create_bucket(Bucket="tls-mp")
    src = tmp_path / "src"
    src.write_bytes(os.urandom(30 * MiB + 123))
    s3.upload_file(str(src), "tls-mp", "big", Config=TransferConfig(multipart_threshold=8 * MiB))
    assert any(op == "UploadPart" and mode == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
               for op, mode, _trailer in seen)
    dst = tmp_path / "dst"
    s3.download_file("tls-mp", "big", str(dst))
    assert hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
    assert s3.head_object(Bucket="tls-mp", Key="big")["ETag"].endswith('-4"')


def test_plain_http_to_tls_port_fails(tls_gateway):
    s3 = client(tls_gateway.process.endpoint.replace("https", "http"), tls_gateway.keys,
                retries={"max_attempts": 1}, connect_timeout=5, read_timeout=5)
    with pytest.raises((ClientError, BotoCoreError)):
        s3.list_buckets()


def test_bad_certificate_fails_to_start(tmp_path):
    make_store(tmp_path / "store")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    for cert in (tmp_path / "missing.pem", tmp_path / "junk.pem"):
        done = subprocess.run([sys.executable, "-m", "gateway", "--store", str(tmp_path / "store"),
                               "--port", "0", "--tls-cert", str(cert)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "cannot start" in done.stderr
        assert "Traceback" not in done.stderr and str(cert) in done.stderr, done.stderr
    assert "not a PEM certificate with its private key" in done.stderr, done.stderr
