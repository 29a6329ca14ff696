"""What real clients notice on the wire, found by driving the gateway with them: encoded
bodies stored as sent, 100 Continue for empty bodies, request ids on every response, keys
with control characters, error documents a parser can read, and an empty listing page."""

from __future__ import annotations

import gzip
import socket
import zlib
from urllib.parse import urlsplit

import botocore.exceptions
import pytest
from s3gateway import Gateway, raw


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_content_encoded_body_is_stored_as_sent(s3, bucket, encoding):
    """aws s3 cp --content-encoding gzip (signed body) and a presigned PUT (unsigned): S3
    keeps the bytes and the encoding as metadata; nothing inflates them."""
    text = b"hello world " * 1000
    body = gzip.compress(text) if encoding == "gzip" else zlib.compress(text)
    s3.put_object(Bucket=bucket, Key="signed", Body=body, ContentEncoding=encoding)
    url = s3.generate_presigned_url("put_object", Params={
        "Bucket": bucket, "Key": "presigned", "ContentEncoding": encoding})
    parts = urlsplit(url)
    answer = raw(f"http://{parts.netloc}", "PUT", f"{parts.path}?{parts.query}",
                 {"Content-Encoding": encoding}, body)
    assert answer.status == 200, answer.body
    for key in ("signed", "presigned"):
        got = s3.get_object(Bucket=bucket, Key=key)
        assert got["ContentEncoding"] == encoding
        assert got["Body"].read() == body


def test_an_empty_body_sent_with_expect_gets_100_continue_first(s3, bucket, gateway: Gateway):
    url = urlsplit(s3.generate_presigned_url("put_object",
                                             Params={"Bucket": bucket, "Key": "empty"}))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                     "Expect: 100-continue\r\nContent-Length: 0\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer.partition(b"\r\n\r\n")[2] and len(answer) < 65536:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    interim, _, final = answer.partition(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue"
    assert final.startswith(b"HTTP/1.1 200"), answer
    assert s3.get_object(Bucket=bucket, Key="empty")["Body"].read() == b""


def test_every_response_carries_a_request_id(s3, bucket):
    s3.put_object(Bucket=bucket, Key="small", Body=b"x")
    s3.put_object(Bucket=bucket, Key="large", Body=b"y" * (1 << 20))
    answers = [s3.head_object(Bucket=bucket, Key="small"),
               s3.get_object(Bucket=bucket, Key="small"),
               s3.get_object(Bucket=bucket, Key="large")]  # streamed from mapped pages
    for answer in answers:
        headers = answer["ResponseMetadata"]["HTTPHeaders"]
        assert headers.get("x-amz-request-id") and headers.get("x-amz-id-2"), headers


def test_keys_with_control_characters(s3, bucket, gateway: Gateway):
    """S3 takes any UTF-8 in a key; a newline must neither miss the route nor split the
    access log line."""
    key = "a\nb\tc\rd"
    s3.put_object(Bucket=bucket, Key=key, Body=b"multi-line key")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"multi-line key"
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]  # boto3 asks for url encoding
    assert [item["Key"] for item in listed] == [key]
    log = gateway.process.log()
    assert '"a\\nb\\tc\\rd"' in log
    assert not any(line.startswith("b\tc") for line in log.splitlines())


def test_an_error_about_a_control_character_is_readable_xml(s3, bucket):
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket=bucket, Key="nul\x00here", Body=b"x")
    assert info.value.response["Error"]["Code"] == "InvalidArgument"


def test_max_keys_zero_is_an_empty_page_that_is_not_truncated(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    v2 = s3.list_objects_v2(Bucket=bucket, MaxKeys=0)
    v1 = s3.list_objects(Bucket=bucket, MaxKeys=0)
    assert (v2["IsTruncated"], v2["KeyCount"], v1["IsTruncated"]) == (False, 0, False)
    assert "Contents" not in v2 and "Contents" not in v1
    upload = s3.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="m", UploadId=upload, PartNumber=1, Body=b"p")
    parts = s3.list_parts(Bucket=bucket, Key="m", UploadId=upload, MaxParts=0)
    uploads = s3.list_multipart_uploads(Bucket=bucket, MaxUploads=0)
    assert (parts["IsTruncated"], uploads["IsTruncated"]) == (False, False)
    s3.abort_multipart_upload(Bucket=bucket, Key="m", UploadId=upload)


def test_too_much_metadata_is_metadata_too_large(s3, bucket):
    """Past aiohttp's own header limits (one 8 KiB line, 128 headers) too: S3's error XML,
    not a plain-text 400."""
    for metadata in ({"a": "v" * 9000}, {f"m{i}": "v" * 20 for i in range(200)}):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            s3.put_object(Bucket=bucket, Key="meta", Body=b"x", Metadata=metadata)
        assert info.value.response["Error"]["Code"] == "MetadataTooLarge"


def test_a_request_aiohttp_cannot_parse_gets_a_400_and_logs_no_traceback(gateway: Gateway):
    for request in (b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 40000 + b"\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
            sock.sendall(request)
            answer = sock.recv(65536)
        assert answer.split(b" ", 2)[1] == b"400", answer
    log = gateway.process.log()
    assert "Traceback" not in log and "Error handling request" in log


def test_copy_errors_name_the_missing_source(s3, bucket):
    s3.put_object(Bucket=bucket, Key="there", Body=b"x")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": "no-such-bkt",
                                                              "Key": "there"})
    assert info.value.response["Error"]["Code"] == "NoSuchBucket"
    assert info.value.response["Error"]["BucketName"] == "no-such-bkt"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "gone"})
    assert info.value.response["Error"]["Code"] == "NoSuchKey"
    assert info.value.response["Error"]["Key"] == "gone"


def test_what_rclone_and_s3cmd_ask_of_a_bucket(s3, bucket):
    """Found by a QA pass with rclone (it logs an ERROR when GetBucketVersioning fails) and
    with clients that change storage classes."""
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_bucket_versioning(Bucket="no-such-bucket-here")
    assert e.value.response["Error"]["Code"] == "NoSuchBucket"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=bucket, Key="k", Body=b"x", StorageClass="FOO")
    assert e.value.response["Error"]["Code"] == "InvalidStorageClass"
    s3.put_object(Bucket=bucket, Key="k", Body=b"x", StorageClass="STANDARD_IA",
                  Metadata={"kept": "yes"})
    # A copy onto itself that changes only the storage class is allowed (rclone settier).
    s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"},
                   StorageClass="STANDARD")
    head = s3.head_object(Bucket=bucket, Key="k")
    assert head["Metadata"] == {"kept": "yes"} and head["ContentLength"] == 1
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"})
    assert e.value.response["Error"]["Code"] == "InvalidRequest"


def test_a_browser_form_upload_is_not_implemented_rather_than_denied(s3, bucket):
    import urllib.error
    import urllib.request
    import uuid

    post = s3.generate_presigned_post(bucket, "from-a-form")
    boundary = uuid.uuid4().hex
    fields = [(name, value.encode()) for name, value in post["fields"].items()]
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                    .encode() + value + b"\r\n" for name, value in fields + [("file", b"x")])
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(post["url"], data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=10)
    assert e.value.code == 501 and b"<Code>NotImplemented</Code>" in e.value.read()
