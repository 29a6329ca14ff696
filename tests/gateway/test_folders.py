"""Folder markers: keys ending in '/' (consoles' "create folder", rclone, s3fs) are the
directories themselves. An empty directory lists as its marker, whether a PUT or mkdir on
the mount made it; one holding objects lists through them."""

from __future__ import annotations

import hashlib

import pytest
from botocore.exceptions import ClientError

EMPTY_ETAG = f'"{hashlib.md5(b"").hexdigest()}"'


def code(e: pytest.ExceptionInfo[ClientError]) -> str:
    return e.value.response["Error"]["Code"]


def keys(s3, bucket: str, **params) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, **params).get("Contents", [])]


def test_a_folder_marker_is_an_empty_directory(gateway, s3, bucket):
    assert s3.put_object(Bucket=bucket, Key="photos/2024/", Body=b"")["ETag"] == EMPTY_ETAG
    assert keys(s3, bucket) == ["photos/2024/"]  # photos/ holds it: no marker of its own
    listed = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["photos/"]
    head = s3.head_object(Bucket=bucket, Key="photos/2024/")
    assert head["ContentLength"] == 0 and head["ETag"] == EMPTY_ETAG
    assert s3.get_object(Bucket=bucket, Key="photos/2024/")["Body"].read() == b""
    # A folder holding objects answers HEAD too (s3fs asks so), and lists through them.
    s3.put_object(Bucket=bucket, Key="photos/2024/a.jpg", Body=b"jpeg")
    assert keys(s3, bucket) == ["photos/2024/a.jpg"]
    assert s3.head_object(Bucket=bucket, Key="photos/2024/")["ContentLength"] == 0
    # Deleting the marker of a folder that holds objects leaves them, as on S3.
    s3.delete_object(Bucket=bucket, Key="photos/2024/")
    assert keys(s3, bucket) == ["photos/2024/a.jpg"]
    s3.put_object(Bucket=bucket, Key="photos/empty/", Body=b"")
    s3.delete_object(Bucket=bucket, Key="photos/empty/")
    assert keys(s3, bucket) == ["photos/2024/a.jpg"]
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="photos/empty/")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_folder_marker_errors(s3, bucket):
    s3.put_object(Bucket=bucket, Key="file", Body=b"x")
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="file/", Body=b"")
    assert code(e) == "KeyConflict"
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="folder/", Body=b"not empty")
    assert code(e) == "InvalidArgument"
    assert keys(s3, bucket) == ["file"]  # nothing half-made
    long_path = "/".join(["d" * 250, "e" * 252])  # 503 bytes: a file fits, its marker not
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key=long_path + "/", Body=b"")
    assert code(e) == "KeyTooLongError"
    with pytest.raises(ClientError) as e:
        s3.create_multipart_upload(Bucket=bucket, Key="folder/")
    assert code(e) == "InvalidArgument" and "folder marker" in e.value.response["Error"][
        "Message"]
    s3.put_object(Bucket=bucket, Key="folder/", Body=b"")
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="folder/", Body=b"", IfNoneMatch="*")
    assert code(e) == "PreconditionFailed"
    s3.copy_object(Bucket=bucket, Key="copied/", CopySource={"Bucket": bucket, "Key": "folder/"})
    assert keys(s3, bucket) == ["copied/", "file", "folder/"]
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="plain", CopySource={"Bucket": bucket,
                                                               "Key": "folder/"})
    assert code(e) == "InvalidArgument"
    # A bucket holding only a folder marker is not empty; rb --force deletes the markers.
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket=bucket)
    assert code(e) == "BucketNotEmpty"
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": k} for k in ("copied/", "file", "folder/")]})
    s3.delete_bucket(Bucket=bucket)
