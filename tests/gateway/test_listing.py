"""ListObjects v1 and v2: prefixes, delimiters, pages, markers, URL encoding."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError
from s3gateway import signed

pytestmark = pytest.mark.timeout(120)

KEYS = ["a", "a-b", "b/1", "b/2", "b/c/3", "c/x/y", "d", "d/e", "é/ü", "sp ace/+plus"]


@pytest.fixture
def filled(s3, bucket) -> str:
    for key in KEYS:
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
        except ClientError:
            pass  # "d/e" conflicts with the object "d": a directory and a file at one path
    return bucket


STORED = sorted(k for k in KEYS if k != "d/e")


def test_v2_flat_and_delimited(s3, filled):
    out = s3.list_objects_v2(Bucket=filled)
    assert [o["Key"] for o in out["Contents"]] == sorted(STORED, key=str.encode)
    assert out["KeyCount"] == len(STORED) and out["IsTruncated"] is False
    assert out["Contents"][0]["Size"] == 1 and out["Contents"][0]["StorageClass"] == "STANDARD"
    assert "Owner" not in out["Contents"][0]
    out = s3.list_objects_v2(Bucket=filled, Delimiter="/")
    assert [o["Key"] for o in out["Contents"]] == ["a", "a-b", "d"]
    assert [p["Prefix"] for p in out["CommonPrefixes"]] == ["b/", "c/", "sp ace/", "é/"]
    assert out["KeyCount"] == 7
    out = s3.list_objects_v2(Bucket=filled, Delimiter="/", Prefix="b/")
    assert [o["Key"] for o in out["Contents"]] == ["b/1", "b/2"]
    assert [p["Prefix"] for p in out["CommonPrefixes"]] == ["b/c/"]
    out = s3.list_objects_v2(Bucket=filled, Prefix="nothing")
    assert out["KeyCount"] == 0 and "Contents" not in out
    out = s3.list_objects_v2(Bucket=filled, FetchOwner=True, MaxKeys=1)
    assert out["Contents"][0]["Owner"]["DisplayName"] == "vfsd"


def test_v2_pages_with_continuation(s3, filled):
    keys, prefixes, token, pages = [], [], None, 0
    while True:
        kwargs = {"ContinuationToken": token} if token else {}
        out = s3.list_objects_v2(Bucket=filled, Delimiter="/", MaxKeys=2, **kwargs)
        pages += 1
        assert out["KeyCount"] <= 2
        keys += [o["Key"] for o in out.get("Contents", [])]
        prefixes += [p["Prefix"] for p in out.get("CommonPrefixes", [])]
        if not out["IsTruncated"]:
            break
        token = out["NextContinuationToken"]
    assert pages == 4
    assert keys == ["a", "a-b", "d"] and prefixes == ["b/", "c/", "sp ace/", "é/"]
    paginator = s3.get_paginator("list_objects_v2")
    flat = [o["Key"] for page in paginator.paginate(Bucket=filled, PaginationConfig={
        "PageSize": 3}) for o in page.get("Contents", [])]
    assert flat == sorted(STORED, key=str.encode)


def test_v2_start_after(s3, filled):
    out = s3.list_objects_v2(Bucket=filled, StartAfter="b/2")
    assert [o["Key"] for o in out["Contents"]][:2] == ["b/c/3", "c/x/y"]
    assert out["StartAfter"] == "b/2"
    out = s3.list_objects_v2(Bucket=filled, StartAfter="b/", Delimiter="/")
    assert out["CommonPrefixes"][0]["Prefix"] == "c/"  # b/ itself is done


def test_v1_markers(s3, filled):
    out = s3.list_objects(Bucket=filled, MaxKeys=3)
    assert [o["Key"] for o in out["Contents"]] == ["a", "a-b", "b/1"]
    assert out["IsTruncated"] is True and out["Contents"][0]["Owner"]["DisplayName"] == "vfsd"
    out = s3.list_objects(Bucket=filled, Marker="b/1", MaxKeys=2, Delimiter="/")
    assert [p["Prefix"] for p in out["CommonPrefixes"]] == ["c/"]
    assert [o["Key"] for o in out["Contents"]] == ["d"]
    assert out["NextMarker"] == "d"
    paginator = s3.get_paginator("list_objects")
    prefixes = [p["Prefix"] for page in paginator.paginate(
        Bucket=filled, Delimiter="/", PaginationConfig={"PageSize": 1})
        for p in page.get("CommonPrefixes", [])]
    assert prefixes == ["b/", "c/", "sp ace/", "é/"]


def test_encoding_type(gateway, filled):
    r = signed(gateway, "GET", f"/{filled}?list-type=2&prefix=sp%20ace%2F&encoding-type=url")
    assert r.status == 200
    assert b"<Key>sp%20ace/%2Bplus</Key>" in r.body
    assert b"<Prefix>sp%20ace/</Prefix>" in r.body
    r = signed(gateway, "GET", f"/{filled}?list-type=2&prefix=sp%20ace%2F")
    assert b"<Key>sp ace/+plus</Key>" in r.body
    r = signed(gateway, "GET", f"/{filled}?list-type=2&encoding-type=base64")
    assert (r.status, r.code) == (400, "InvalidArgument")


def test_max_keys(gateway, s3, filled):
    out = s3.list_objects_v2(Bucket=filled, MaxKeys=0)  # as S3 (ceph's s3-tests check it)
    assert out["KeyCount"] == 0 and out["IsTruncated"] is False
    out = s3.list_objects_v2(Bucket=filled, MaxKeys=5000)
    assert out["MaxKeys"] == 1000
    r = signed(gateway, "GET", f"/{filled}?list-type=2&max-keys=-1")
    assert (r.status, r.code) == (400, "InvalidArgument")
    r = signed(gateway, "GET", f"/{filled}?list-type=2&max-keys=ten")
    assert (r.status, r.code) == (400, "InvalidArgument")
    r = signed(gateway, "GET", f"/{filled}?list-type=2&continuation-token=!!!")
    assert (r.status, r.code) == (400, "InvalidArgument")
