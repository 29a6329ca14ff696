"""CompleteMultipartUpload as S3 has it since 2024-2025: write conditions (If-None-Match: *,
If-Match), whole-object checksums made of the parts' (FULL_OBJECT CRCs, COMPOSITE digests of
digests), and the part checksums the completion list gives, all checked."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib

import pytest
from awscrt import checksums as crt
from botocore.exceptions import ClientError

pytestmark = pytest.mark.timeout(180)
MiB = 1 << 20


def code(e: pytest.ExceptionInfo[ClientError]) -> str:
    return e.value.response["Error"]["Code"]


def b64(value: int, width: int) -> str:
    return base64.b64encode(value.to_bytes(width, "big")).decode()


def start(s3, bucket: str, key: str, parts: list[bytes], algorithm: str | None = None,
          checksum_type: str | None = None) -> tuple[str, list[dict]]:
    """An upload with these parts sent (each with the algorithm's checksum, if one)."""
    extra = {"ChecksumAlgorithm": algorithm} if algorithm else {}
    if checksum_type:
        extra["ChecksumType"] = checksum_type
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
    listed = []
    for number, body in enumerate(parts, 1):
        sent = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                              Body=body, **({"ChecksumAlgorithm": algorithm} if algorithm
                                            else {}))
        entry = {"PartNumber": number, "ETag": sent["ETag"]}
        if algorithm:
            entry[f"Checksum{algorithm}"] = sent[f"Checksum{algorithm}"]
        listed.append(entry)
    return upload_id, listed


def test_completion_honours_if_none_match_and_if_match(s3, bucket):
    s3.put_object(Bucket=bucket, Key="guarded", Body=b"first")
    upload_id, parts = start(s3, bucket, "guarded", [b"second"])
    done = {"Bucket": bucket, "Key": "guarded", "UploadId": upload_id,
            "MultipartUpload": {"Parts": parts}}
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(IfNoneMatch="*", **done)
    assert code(e) == "PreconditionFailed"
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(IfMatch='"0123456789abcdef0123456789abcdef"', **done)
    assert code(e) == "PreconditionFailed"
    assert s3.get_object(Bucket=bucket, Key="guarded")["Body"].read() == b"first"
    # The upload is still there: completed once the condition holds.
    etag = s3.head_object(Bucket=bucket, Key="guarded")["ETag"]
    s3.complete_multipart_upload(IfMatch=etag, **done)
    assert s3.get_object(Bucket=bucket, Key="guarded")["Body"].read() == b"second"

    upload_id, parts = start(s3, bucket, "fresh", [b"only"])
    s3.complete_multipart_upload(Bucket=bucket, Key="fresh", UploadId=upload_id,
                                 MultipartUpload={"Parts": parts}, IfNoneMatch="*")
    assert s3.get_object(Bucket=bucket, Key="fresh")["Body"].read() == b"only"


@pytest.mark.parametrize("algorithm,crc,width", [
    ("CRC32", zlib.crc32, 4),
    ("CRC32C", crt.crc32c, 4),
    ("CRC64NVME", crt.crc64nvme, 8),
])
def test_full_object_crc_is_checked_kept_and_served(s3, bucket, algorithm, crc, width):
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB + 12345), os.urandom(777)]
    whole = b"".join(parts)
    key = f"full-{algorithm}"
    upload_id, listed = start(s3, bucket, key, parts, algorithm, "FULL_OBJECT")
    done = {"Bucket": bucket, "Key": key, "UploadId": upload_id, "ChecksumType": "FULL_OBJECT",
            "MultipartUpload": {"Parts": listed}}
    wrong = b64(crc(whole) ^ 1, width)
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(**{f"Checksum{algorithm}": wrong}, **done)
    assert code(e) == "BadDigest"
    right = b64(crc(whole), width)
    answer = s3.complete_multipart_upload(**{f"Checksum{algorithm}": right}, **done)
    assert answer[f"Checksum{algorithm}"] == right
    assert answer["ChecksumType"] == "FULL_OBJECT"
    # botocore checks the body against a FULL_OBJECT checksum it is given.
    got = s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert got[f"Checksum{algorithm}"] == right and got["ChecksumType"] == "FULL_OBJECT"
    assert got["Body"].read() == whole
    part = s3.head_object(Bucket=bucket, Key=key, PartNumber=2, ChecksumMode="ENABLED")
    assert part[f"Checksum{algorithm}"] == b64(crc(parts[1]), width)
    assert part["ChecksumType"] == "FULL_OBJECT"


def test_composite_checksum_and_listed_part_checksums(s3, bucket):
    parts = [os.urandom(5 * MiB), os.urandom(100)]
    upload_id, listed = start(s3, bucket, "composite", parts, "SHA256")
    done = {"Bucket": bucket, "Key": "composite", "UploadId": upload_id}
    forged = [dict(listed[0], ChecksumSHA256=base64.b64encode(bytes(32)).decode()), listed[1]]
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(MultipartUpload={"Parts": forged}, **done)
    assert code(e) == "InvalidPart"
    answer = s3.complete_multipart_upload(MultipartUpload={"Parts": listed}, **done)
    digests = b"".join(hashlib.sha256(p).digest() for p in parts)
    expected = f"{base64.b64encode(hashlib.sha256(digests).digest()).decode()}-2"
    assert answer["ChecksumSHA256"] == expected and answer["ChecksumType"] == "COMPOSITE"
    head = s3.head_object(Bucket=bucket, Key="composite", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == expected and head["ChecksumType"] == "COMPOSITE"
    # ?partNumber=N answers with that part's checksum, also on a copy (same chunk map).
    s3.copy_object(Bucket=bucket, Key="copied", CopySource={"Bucket": bucket,
                                                           "Key": "composite"})
    for key in ("composite", "copied"):
        for number, body in enumerate(parts, 1):
            part_sum = base64.b64encode(hashlib.sha256(body).digest()).decode()
            got = s3.get_object(Bucket=bucket, Key=key, PartNumber=number,
                                ChecksumMode="ENABLED")
            assert got["ChecksumSHA256"] == part_sum and got["ChecksumType"] == "COMPOSITE"
            assert got["Body"].read() == body
            head = s3.head_object(Bucket=bucket, Key=key, PartNumber=number,
                                  ChecksumMode="ENABLED")
            assert head["ChecksumSHA256"] == part_sum
    assert "ChecksumSHA256" not in s3.head_object(Bucket=bucket, Key="composite", PartNumber=1)


def test_checksum_modes_that_do_not_fit_are_refused(s3, bucket):
    with pytest.raises(ClientError) as e:
        s3.create_multipart_upload(Bucket=bucket, Key="x", ChecksumAlgorithm="SHA256",
                                   ChecksumType="FULL_OBJECT")
    assert code(e) == "InvalidRequest"
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="x",
                                           ChecksumAlgorithm="SHA256")["UploadId"]
    with pytest.raises(ClientError) as e:  # a part with another algorithm's checksum
        s3.upload_part(Bucket=bucket, Key="x", UploadId=upload_id, PartNumber=1, Body=b"a",
                       ChecksumAlgorithm="CRC32")
    assert code(e) == "InvalidRequest"
    # An upload begun without one: a whole-object checksum at completion cannot fit it.
    upload_id, listed = start(s3, bucket, "plain", [b"abc"])
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="plain", UploadId=upload_id,
                                     ChecksumCRC32=b64(zlib.crc32(b"abc"), 4),
                                     ChecksumType="FULL_OBJECT",
                                     MultipartUpload={"Parts": listed})
    assert code(e) == "InvalidRequest"


def test_upload_file_with_a_whole_file_crc(s3, bucket, tmp_path):
    """The transfer manager sends the file's CRC32 as the object's FULL_OBJECT checksum."""
    from boto3.s3.transfer import TransferConfig

    data = os.urandom(20 * MiB + 3)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    crc = b64(zlib.crc32(data), 4)
    s3.upload_file(str(path), bucket, "uploaded", ExtraArgs={"ChecksumCRC32": crc},
                   Config=TransferConfig(multipart_threshold=8 * MiB,
                                         multipart_chunksize=8 * MiB))
    got = s3.get_object(Bucket=bucket, Key="uploaded", ChecksumMode="ENABLED")
    assert got["ChecksumCRC32"] == crc
    assert got["Body"].read() == data


def test_get_object_attributes(s3, bucket):
    parts = [os.urandom(5 * MiB), os.urandom(1234)]
    upload_id, listed = start(s3, bucket, "attrs", parts, "CRC32", "FULL_OBJECT")
    done = s3.complete_multipart_upload(Bucket=bucket, Key="attrs", UploadId=upload_id,
                                        MultipartUpload={"Parts": listed})
    got = s3.get_object_attributes(
        Bucket=bucket, Key="attrs",
        ObjectAttributes=["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"])
    assert got["ETag"] == done["ETag"].strip('"')  # S3 gives it without quotes here
    assert got["ObjectSize"] == sum(map(len, parts)) and got["StorageClass"] == "STANDARD"
    assert got["Checksum"] == {"ChecksumCRC32": done["ChecksumCRC32"],
                               "ChecksumType": "FULL_OBJECT"}
    assert got["ObjectParts"]["TotalPartsCount"] == 2
    assert [(p["PartNumber"], p["Size"]) for p in got["ObjectParts"]["Parts"]] == [
        (1, 5 * MiB), (2, 1234)]
    page = s3.get_object_attributes(Bucket=bucket, Key="attrs", ObjectAttributes=["ObjectParts"],
                                    MaxParts=1, PartNumberMarker=1)["ObjectParts"]
    assert [p["PartNumber"] for p in page["Parts"]] == [2] and page["IsTruncated"] is False
    s3.put_object(Bucket=bucket, Key="plain", Body=b"abc")
    got = s3.get_object_attributes(Bucket=bucket, Key="plain", ObjectAttributes=["ObjectSize"])
    assert got["ObjectSize"] == 3 and "ETag" not in got and "ObjectParts" not in got
    with pytest.raises(ClientError) as e:
        s3.get_object_attributes(Bucket=bucket, Key="missing", ObjectAttributes=["ETag"])
    assert code(e) == "NoSuchKey"
