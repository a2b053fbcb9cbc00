"""The image store in an S3 bucket (``IMAGESVC_IMAGE_STORE=s3://bucket/prefix``), distributed
mode: every service its own process on RabbitMQ + PostgreSQL, ``imagesvc image-server`` and a
node agent over the same bucket of a real S3 server (the ``s3_endpoint`` fixture).

The key flows of the directory store's e2e tests (tests/e2e/test_image_store.py,
test_image_server.py, test_snapshot_images.py), checked on the bucket itself: an import streams
the file into an object (multipart: parts of 5 MiB) that the image server serves byte-identical,
ranges and Content-MD5 included; an update rewrites the stored manifest; a delete leaves no
object; a failed import leaves no object and no unfinished multipart upload; a snapshot image
is uploaded by the node agent; with presigned redirects the file is fetched from the bucket."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import uuid as uuidlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import launch
from tests.e2e.test_image_store import accepted, finished, start_import
from tests.e2e.test_snapshot_images import new_vm, post, start_agent
from tests.support.polling import eventually
from tests.support.systems import start_embedded, start_image_server

pytestmark = pytest.mark.e2e

NODE = "node1"
PART_BYTES = 5 * 1024 * 1024
PREFIX = "e2e/images"
IDLE_TIMEOUT = 3


class Bucket:
    """The test's bucket, read directly (not through imagesvc)."""

    def __init__(self, endpoint: Any):
        import boto3

        self.client = boto3.client("s3", endpoint_url=endpoint.endpoint_url, aws_access_key_id=endpoint.access_key,
                                   aws_secret_access_key=endpoint.secret_key, region_name=endpoint.region)
        self.name = f"e2e-{uuidlib.uuid4().hex[:16]}"
        self.client.create_bucket(Bucket=self.name)
        self.env = {
            "IMAGESVC_IMAGE_STORE": f"s3://{self.name}/{PREFIX}",
            "IMAGESVC_S3_ENDPOINT_URL": endpoint.endpoint_url,
            "IMAGESVC_S3_ADDRESSING_STYLE": "path",
            "IMAGESVC_S3_PART_BYTES": str(PART_BYTES),
            "AWS_ACCESS_KEY_ID": endpoint.access_key,
            "AWS_SECRET_ACCESS_KEY": endpoint.secret_key,
            "AWS_DEFAULT_REGION": endpoint.region,
            "AWS_REGION": endpoint.region,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def keys(self, containing: str = "") -> list[str]:
        return sorted(found["Key"] for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
                      for found in page.get("Contents", ()) if containing in found["Key"])

    def uploads(self, containing: str = "") -> list[str]:
        return sorted(found["Key"] for found in self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", [])
                      if containing in found["Key"])

    def read(self, uuid: str, name: str, prefix: str = PREFIX) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=f"{prefix}/{uuid}/{name}")["Body"].read()

    def leftovers(self, uuid: str) -> list[str]:
        return self.keys(uuid) + [f"upload:{key}" for key in self.uploads(uuid)]

    def remove(self) -> None:
        for found in self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", []):
            self.client.abort_multipart_upload(Bucket=self.name, Key=found["Key"], UploadId=found["UploadId"])
        for key in self.keys():
            self.client.delete_object(Bucket=self.name, Key=key)
        self.client.delete_bucket(Bucket=self.name)


@pytest.fixture(scope="module")
def bucket(s3_endpoint):
    made = Bucket(s3_endpoint)
    yield made
    made.remove()


@pytest.fixture(scope="module")
def vms(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vms")


@pytest.fixture(scope="module")
def image_server(tmp_path_factory, bucket):
    started = start_image_server(tmp_path_factory.mktemp("image-server"), bucket.env["IMAGESVC_IMAGE_STORE"],
                                 extra_env=bucket.env)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def system(request, tmp_path_factory, bucket, vms, image_server):
    env = {**bucket.env, "IMAGESVC_SNAPSHOT_DIR": str(vms), "IMAGESVC_IMAGE_SERVER_URL": image_server.url,
           "IMAGESVC_DOWNLOAD_IDLE_TIMEOUT": str(IDLE_TIMEOUT), "IMAGESVC_SWEEP_SECONDS": "0.5"}
    started = launch("distributed", request, tmp_path_factory, **env)
    try:
        started.admin("node", "set", NODE, "--status", "online")
        start_agent(started)
    except BaseException:
        started.stop()
        raise
    yield started
    started.stop()


def test_an_import_is_uploaded_to_the_bucket_and_served_identical(system, origin, bucket, image_server, name):
    content = os.urandom(2 * PART_BYTES + 4321)  # three parts
    url, manifest = origin.add_image(content)
    uuid = manifest["uuid"]
    with system.client() as client:
        status = finished(client, start_import(client, name, url), timeout=60)
        assert status.status_code == 200, status.text
        assert client.get(f"/image/{name}/").json()["result"]["status"] == 1
    assert bucket.read(uuid, "file") == content
    written = json.loads(bucket.read(uuid, "manifest"))
    assert (written["uuid"], written["name"]) == (uuid, name)
    assert written["files"][0]["sha1"] == hashlib.sha1(content).hexdigest()
    assert bucket.uploads() == []

    file_url = f"{image_server.url}/images/{uuid}/file"
    whole = httpx.get(file_url, timeout=60)
    assert whole.status_code == 200 and whole.content == content
    assert whole.headers["content-md5"] == base64.b64encode(hashlib.md5(content).digest()).decode()
    assert whole.headers["content-length"] == str(len(content))
    head = httpx.head(file_url, timeout=10)
    assert head.headers["content-md5"] == whole.headers["content-md5"]
    for asked, span in [("bytes=-100", slice(-100, None)), (f"bytes={PART_BYTES - 5}-{PART_BYTES + 5}",
                                                             slice(PART_BYTES - 5, PART_BYTES + 6)),
                        ("bytes=7-", slice(7, None))]:
        part = httpx.get(file_url, headers={"Range": asked}, timeout=30)
        assert (part.status_code, part.content) == (206, content[span]), asked
        assert part.headers["content-range"].endswith(f"/{len(content)}")
        assert "content-md5" not in part.headers
    assert httpx.get(file_url, headers={"Range": f"bytes={len(content)}-"}, timeout=10).status_code == 416
    assert uuid in [found["uuid"] for found in httpx.get(f"{image_server.url}/images", timeout=10).json()]
    assert httpx.get(f"{image_server.url}/ping", timeout=10).json() == {"ping": "pong"}


def test_an_update_rewrites_the_manifest_and_a_delete_leaves_no_object(system, origin, bucket, name):
    url, manifest = origin.add_image(os.urandom(64 * 1024))
    uuid = manifest["uuid"]
    with system.client() as client:
        assert finished(client, start_import(client, name, url)).status_code == 200
        status = finished(client, accepted(client.put(f"/image/{name}/", json={"desc": "rewritten"})))
        assert status.status_code == 200, status.text
        assert json.loads(bucket.read(uuid, "manifest"))["description"] == "rewritten"
        assert bucket.keys(uuid) != []
        status = finished(client, accepted(client.delete(f"/image/{name}/")))
        assert status.status_code == 200, status.text
        assert client.get(f"/image/{name}/").status_code == 404
    assert bucket.leftovers(uuid) == []


def test_a_failed_import_leaves_no_object_and_no_unfinished_upload(system, origin, bucket, name):
    content = os.urandom(PART_BYTES + 1000)  # a part is uploaded before the checksum is known
    url, manifest = origin.add_image(content, sha1="ab" * 20)
    with system.client() as client:
        status = finished(client, start_import(client, name, url), timeout=60)
        assert status.status_code == 400, status.text
        assert status.json()["result"]["code"] == "checksum_mismatch"
        assert client.get(f"/image/{name}/").status_code == 404
    assert bucket.leftovers(manifest["uuid"]) == []
    assert bucket.uploads() == []


def test_a_snapshot_image_is_uploaded_by_the_node_agent(system, vms, bucket, image_server, name):
    vm = new_vm(system, {"vms": vms}, size_bytes=12 * 1024 * 1024,
                content=os.urandom(6 * 1024 * 1024) + b"\0" * (6 * 1024 * 1024))
    with system.client() as client:
        answer = post(client, vm["hostname"], vm["snapname"], name)
        assert answer.status_code in (200, 201), answer.text
        status = finished(client, answer.json()["task_id"], timeout=90)
        assert status.status_code == 200, status.text
        image = client.get(f"/image/{name}/").json()["result"]
    compressed = bucket.read(image["uuid"], "file")
    assert gzip.decompress(compressed) == vm["data"]
    described = json.loads(bucket.read(image["uuid"], "manifest"))["files"][0]
    assert described == {"sha1": hashlib.sha1(compressed).hexdigest(), "size": len(compressed), "compression": "gzip"}
    assert bucket.uploads() == []
    served = httpx.get(f"{image_server.url}/images/{image['uuid']}/file", timeout=60)
    assert served.content == compressed


def test_presigned_redirects_send_the_client_to_the_bucket(system, origin, bucket, tmp_path, name):
    content = os.urandom(300 * 1024)
    url, manifest = origin.add_image(content)
    with system.client() as client:
        assert finished(client, start_import(client, name, url)).status_code == 200
    redirecting = start_image_server(tmp_path, bucket.env["IMAGESVC_IMAGE_STORE"], extra_env={
        **bucket.env, "IMAGESVC_IMAGE_SERVER_REDIRECT": "presigned", "IMAGESVC_IMAGE_SERVER_REDIRECT_SECONDS": "60"})
    try:
        file_url = f"{redirecting.url}/images/{manifest['uuid']}/file"
        answer = httpx.get(file_url, timeout=10)
        assert answer.status_code == 302
        assert answer.headers["location"].startswith(bucket.env["IMAGESVC_S3_ENDPOINT_URL"])
        assert httpx.get(file_url, follow_redirects=True, timeout=30).content == content
        ranged = httpx.get(file_url, headers={"Range": "bytes=10-19"}, follow_redirects=True, timeout=30)
        assert (ranged.status_code, ranged.content) == (206, content[10:20])
        head = httpx.head(file_url, timeout=10)  # answered by the image server itself
        assert head.status_code == 200 and head.headers["content-length"] == str(len(content))
        assert httpx.get(f"{redirecting.url}/images/{uuidlib.uuid4()}/file", timeout=10).status_code == 404
    finally:
        redirecting.stop()


def test_an_importer_killed_mid_upload_leaves_no_unfinished_upload(system, origin, bucket, name):
    content = os.urandom(PART_BYTES + 512 * 1024)
    url, manifest = origin.add_image(content, stall_after=PART_BYTES + 256 * 1024)  # then nothing more
    uuid = manifest["uuid"]
    with system.client() as client:
        task_id = start_import(client, name, url)
        eventually(lambda: _assert(bucket.uploads(uuid) != [], "no part uploaded yet"), timeout=30)
        system.kill("importer")  # its multipart upload is left unfinished
        system.start_worker("importer")
        # The next delivery aborts it before it starts over; the download stalls again and
        # fails (idle timeout), and that attempt's upload is aborted too.
        status = finished(client, task_id, timeout=IDLE_TIMEOUT + 60)
        assert status.status_code == 400, status.text
        assert status.json()["result"]["code"] == "timeout"
        assert client.get(f"/image/{name}/").status_code == 404
    assert bucket.leftovers(uuid) == []


def _assert(condition: bool, message: str) -> None:
    assert condition, message


def test_serve_keeps_its_images_in_a_bucket(tmp_path, origin, bucket, name):
    prefix = "e2e/serve"
    system = start_embedded(tmp_path, {**bucket.env, "IMAGESVC_IMAGE_STORE": f"s3://{bucket.name}/{prefix}"})
    try:
        content = os.urandom(PART_BYTES + 1000)
        url, manifest = origin.add_image(content)
        with system.client() as client:
            status = finished(client, start_import(client, name, url), timeout=60)
            assert status.status_code == 200, status.text
        assert bucket.read(manifest["uuid"], "file", prefix) == content
        served = httpx.get(f"{system.url.removesuffix('/api')}/images/{manifest['uuid']}/file", timeout=30)
        assert served.content == content
        assert served.headers["content-md5"] == base64.b64encode(hashlib.md5(content).digest()).decode()
    finally:
        system.stop()


def test_store_check_verifies_the_images_in_the_bucket(system, origin, bucket, name):
    import subprocess
    import sys

    url, manifest = origin.add_image(os.urandom(PART_BYTES + 10))
    with system.client() as client:
        assert finished(client, start_import(client, name, url), timeout=60).status_code == 200
    # A dangling upload of an image that is OK: garbage, aborted by --repair.
    bucket.client.create_multipart_upload(Bucket=bucket.name, Key=f"{PREFIX}/{manifest['uuid']}/file")
    done = subprocess.run([sys.executable, "-m", "imagesvc", "store", "check", "--repair"], env=system.env,
                          cwd=system.workdir, capture_output=True, text=True, timeout=120)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    summary = lines[-1]
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary["problems"] == 0 and summary["verified"] >= 1 and summary["removed"] == 1, summary
    assert [(line["finding"], line["image"], line["removed"]) for line in lines[:-1]] == [
        ("garbage", manifest["uuid"], True)]
    assert bucket.uploads() == []


def test_a_removal_killed_after_the_manifest_is_finished_by_the_lease_sweeper(system, origin, bucket, name):
    """The S3 store has no trash to move an image back from: a removal that got past the manifest
    is completed (``restore`` is False), the task ends SUCCESS and no object is left."""
    url, manifest = origin.add_image(os.urandom(64 * 1024))
    uuid = manifest["uuid"]
    with system.client() as client:
        assert finished(client, start_import(client, name, url)).status_code == 200
        system.kill("deleter")
        crashed = system.log("deleter").count("crash point after_manifest_removed reached")
        shared = system.env
        system.env = {**shared, "IMAGESVC_CRASH_AT": "after_manifest_removed", "IMAGESVC_LEASE_SECONDS": "3"}
        try:
            system.start_worker("deleter")
        finally:
            system.env = shared
        task_id = accepted(client.delete(f"/image/{name}/"))

        def died() -> None:
            assert system.log("deleter").count("crash point after_manifest_removed reached") > crashed
            assert system.processes["deleter"].poll() is not None

        eventually(died, timeout=30)
        assert f"{PREFIX}/{uuid}/file" in bucket.keys(uuid)  # half removed: the manifest only
        status = finished(client, task_id, timeout=60)  # the lease runs out; another process's sweeper ends it
        assert status.status_code == 200, status.text
        assert client.get(f"/image/{name}/").status_code == 404
        system.start_worker("deleter")  # the command comes back: a duplicate now
    assert bucket.leftovers(uuid) == []
