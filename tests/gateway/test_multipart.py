"""Multipart upload through boto3 and the aws CLI: parts staged as chunks, stitched on
complete, released on abort."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from s3gateway import client, env_with_keys, make_store, wait_for

from vfsd.store import Store, fsck
from vfsd.store.chunks import LOGICAL

pytestmark = pytest.mark.timeout(180)
MiB = 1 << 20
AWS = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")


def code(e: pytest.ExceptionInfo[ClientError]) -> str:
    return e.value.response["Error"]["Code"]


def s3_etag(parts: list[bytes]) -> str:
    digests = b"".join(hashlib.md5(p).digest() for p in parts)
    return f'"{hashlib.md5(digests).hexdigest()}-{len(parts)}"'


def upload(s3, bucket: str, key: str, parts: list[bytes]) -> dict:
    mpu = s3.create_multipart_upload(Bucket=bucket, Key=key, ContentType="text/x-test",
                                     Metadata={"colour": "blue"})
    uid = mpu["UploadId"]
    done = []
    for number, body in enumerate(parts, 1):
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=number, Body=body)
        assert r["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
        done.append({"PartNumber": number, "ETag": r["ETag"]})
    return s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid,
                                        MultipartUpload={"Parts": done})


@pytest.mark.parametrize("sizes", [
    [5 * MiB, 5 * MiB, 1234],  # chunk-aligned parts, short last part
    [5 * MiB + 1, 5 * MiB + 3, 70_000],  # every boundary unaligned: re-chunked
    [5 * MiB, 5 * MiB + 1, 5 * MiB, 1],  # aligned, then unaligned from part 2 on
    [1],  # a single tiny part is fine (it is the last)
])
def test_multipart_round_trip(s3, bucket, sizes):
    parts = [os.urandom(n) for n in sizes]
    if len(parts) > 2:
        parts[1] = parts[1][:100_000] + bytes(len(parts[1]) - 200_000) + parts[1][-100_000:]
    result = upload(s3, bucket, "dir/big.bin", parts)
    assert result["ETag"] == s3_etag(parts)
    got = s3.get_object(Bucket=bucket, Key="dir/big.bin")
    assert got["Body"].read() == b"".join(parts)
    assert got["ETag"] == s3_etag(parts)
    assert got["ContentType"] == "text/x-test"
    assert got["Metadata"] == {"colour": "blue"}
    assert got["ContentLength"] == sum(sizes)
    head = s3.head_object(Bucket=bucket, Key="dir/big.bin")
    assert head["ETag"] == s3_etag(parts)
    # a range across a part boundary
    start = sizes[0] - 10
    end = min(sum(sizes) - 1, start + 100)
    if len(sizes) > 1:
        ranged = s3.get_object(Bucket=bucket, Key="dir/big.bin", Range=f"bytes={start}-{end}")
        assert ranged["Body"].read() == b"".join(parts)[start:end + 1]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_retried_completion_answers_as_the_first(s3, bucket):
    """A client whose CompleteMultipartUpload answer was lost (a dropped connection) retries
    it; S3 answers 200 with the object's ETag again, not NoSuchUpload. Once the object has
    changed, the upload is gone for good."""
    parts = [os.urandom(5 * MiB), os.urandom(1000)]
    mpu = s3.create_multipart_upload(Bucket=bucket, Key="retried")
    done = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key="retried",
                                                     UploadId=mpu["UploadId"], PartNumber=n,
                                                     Body=body)["ETag"]}
            for n, body in enumerate(parts, 1)]

    def complete() -> dict:
        return s3.complete_multipart_upload(Bucket=bucket, Key="retried",
                                            UploadId=mpu["UploadId"],
                                            MultipartUpload={"Parts": done})

    assert complete()["ETag"] == s3_etag(parts)
    assert complete()["ETag"] == s3_etag(parts)
    assert s3.get_object(Bucket=bucket, Key="retried")["Body"].read() == b"".join(parts)
    with pytest.raises(ClientError) as e:  # another key does not know the upload
        s3.complete_multipart_upload(Bucket=bucket, Key="other", UploadId=mpu["UploadId"],
                                     MultipartUpload={"Parts": done})
    assert code(e) == "NoSuchUpload"
    s3.put_object(Bucket=bucket, Key="retried", Body=b"newer")
    with pytest.raises(ClientError) as e:
        complete()
    assert code(e) == "NoSuchUpload"
    assert s3.get_object(Bucket=bucket, Key="retried")["Body"].read() == b"newer"


def test_get_and_head_by_part_number(s3, bucket):
    """?partNumber=N reads part N of a multipart object as a range of it (206, with the parts
    count); a single-part object has one part; copies keep the parts, a plain PUT drops them."""
    sizes = [5 * MiB + 7, 5 * MiB, 1000]
    parts = [os.urandom(n) for n in sizes]
    upload(s3, bucket, "parts.bin", parts)
    offset = 0
    for number, body in enumerate(parts, 1):
        got = s3.get_object(Bucket=bucket, Key="parts.bin", PartNumber=number)
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["Body"].read() == body
        assert got["ContentRange"] == f"bytes {offset}-{offset + len(body) - 1}/{sum(sizes)}"
        assert got["PartsCount"] == 3 and got["ETag"] == s3_etag(parts)
        head = s3.head_object(Bucket=bucket, Key="parts.bin", PartNumber=number)
        assert head["ContentLength"] == len(body) and head["PartsCount"] == 3
        offset += len(body)
    for bad, error in ((4, "InvalidPartNumber"), (0, "InvalidArgument"),
                       (10_001, "InvalidArgument")):
        with pytest.raises(ClientError) as e:
            s3.get_object(Bucket=bucket, Key="parts.bin", PartNumber=bad)
        assert code(e) == error, bad
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="parts.bin", PartNumber=1, Range="bytes=0-9")
    assert code(e) == "InvalidRequest"

    s3.copy_object(Bucket=bucket, Key="copy.bin", CopySource={"Bucket": bucket,
                                                               "Key": "parts.bin"})
    assert s3.get_object(Bucket=bucket, Key="copy.bin", PartNumber=3)["Body"].read() == parts[2]

    s3.put_object(Bucket=bucket, Key="parts.bin", Body=b"one part now")
    whole = s3.get_object(Bucket=bucket, Key="parts.bin", PartNumber=1)
    assert whole["Body"].read() == b"one part now" and "PartsCount" not in whole
    assert whole["ContentRange"] == "bytes 0-11/12"
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="parts.bin", PartNumber=2)
    assert code(e) == "InvalidPartNumber"


def test_upload_file_100mib(s3, bucket, tmp_path):
    src = tmp_path / "src"
    with open(src, "wb") as f:
        f.writelines(os.urandom(MiB) for _ in range(100))
    config = TransferConfig(multipart_threshold=8 * MiB)
    s3.upload_file(str(src), bucket, "hundred", Config=config)
    dst = tmp_path / "dst"
    s3.download_file(bucket, "hundred", str(dst))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == digest
    head = s3.head_object(Bucket=bucket, Key="hundred")
    assert head["ContentLength"] == 100 * MiB
    assert head["ETag"].endswith('-13"')  # 8 MiB parts: 12 full + 4 MiB


def test_part_errors(s3, bucket):
    key = "errs"
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    small = s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=1, Body=b"x" * 100)
    last = s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=2, Body=b"y")
    parts = [{"PartNumber": 1, "ETag": small["ETag"]}, {"PartNumber": 2, "ETag": last["ETag"]}]
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid,
                                     MultipartUpload={"Parts": parts})
    assert code(e) == "EntityTooSmall"
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid,
                                     MultipartUpload={"Parts": parts[::-1]})
    assert code(e) == "InvalidPartOrder"
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": last["ETag"]}]})
    assert code(e) == "InvalidPart"
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": 3, "ETag": last["ETag"]}]})
    assert code(e) == "InvalidPart"
    with pytest.raises(ClientError) as e:
        s3.upload_part(Bucket=bucket, Key=key, UploadId="0" * 32, PartNumber=1, Body=b"z")
    assert code(e) == "NoSuchUpload"
    with pytest.raises(ClientError) as e:
        s3.upload_part(Bucket=bucket, Key="other", UploadId=uid, PartNumber=1, Body=b"z")
    assert code(e) == "NoSuchUpload"
    # the single last part alone completes
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid,
                                 MultipartUpload={"Parts": [parts[1]]})
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"y"
    with pytest.raises(ClientError) as e:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=uid)
    assert code(e) == "NoSuchUpload"


def test_list_parts_uploads_and_replace_part(s3, bucket):
    a = s3.create_multipart_upload(Bucket=bucket, Key="a/x")["UploadId"]
    b = s3.create_multipart_upload(Bucket=bucket, Key="b")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="a/x", UploadId=a, PartNumber=2, Body=b"2" * 10)
    s3.upload_part(Bucket=bucket, Key="a/x", UploadId=a, PartNumber=1, Body=b"1" * 10)
    s3.upload_part(Bucket=bucket, Key="a/x", UploadId=a, PartNumber=1, Body=b"one")
    listed = s3.list_parts(Bucket=bucket, Key="a/x", UploadId=a)
    assert [(p["PartNumber"], p["Size"]) for p in listed["Parts"]] == [(1, 3), (2, 10)]
    assert listed["Parts"][0]["ETag"] == f'"{hashlib.md5(b"one").hexdigest()}"'
    page = s3.list_parts(Bucket=bucket, Key="a/x", UploadId=a, MaxParts=1)
    assert page["IsTruncated"] and page["NextPartNumberMarker"] == 1
    uploads = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("a/x", a), ("b", b)]
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix="a/")
            ["Uploads"]] == ["a/x"]
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0  # nothing visible yet
    s3.abort_multipart_upload(Bucket=bucket, Key="a/x", UploadId=a)
    s3.abort_multipart_upload(Bucket=bucket, Key="b", UploadId=b)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_upload_part_copy(s3, bucket):
    source = os.urandom(6 * MiB + 5)
    s3.put_object(Bucket=bucket, Key="src", Body=source)
    uid = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    p1 = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=1,
                             CopySource={"Bucket": bucket, "Key": "src"},
                             CopySourceRange=f"bytes=0-{5 * MiB}")
    p2 = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=2,
                             CopySource={"Bucket": bucket, "Key": "src"})
    parts = [{"PartNumber": 1, "ETag": p1["CopyPartResult"]["ETag"]},
             {"PartNumber": 2, "ETag": p2["CopyPartResult"]["ETag"]}]
    s3.complete_multipart_upload(Bucket=bucket, Key="dst", UploadId=uid,
                                 MultipartUpload={"Parts": parts})
    body = s3.get_object(Bucket=bucket, Key="dst")["Body"].read()
    assert body == source[:5 * MiB + 1] + source


def test_abort_releases_chunks(tmp_path, gateway_process):
    store = tmp_path / "store"
    keys = make_store(store)
    process = gateway_process(store)
    s3 = client(process.endpoint, keys)
    s3.create_bucket(Bucket="abort")
    uid = s3.create_multipart_upload(Bucket="abort", Key="k")["UploadId"]
    for number in (1, 2):
        s3.upload_part(Bucket="abort", Key="k", UploadId=uid, PartNumber=number,
                       Body=os.urandom(5 * MiB + number))
    process.stop()
    with Store.open(store) as opened:
        report = fsck.check(opened)
        assert report.clean, report.damage
        with opened.env.read() as tx:
            assert tx.counter(LOGICAL) > 10 * MiB  # the parts hold their chunks
    process = gateway_process(store)
    s3 = client(process.endpoint, keys)
    s3.abort_multipart_upload(Bucket="abort", Key="k", UploadId=uid)
    with pytest.raises(ClientError) as e:
        s3.list_parts(Bucket="abort", Key="k", UploadId=uid)
    assert code(e) == "NoSuchUpload"
    process.stop()
    with Store.open(store) as opened:
        report = fsck.check(opened)
        assert report.clean, report.damage
        with opened.env.read() as tx:
            assert tx.counter(LOGICAL) == 0
            assert tx.entries(tx.db.uploads) == 0


@pytest.mark.skipif(AWS is None, reason="the aws CLI is not installed")
def test_aws_cli_multipart(gateway, s3, bucket, tmp_path):
    src = tmp_path / "twenty"
    src.write_bytes(os.urandom(20 * MiB))
    env = env_with_keys(gateway)
    done = subprocess.run([AWS, "--endpoint-url", gateway.endpoint, "s3", "cp", str(src),
                           f"s3://{bucket}/cli/twenty"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    head = s3.head_object(Bucket=bucket, Key="cli/twenty")
    assert "-" in head["ETag"]  # it went multipart
    got = s3.get_object(Bucket=bucket, Key="cli/twenty")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(src.read_bytes()).digest()


@pytest.mark.timeout(300)
def test_kill_9_during_upload_part(tmp_path, gateway_process):
    """A part cut off by kill -9 is not recorded; the upload and its other parts survive,
    fsck is clean, and the upload can be finished after a restart."""
    store = tmp_path / "store"
    keys = make_store(store)
    process = gateway_process(store)
    s3 = client(process.endpoint, keys, signature_version="s3v4")
    s3.create_bucket(Bucket="crash")
    uid = s3.create_multipart_upload(Bucket="crash", Key="k")["UploadId"]
    first = os.urandom(5 * MiB)
    e1 = s3.upload_part(Bucket="crash", Key="k", UploadId=uid, PartNumber=1, Body=first)["ETag"]
    url = urlsplit(s3.generate_presigned_url(
        "upload_part", Params={"Bucket": "crash", "Key": "k", "UploadId": uid,
                               "PartNumber": 2}, ExpiresIn=600))
    segments = store / "segments"

    def segment_bytes() -> int:
        return sum(f.stat().st_size for f in segments.iterdir())

    before = segment_bytes()
    total = 256 * MiB
    release = threading.Event()
    outcome: dict[str, object] = {}

    def body():
        for i in range(total // MiB):
            if i == 32:
                release.wait(60)  # hold the rest back until the gateway is dead
            yield os.urandom(MiB)

    def send() -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        try:
            conn.request("PUT", f"{url.path}?{url.query}", body=body(),
                         headers={"Content-Length": str(total)})
            outcome["status"] = conn.getresponse().status
        except OSError as e:
            outcome["error"] = e
        finally:
            conn.close()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    wait_for(lambda: segment_bytes() - before >= 16 * MiB, what="staged chunks")
    process.kill()
    release.set()
    thread.join(60)
    assert "status" not in outcome, outcome
    with Store.open(store) as opened:
        report = fsck.check(opened)
        assert report.clean, report.damage
    process = gateway_process(store)
    s3 = client(process.endpoint, keys)
    parts = s3.list_parts(Bucket="crash", Key="k", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["ETag"]) for p in parts] == [(1, e1)]
    second = os.urandom(1000)
    e2 = s3.upload_part(Bucket="crash", Key="k", UploadId=uid, PartNumber=2, Body=second)["ETag"]
    s3.complete_multipart_upload(
        Bucket="crash", Key="k", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert s3.get_object(Bucket="crash", Key="k")["Body"].read() == first + second


def test_list_uploads_with_a_delimiter(s3, bucket):
    for key in ("a/1", "a/2", "b/x/1", "c", "d/1"):
        s3.create_multipart_upload(Bucket=bucket, Key=key)
    page = s3.list_multipart_uploads(Bucket=bucket, Delimiter="/")
    assert [u["Key"] for u in page["Uploads"]] == ["c"]
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["a/", "b/", "d/"]
    page = s3.list_multipart_uploads(Bucket=bucket, Delimiter="/", Prefix="b/")
    assert "Uploads" not in page and [p["Prefix"] for p in page["CommonPrefixes"]] == ["b/x/"]
    # Paged two at a time: a common prefix counts as one, and the next page starts past it.
    seen, marker = [], {}
    while True:
        page = s3.list_multipart_uploads(Bucket=bucket, Delimiter="/", MaxUploads=2, **marker)
        seen += [u["Key"] for u in page.get("Uploads", [])]
        seen += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        if not page["IsTruncated"]:
            break
        marker = {"KeyMarker": page["NextKeyMarker"],
                  "UploadIdMarker": page["NextUploadIdMarker"]}
    assert sorted(seen) == ["a/", "b/", "c", "d/"]
