"""Bucket operations, and buckets as top-level directories of the store."""

from __future__ import annotations

import uuid

import pytest
from botocore.exceptions import ClientError
from s3gateway import signed

from vfsd.store import Store

pytestmark = pytest.mark.timeout(60)


def code_of(excinfo) -> tuple[int, str]:
    response = excinfo.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def test_bucket_life_cycle(gateway, s3):
    name = f"life-{uuid.uuid4().hex[:8]}"
    # Canned ACLs are accepted and ignored (one account owns everything).
    assert s3.create_bucket(Bucket=name, ACL="public-read")["Location"] == f"/{name}"
    listed = s3.list_buckets()
    assert name in [b["Name"] for b in listed["Buckets"]]
    assert listed["Owner"]["DisplayName"] == "vfsd"
    assert s3.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPHeaders"][
        "x-amz-bucket-region"] == "us-east-1"
    assert s3.get_bucket_location(Bucket=name)["LocationConstraint"] is None
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket=name)
    assert code_of(e) == (409, "BucketAlreadyOwnedByYou")
    s3.put_object(Bucket=name, Key="deep/key", Body=b"x")
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket=name)
    assert code_of(e) == (409, "BucketNotEmpty")
    s3.delete_object(Bucket=name, Key="deep/key")
    assert s3.delete_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 204
    for call in (lambda: s3.head_bucket(Bucket=name), lambda: s3.delete_bucket(Bucket=name),
                 lambda: s3.list_objects_v2(Bucket=name),
                 lambda: s3.get_bucket_location(Bucket=name),
                 lambda: s3.put_object(Bucket=name, Key="k", Body=b"x"),
                 lambda: s3.get_object(Bucket=name, Key="k")):
        with pytest.raises(ClientError) as e:
            call()
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        if e.value.response["Error"]["Code"] != "404":  # HEAD has no body
            assert e.value.response["Error"]["Code"] == "NoSuchBucket"


def test_bucket_names(gateway, s3):
    for bad in ("ab", "Has-Upper", "under_score", "a..b", "10.0.0.1", "-lead", "x" * 64):
        r = signed(gateway, "PUT", f"/{bad}")
        assert (r.status, r.code) == (400, "InvalidBucketName"), bad


def test_location_constraint(gateway, s3):
    name = f"loc-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={
            "LocationConstraint": "eu-west-1"})
    assert code_of(e) == (400, "InvalidLocationConstraint")
    body = (b'<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b"<LocationConstraint>us-east-1</LocationConstraint></CreateBucketConfiguration>")
    assert signed(gateway, "PUT", f"/{name}", body=body).status == 200
    r = signed(gateway, "PUT", f"/{name}-2", body=b"<not xml")
    assert (r.status, r.code) == (400, "MalformedXML")


def test_buckets_are_directories(gateway, s3):
    name = f"dirs-{uuid.uuid4().hex[:8]}"
    with Store.open(gateway.store) as store:
        store.makedirs(f"{name}/made/by/the/core")  # a bucket made through the core
        store.makedirs("not_a_bucket")  # not a valid bucket name: not listed
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert name in names and "not_a_bucket" not in names
    # The empty directory at the bottom is a folder marker: an object, so the bucket is not
    # empty; deleting it takes the directories it leaves empty too.
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=name)["Contents"]] == [
        "made/by/the/core/"]
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket=name)
    assert e.value.response["Error"]["Code"] == "BucketNotEmpty"
    s3.delete_object(Bucket=name, Key="made/by/the/core/")
    assert s3.list_objects_v2(Bucket=name)["KeyCount"] == 0
    s3.delete_bucket(Bucket=name)


def test_list_buckets_pages(gateway, s3):
    prefix = f"page-{uuid.uuid4().hex[:6]}"
    for i in range(3):
        s3.create_bucket(Bucket=f"{prefix}-{i}")
    first = s3.list_buckets(Prefix=prefix, MaxBuckets=2)
    assert [b["Name"] for b in first["Buckets"]] == [f"{prefix}-0", f"{prefix}-1"]
    rest = s3.list_buckets(Prefix=prefix, MaxBuckets=2,
                           ContinuationToken=first["ContinuationToken"])
    assert [b["Name"] for b in rest["Buckets"]] == [f"{prefix}-2"]
    assert "ContinuationToken" not in rest


def test_method_not_allowed_on_service(gateway):
    r = signed(gateway, "DELETE", "/")
    assert (r.status, r.code) == (405, "MethodNotAllowed")
