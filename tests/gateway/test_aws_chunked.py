"""aws-chunked request bodies: STREAMING-AWS4-HMAC-SHA256-PAYLOAD (chained chunk signatures),
STREAMING-UNSIGNED-PAYLOAD-TRAILER and STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER (trailing
x-amz-checksum-*). The request itself is signed by botocore; the chunk framing and the chunk
signatures are made here from AWS's description of the format."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import zlib

import crc32c
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from s3gateway import REGION, raw

pytestmark = pytest.mark.timeout(60)
SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
EMPTY = hashlib.sha256(b"").hexdigest()


def checksum(algorithm: str, data: bytes) -> str:
    if algorithm == "crc32":
        raw_value = zlib.crc32(data).to_bytes(4, "big")
    elif algorithm == "crc32c":
        raw_value = crc32c.crc32c(data).to_bytes(4, "big")
    elif algorithm == "crc64nvme":
        crt = pytest.importorskip("awscrt.checksums")  # the gateway needs it for CRC64NVME
        raw_value = crt.crc64nvme(data).to_bytes(8, "big")
    else:
        raw_value = hashlib.new(algorithm, data).digest()
    return base64.b64encode(raw_value).decode()


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def chunked_put(gateway, path: str, pieces: list[bytes], mode: str, *,
                trailer: tuple[str, str] | None = None, decoded: int | None = None,
                break_chunk: int | None = None, extra: dict[str, str] | None = None,
                unchained: bool = False):
    """PUT `pieces` as an aws-chunked body. `trailer` is (header, value); `break_chunk`
    corrupts that chunk's signature."""
    headers = {"Content-Encoding": "aws-chunked",
               "x-amz-decoded-content-length": str(sum(map(len, pieces))
                                                   if decoded is None else decoded)}
    if trailer:
        headers["x-amz-trailer"] = trailer[0]
    headers.update(extra or {})
    request = AWSRequest(method="PUT", url=gateway.endpoint + path, data=b"", headers=headers)
    signer = S3SigV4Auth(Credentials(gateway.keys.access_key, gateway.keys.secret_key), "s3",
                         REGION)
    signer.payload = lambda _request: mode  # type: ignore[method-assign]
    signer.add_auth(request)
    sent = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
    seed = sent["Authorization"].rsplit("Signature=", 1)[1]
    amz_date = sent["X-Amz-Date"]
    scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
    key = _hmac(("AWS4" + gateway.keys.secret_key).encode(), amz_date[:8])
    for part in (REGION, "s3", "aws4_request"):
        key = _hmac(key, part)
    previous = seed
    body = bytearray()
    for index, piece in enumerate([*pieces, b""]):
        if mode == UNSIGNED_TRAILER:
            body += b"%x\r\n" % len(piece)
        else:
            to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous, EMPTY,
                                 hashlib.sha256(piece).hexdigest()])
            signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
            if not unchained:
                previous = signature
            if index == break_chunk:
                signature = ("0" if signature[0] != "0" else "1") + signature[1:]
            body += b"%x;chunk-signature=%s\r\n" % (len(piece), signature.encode())
        if piece:
            body += piece + b"\r\n"
    if trailer:
        line = f"{trailer[0]}:{trailer[1]}"
        body += line.encode() + b"\r\n"
        if mode == SIGNED_TRAILER:
            to_sign = "\n".join(["AWS4-HMAC-SHA256-TRAILER", amz_date, scope, previous,
                                 hashlib.sha256((line + "\n").encode()).hexdigest()])
            signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
            body += f"x-amz-trailer-signature:{signature}\r\n".encode()
    body += b"\r\n"
    return raw(gateway.endpoint, "PUT", path, sent, bytes(body))


def pieces_of(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def missing(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        return e.response["Error"]["Code"] == "404"
    return False


def test_signed_chunks(gateway, s3, bucket):
    data = os.urandom(200_000)
    reply = chunked_put(gateway, f"/{bucket}/signed", pieces_of(data, 65536), SIGNED,
                        extra={"Content-Type": "text/plain"})
    assert reply.status == 200, reply.body
    got = s3.get_object(Bucket=bucket, Key="signed")
    assert got["Body"].read() == data
    assert got["ContentType"] == "text/plain"
    assert "ContentEncoding" not in got  # aws-chunked is the framing, not the object's


@pytest.mark.parametrize("broken", [0, 2, 4])  # first, middle, final (empty) chunk
def test_bad_chunk_signature(gateway, s3, bucket, broken):
    data = os.urandom(4 * 65536)
    reply = chunked_put(gateway, f"/{bucket}/bad", pieces_of(data, 65536), SIGNED,
                        break_chunk=broken)
    assert reply.status == 403 and reply.code == "SignatureDoesNotMatch", reply.body
    assert missing(s3, bucket, "bad")


def test_chunk_chain_is_checked(gateway, s3, bucket):
    """Each chunk's signature chains from the previous one: chunks each signed from the
    seed alone are refused."""
    a, b = os.urandom(70_000), os.urandom(70_000)
    reply = chunked_put(gateway, f"/{bucket}/chain", [a, b], SIGNED, unchained=True)
    assert reply.status == 403 and reply.code == "SignatureDoesNotMatch", reply.body
    assert missing(s3, bucket, "chain")
    # decoded length that disagrees with the body
    reply = chunked_put(gateway, f"/{bucket}/short", [a, b], SIGNED, decoded=len(a) + len(b) + 1)
    assert reply.status == 400 and reply.code == "IncompleteBody", reply.body
    assert missing(s3, bucket, "short")


@pytest.mark.parametrize("algorithm", ["crc32", "crc32c", "crc64nvme", "sha1", "sha256"])
@pytest.mark.parametrize("mode", [UNSIGNED_TRAILER, SIGNED_TRAILER])
def test_trailing_checksums(gateway, s3, bucket, algorithm, mode):
    data = os.urandom(150_001)
    header = f"x-amz-checksum-{algorithm}"
    value = checksum(algorithm, data)
    reply = chunked_put(gateway, f"/{bucket}/t", pieces_of(data, 65536), mode,
                        trailer=(header, value))
    assert reply.status == 200, reply.body
    assert reply.headers[header] == value
    head = s3.head_object(Bucket=bucket, Key="t", ChecksumMode="ENABLED")
    assert head[f"Checksum{algorithm.upper()}"] == value
    assert s3.get_object(Bucket=bucket, Key="t")["Body"].read() == data
    wrong = checksum(algorithm, data + b"x")
    reply = chunked_put(gateway, f"/{bucket}/u", pieces_of(data, 65536), mode,
                        trailer=(header, wrong))
    assert reply.status == 400 and reply.code == "BadDigest", reply.body
    assert missing(s3, bucket, "u")


def test_trailer_errors(gateway, s3, bucket):
    data = b"hello world"
    reply = chunked_put(gateway, f"/{bucket}/v", [data], UNSIGNED_TRAILER,
                        trailer=("x-amz-checksum-crc32", "not base64!"))
    assert reply.status == 400 and reply.code == "InvalidRequest", reply.body
    reply = chunked_put(gateway, f"/{bucket}/v", [data], UNSIGNED_TRAILER,
                        extra={"x-amz-trailer": "x-amz-checksum-crc32"})
    assert reply.status == 400 and reply.code == "InvalidRequest", reply.body
    assert missing(s3, bucket, "v")


def test_header_crc64nvme(s3, bucket):
    """A CRC64NVME checksum sent as a header (not a trailer) is checked too."""
    data = os.urandom(100_000)
    value = checksum("crc64nvme", data)
    s3.put_object(Bucket=bucket, Key="h", Body=data, ChecksumCRC64NVME=value)
    head = s3.head_object(Bucket=bucket, Key="h", ChecksumMode="ENABLED")
    assert head["ChecksumCRC64NVME"] == value
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="h2", Body=data,
                      ChecksumCRC64NVME=checksum("crc64nvme", b"other"))
    assert e.value.response["Error"]["Code"] == "BadDigest"


def test_upload_part_aws_chunked(gateway, s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    data = os.urandom(100_000)
    reply = chunked_put(gateway, f"/{bucket}/mp?partNumber=1&uploadId={uid}",
                        pieces_of(data, 65536), UNSIGNED_TRAILER,
                        trailer=("x-amz-checksum-crc32", checksum("crc32", data)))
    assert reply.status == 200, reply.body
    etag = reply.headers["etag"]
    assert etag == f'"{hashlib.md5(data).hexdigest()}"'
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == data
