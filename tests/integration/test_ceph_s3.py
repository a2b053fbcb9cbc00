"""The test S3 server (tests/support/ceph.py) is a real radosgw and does what the S3 store needs:
buckets, whole and ranged object reads, multipart uploads (completed, aborted, listed, with S3's
minimum part size enforced), SigV4 presigned URLs fetched by a plain HTTP client; and stopping a
cluster leaves no daemon behind."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError

from tests.support import ceph
from tests.support.ceph import new_bucket, s3_client

pytestmark = pytest.mark.s3

MIB = 1024 * 1024


@pytest.fixture
def client(s3_endpoint):
    return s3_client(s3_endpoint)


@pytest.fixture
def bucket(s3_endpoint):
    return new_bucket(s3_endpoint)


def _error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def test_the_server_is_radosgw_with_our_user(s3_endpoint, client, bucket):
    answer = client.list_buckets()
    assert bucket in [found["Name"] for found in answer["Buckets"]]
    assert answer["Owner"]["ID"] == "imagesvc-test"
    # radosgw names its requests after the zone: tx<id>-<time>-<instance>-<zone>.
    assert answer["ResponseMetadata"]["RequestId"].startswith("tx")
    assert answer["ResponseMetadata"]["RequestId"].endswith("-default")
    assert client.get_bucket_location(Bucket=bucket)["LocationConstraint"] == "default"


def test_wrong_secret_is_refused(s3_endpoint):
    impostor = s3_client(ceph.S3Endpoint(s3_endpoint.endpoint_url, s3_endpoint.access_key, "not-the-secret",
                                         s3_endpoint.region))
    with pytest.raises(ClientError) as refused:
        impostor.list_buckets()
    assert _error_code(refused) == "SignatureDoesNotMatch"


def test_new_buckets_are_fresh_and_distinct(s3_endpoint, client):
    first, second = new_bucket(s3_endpoint), new_bucket(s3_endpoint)
    assert first != second
    client.put_object(Bucket=first, Key="only-here", Body=b"x")
    assert client.list_objects_v2(Bucket=second)["KeyCount"] == 0
    assert [found["Key"] for found in client.list_objects_v2(Bucket=first)["Contents"]] == ["only-here"]


def test_put_get_and_ranged_get(client, bucket):
    content = os.urandom(300 * 1024)
    put = client.put_object(Bucket=bucket, Key="images/a/file", Body=content)
    assert put["ETag"].strip('"') == hashlib.md5(content).hexdigest()

    whole = client.get_object(Bucket=bucket, Key="images/a/file")
    assert whole["ContentLength"] == len(content)
    assert whole["Body"].read() == content

    ranged = client.get_object(Bucket=bucket, Key="images/a/file", Range="bytes=1000-1999")
    assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert ranged["ContentRange"] == f"bytes 1000-1999/{len(content)}"
    assert ranged["Body"].read() == content[1000:2000]

    tail = client.get_object(Bucket=bucket, Key="images/a/file", Range="bytes=-10")
    assert tail["Body"].read() == content[-10:]

    with pytest.raises(ClientError) as beyond:
        client.get_object(Bucket=bucket, Key="images/a/file", Range=f"bytes={len(content)}-")
    assert _error_code(beyond) == "InvalidRange"

    with pytest.raises(ClientError) as missing:
        client.get_object(Bucket=bucket, Key="images/a/other")
    assert _error_code(missing) == "NoSuchKey"


def test_multipart_upload_completes_and_is_listed_until_then(client, bucket):
    first, last = os.urandom(5 * MIB), os.urandom(123_456)
    upload = client.create_multipart_upload(Bucket=bucket, Key="big")["UploadId"]
    assert [(found["Key"], found["UploadId"]) for found in
            client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == [("big", upload)]
    parts = [{"PartNumber": number, "ETag": client.upload_part(Bucket=bucket, Key="big", UploadId=upload,
                                                               PartNumber=number, Body=body)["ETag"]}
             for number, body in ((1, first), (2, last))]
    listed = client.list_parts(Bucket=bucket, Key="big", UploadId=upload)["Parts"]
    assert [(part["PartNumber"], part["Size"]) for part in listed] == [(1, len(first)), (2, len(last))]
    # Not visible before completion.
    with pytest.raises(ClientError) as early:
        client.head_object(Bucket=bucket, Key="big")
    assert early.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404

    client.complete_multipart_upload(Bucket=bucket, Key="big", UploadId=upload, MultipartUpload={"Parts": parts})
    # radosgw 16's completion answer carries no ETag (boto3 reads ""); the object has S3's
    # multipart ETag: the MD5 of the parts' MD5s, dash, the number of parts.
    digests = b"".join(hashlib.md5(body).digest() for body in (first, last))
    assert client.head_object(Bucket=bucket, Key="big")["ETag"] == f'"{hashlib.md5(digests).hexdigest()}-2"'
    assert client.get_object(Bucket=bucket, Key="big")["Body"].read() == first + last
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_multipart_upload_abort_leaves_nothing(client, bucket):
    upload = client.create_multipart_upload(Bucket=bucket, Key="dropped")["UploadId"]
    client.upload_part(Bucket=bucket, Key="dropped", UploadId=upload, PartNumber=1, Body=b"x" * 1024)
    client.abort_multipart_upload(Bucket=bucket, Key="dropped", UploadId=upload)

    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    with pytest.raises(ClientError) as gone:
        client.upload_part(Bucket=bucket, Key="dropped", UploadId=upload, PartNumber=2, Body=b"y")
    assert _error_code(gone) == "NoSuchUpload"


def test_multipart_parts_below_the_minimum_are_refused(client, bucket):
    # A real S3 rule (every part but the last is at least 5 MiB) that a fake might not enforce.
    upload = client.create_multipart_upload(Bucket=bucket, Key="small-parts")["UploadId"]
    parts = [{"PartNumber": number, "ETag": client.upload_part(Bucket=bucket, Key="small-parts", UploadId=upload,
                                                               PartNumber=number, Body=b"z" * 1024)["ETag"]}
             for number in (1, 2)]
    with pytest.raises(ClientError) as refused:
        client.complete_multipart_upload(Bucket=bucket, Key="small-parts", UploadId=upload,
                                         MultipartUpload={"Parts": parts})
    assert _error_code(refused) == "EntityTooSmall"
    client.abort_multipart_upload(Bucket=bucket, Key="small-parts", UploadId=upload)


def test_presigned_get_url_works_with_plain_http(client, bucket):
    content = os.urandom(64 * 1024)
    client.put_object(Bucket=bucket, Key="shared", Body=content)
    url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared"}, ExpiresIn=300)
    assert "X-Amz-Signature=" in url  # SigV4

    fetched = httpx.get(url, timeout=30)
    assert fetched.status_code == 200
    assert fetched.content == content

    ranged = httpx.get(url, headers={"Range": "bytes=10-19"}, timeout=30)
    assert ranged.status_code == 206
    assert ranged.content == content[10:20]

    tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    assert httpx.get(tampered, timeout=30).status_code == 403
    assert httpx.get(url.split("?")[0], timeout=30).status_code == 403  # not public without it


def _processes_using(directory: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if str(directory).encode() in command and "zombie" not in state:
            found.append(int(entry.name))
    return found


def test_a_cluster_of_its_own_starts_serves_and_stops_without_leftovers(tmp_path):
    why = ceph.available()
    if why:
        ceph.unavailable(why)
    endpoint, stop = ceph.start_s3(tmp_path / "own")
    try:
        assert len(_processes_using(tmp_path / "own")) == 3  # monitor, OSD, radosgw
        bucket = new_bucket(endpoint)
        s3_client(endpoint).put_object(Bucket=bucket, Key="k", Body=b"v")
        assert s3_client(endpoint).get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    finally:
        stop()
    assert _processes_using(tmp_path / "own") == []
    with pytest.raises(httpx.TransportError):
        httpx.get(endpoint.endpoint_url, timeout=5)
    stop()  # a second stop is harmless
