"""SigV4: what a request must carry, and each error code a bad one gets. Requests are signed by
botocore's own signer (`signed`), with one thing broken at a time."""

from __future__ import annotations

import datetime
import hashlib

import pytest
from botocore.exceptions import ClientError
from s3gateway import client, raw, signed

pytestmark = pytest.mark.timeout(60)


def test_anonymous_is_denied(gateway):
    r = raw(gateway.endpoint, "GET", "/")
    assert (r.status, r.code) == (403, "AccessDenied")
    assert r.headers["content-type"] == "application/xml"


def test_signed_request_works(gateway, bucket):
    r = signed(gateway, "PUT", f"/{bucket}/k", body=b"data")
    assert r.status == 200
    r = signed(gateway, "GET", f"/{bucket}/k")
    assert (r.status, r.body) == (200, b"data")


def test_wrong_secret(gateway, bucket):
    r = signed(gateway, "GET", f"/{bucket}", secret="not-the-secret")
    assert (r.status, r.code) == (403, "SignatureDoesNotMatch")
    assert b"<StringToSign>AWS4-HMAC-SHA256" in r.body
    with pytest.raises(ClientError) as e:
        client(gateway.endpoint, type(gateway.keys)(gateway.keys.access_key, "wrong")
               ).list_buckets()
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_unknown_access_key(gateway, bucket):
    r = signed(gateway, "GET", f"/{bucket}", access_key="VFNOSUCHKEY000000000")
    assert (r.status, r.code) == (403, "InvalidAccessKeyId")


def test_clock_skew(gateway, bucket):
    for minutes in (-16, 16):
        when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=minutes)
        r = signed(gateway, "GET", f"/{bucket}", when=when)
        assert (r.status, r.code) == (403, "RequestTimeTooSkewed"), minutes
    when = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=14)
    assert signed(gateway, "GET", f"/{bucket}", when=when).status == 200


def test_payload_hash_mismatch(gateway, bucket):
    wrong = hashlib.sha256(b"something else").hexdigest()
    r = signed(gateway, "PUT", f"/{bucket}/k", body=b"the body", payload=wrong)
    assert (r.status, r.code) == (400, "XAmzContentSHA256Mismatch")
    assert signed(gateway, "GET", f"/{bucket}/k").status == 404  # nothing was stored
    r = signed(gateway, "PUT", f"/{bucket}/k", body=b"the body", payload="UNSIGNED-PAYLOAD")
    assert r.status == 200
    r = signed(gateway, "PUT", f"/{bucket}/k", body=b"x", payload="not-a-hash")
    assert (r.status, r.code) == (400, "InvalidArgument")
    # DeleteObjects bodies are checked too.
    body = b"<Delete><Object><Key>k</Key></Object></Delete>"
    r = signed(gateway, "POST", f"/{bucket}?delete", body=body, payload=wrong)
    assert (r.status, r.code) == (400, "XAmzContentSHA256Mismatch")


def test_streaming_payloads(gateway, bucket):
    """aws-chunked bodies (tests/gateway/test_aws_chunked.py has the rest): an empty one,
    one without its decoded length, and SigV4a's ECDSA variant, which is not implemented."""
    r = signed(gateway, "PUT", f"/{bucket}/k", {"Content-Encoding": "aws-chunked",
                                                "x-amz-decoded-content-length": "0"},
               body=b"0\r\n\r\n", payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    assert r.status == 200, r.body
    r = signed(gateway, "PUT", f"/{bucket}/k", {"Content-Encoding": "aws-chunked"},
               body=b"0\r\n\r\n", payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    assert (r.status, r.code) == (411, "MissingContentLength")
    r = signed(gateway, "PUT", f"/{bucket}/k", {"Content-Encoding": "aws-chunked"},
               body=b"0\r\n\r\n", payload="STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD")
    assert (r.status, r.code) == (501, "NotImplemented")


def test_malformed_authorization(gateway, bucket):
    r = signed(gateway, "GET", f"/{bucket}", region="eu-west-1")
    assert (r.status, r.code) == (400, "AuthorizationHeaderMalformed")
    assert b"<Region>us-east-1</Region>" in r.body
    r = raw(gateway.endpoint, "GET", f"/{bucket}", {"Authorization": "AWS4-HMAC-SHA256 nonsense",
                                                      "x-amz-date": "20250101T000000Z",
                                                      "x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    assert (r.status, r.code) == (400, "AuthorizationHeaderMalformed")
    r = raw(gateway.endpoint, "GET", f"/{bucket}", {"Authorization": "AWS AKID:c2ln"})
    assert (r.status, r.code) == (400, "InvalidRequest")
    # S3 wants x-amz-content-sha256 with header auth; plain SigV4 (not S3's) omits it.
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    request = AWSRequest(method="GET", url=f"{gateway.endpoint}/{bucket}")
    SigV4Auth(Credentials(gateway.keys.access_key, gateway.keys.secret_key), "s3",
              "us-east-1").add_auth(request)
    r = raw(gateway.endpoint, "GET", f"/{bucket}", dict(request.headers.items()))
    assert (r.status, r.code) == (400, "InvalidRequest")


def test_presigned_query_errors(gateway, bucket):
    r = raw(gateway.endpoint, "GET", f"/{bucket}?X-Amz-Algorithm=AWS4-HMAC-SHA256")
    assert (r.status, r.code) == (400, "AuthorizationQueryParametersError")
    r = raw(gateway.endpoint, "GET", f"/{bucket}?AWSAccessKeyId=VFNOSUCHKEY000000000"
            "&Expires=9999999999&Signature=abc")
    assert (r.status, r.code) == (403, "InvalidAccessKeyId")


def test_virtual_host_addressing(gateway, s3, bucket):
    s3.put_object(Bucket=bucket, Key="vh/key", Body=b"virtual")
    # Host: <bucket>.localhost:<port>, path /vh/key, sent to 127.0.0.1 and signed as such.
    host = f"{bucket}.localhost:{gateway.port}"
    r = signed_with_host(gateway, "GET", "/vh/key", host)
    assert (r.status, r.body) == (200, b"virtual")
    r = signed_with_host(gateway, "GET", "/?list-type=2", host)
    assert r.status == 200 and b"<Key>vh/key</Key>" in r.body
    r = signed_with_host(gateway, "GET", "/vh/key", f"no-such-bucket-xyz.localhost:{gateway.port}")
    assert (r.status, r.code) == (404, "NoSuchBucket")


def signed_with_host(gateway, method: str, path: str, host: str):
    """Sign for a virtual host name but connect to 127.0.0.1 (no DNS needed)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method=method, url=f"http://{host}{path}", data=b"")
    S3SigV4Auth(Credentials(gateway.keys.access_key, gateway.keys.secret_key), "s3",
                "us-east-1").add_auth(request)
    headers = dict(request.headers.items())
    headers["Host"] = host
    return raw(gateway.endpoint, method, path, headers)
