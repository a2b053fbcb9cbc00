"""The image server in process, over a LocalStore in a temporary directory: what an IMGAPI client
(a compute node, another installation) sees, including byte ranges and the cached Content-MD5."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid as uuidlib

import pytest
from starlette.testclient import TestClient

from imagesvc.cli import main
from imagesvc.services.image_server import app as image_server
from imagesvc.services.image_server.ranges import ByteRange, Unsatisfiable, requested_range
from imagesvc.shared.store import LocalStore

NOT_FOUND = {"code": "ResourceNotFound", "message": "Resource not found"}
DATA = bytes(range(256)) * 40 + b"tail"  # 10244 bytes, every offset distinguishable


def publish(store: LocalStore, data: bytes, **manifest_fields) -> str:
    """Put an image into the store the way the contract says: file first, manifest last."""
    uuid = str(uuidlib.uuid4())
    upload = store.upload(uuid, "test")
    upload.write(data)
    upload.commit()
    store.write_manifest(uuid, {"uuid": uuid, "name": "img", "version": "1.0", **manifest_fields})
    return uuid


def content_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(str(tmp_path / "images"))


@pytest.fixture
def client(store):
    with TestClient(image_server.create_app(store)) as test_client:
        yield test_client


def test_ping_answers_pong_while_the_store_is_usable(client):
    answer = client.get("/ping")
    assert answer.status_code == 200
    assert answer.json() == {"ping": "pong"}
    assert client.head("/ping").status_code == 200


def test_ping_is_503_with_json_when_the_store_is_not_usable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with TestClient(image_server.create_app(LocalStore(str(blocker)))) as client:
        answer = client.get("/ping")
    assert answer.status_code == 503
    assert answer.json()["code"] == "ServiceUnavailable"
    assert str(blocker) not in answer.text  # server paths stay in the log


def test_images_lists_every_manifest_sorted_by_uuid(client, store):
    uuids = [publish(store, b"one", name="a"), publish(store, b"two", name="b")]
    answer = client.get("/images")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert [m["uuid"] for m in answer.json()] == sorted(uuids)
    assert client.get("/images/").json() == answer.json()


def test_an_empty_or_missing_store_lists_nothing(client):
    assert client.get("/images").json() == []


def test_a_manifest_is_served_as_stored(client, store):
    uuid = publish(store, b"x", name="centos-7", files=[{"size": 1}])
    answer = client.get(f"/images/{uuid}")
    assert answer.status_code == 200
    assert answer.json() == store.manifest(uuid)


@pytest.mark.parametrize("path", [
    "/images/{unknown}", "/images/{unknown}/file",
    "/images/{upper}", "/images/{upper}/file",
    "/images/..%2F..%2Fetc%2Fpasswd", "/images/..%2Fetc/file", "/images/not-a-uuid", "/images/%2E%2E/file",
    "/nothing-here", "/images/{uuid}/file/more", "/",
])
def test_unknown_or_non_canonical_names_are_404_resource_not_found(client, store, path):
    uuid = publish(store, DATA)
    target = path.format(unknown=uuidlib.uuid4(), upper=uuid.upper(), uuid=uuid)
    answer = client.get(target)
    assert answer.status_code == 404, target
    assert answer.json() == NOT_FOUND


def test_other_methods_are_405_json_and_nothing_is_written(client, store):
    uuid = publish(store, DATA)
    for method, path in [("POST", "/images"), ("PUT", f"/images/{uuid}"), ("DELETE", f"/images/{uuid}"),
                         ("PUT", f"/images/{uuid}/file"), ("POST", "/ping")]:
        answer = client.request(method, path, content=b"junk")
        assert answer.status_code == 405, (method, path)
        assert answer.json()["code"] == "BadMethod"
        assert "GET" in answer.headers["allow"]
    assert store.uuids() == [uuid]
    with store.open_file(uuid) as handle:
        assert handle.read() == DATA


def test_the_file_comes_whole_with_length_md5_and_caching_headers(client, store):
    uuid = publish(store, DATA)
    answer = client.get(f"/images/{uuid}/file")
    assert answer.status_code == 200
    assert answer.content == DATA
    assert answer.headers["content-type"] == "application/octet-stream"
    assert answer.headers["content-length"] == str(len(DATA))
    assert answer.headers["content-md5"] == content_md5(DATA)
    assert answer.headers["accept-ranges"] == "bytes"
    assert answer.headers["last-modified"].endswith(" GMT")


def test_a_file_streams_in_chunks_without_changing_a_byte(client, store, monkeypatch):
    monkeypatch.setattr(image_server, "STREAM_CHUNK_BYTES", 97)
    uuid = publish(store, DATA)
    with client.stream("GET", f"/images/{uuid}/file") as answer:
        chunks = list(answer.iter_raw())
    assert b"".join(chunks) == DATA
    assert len(chunks) > 1


def test_the_md5_is_computed_once_and_then_read_from_its_cache(client, store):
    uuid = publish(store, DATA)
    assert store.cached_file_md5(uuid) is None
    client.get(f"/images/{uuid}/file")
    assert store.cached_file_md5(uuid) == hashlib.md5(DATA).hexdigest()
    # Prove the second answer comes from the cache: a doctored cached value is what is served.
    sidecar = os.path.join(store.image_dir(uuid), ".file.md5")
    with open(sidecar) as handle:
        cached = json.load(handle)
    cached["md5"] = "0" * 32
    with open(sidecar, "w") as handle:
        json.dump(cached, handle)
    assert client.get(f"/images/{uuid}/file").headers["content-md5"] == base64.b64encode(bytes(16)).decode()


def test_a_replaced_file_is_never_given_the_old_md5(client, store):
    uuid = publish(store, DATA)
    client.get(f"/images/{uuid}/file")
    upload = store.upload(uuid, "again")
    upload.write(b"a new version")
    upload.commit()
    answer = client.get(f"/images/{uuid}/file")
    assert answer.content == b"a new version"
    assert answer.headers["content-md5"] == content_md5(b"a new version")


def test_head_sends_the_headers_and_no_body(client, store):
    uuid = publish(store, DATA)
    answer = client.head(f"/images/{uuid}/file")
    assert answer.status_code == 200
    assert answer.content == b""
    assert answer.headers["content-length"] == str(len(DATA))
    assert answer.headers["content-md5"] == content_md5(DATA)  # small file: computed inline
    assert client.head(f"/images/{uuid}").status_code == 200


def test_head_does_not_compute_the_md5_of_a_large_file_but_sends_a_cached_one(client, store, monkeypatch):
    monkeypatch.setattr(image_server, "HEAD_MD5_INLINE_BYTES", len(DATA) - 1)
    uuid = publish(store, DATA)
    first = client.head(f"/images/{uuid}/file")
    assert first.status_code == 200 and first.headers["content-length"] == str(len(DATA))
    assert "content-md5" not in first.headers
    assert store.cached_file_md5(uuid) is None
    client.get(f"/images/{uuid}/file")
    assert client.head(f"/images/{uuid}/file").headers["content-md5"] == content_md5(DATA)


@pytest.mark.parametrize("header, first, last", [
    ("bytes=2-5", 2, 5),
    ("bytes=10000-", 10000, len(DATA) - 1),
    ("bytes=-4", len(DATA) - 4, len(DATA) - 1),
    ("bytes=-999999", 0, len(DATA) - 1),
    ("bytes=10240-999999", 10240, len(DATA) - 1),
    ("bytes=0-0", 0, 0),
])
def test_a_single_range_is_206_with_its_content_range(client, store, monkeypatch, header, first, last):
    # Small prime chunks: ranges start and end inside chunks and span several (3-byte chunks made
    # the whole-file case 3,400 chunks, 2.4 s).
    monkeypatch.setattr(image_server, "STREAM_CHUNK_BYTES", 97)
    uuid = publish(store, DATA)
    answer = client.get(f"/images/{uuid}/file", headers={"Range": header})
    assert answer.status_code == 206
    assert answer.content == DATA[first:last + 1]
    assert answer.headers["content-range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert answer.headers["content-length"] == str(last - first + 1)
    assert "content-md5" not in answer.headers  # it would be the digest of the part


@pytest.mark.parametrize("header", [f"bytes={len(DATA)}-", "bytes=999999-1000000", "bytes=-0"])
def test_an_unsatisfiable_range_is_416_with_the_size(client, store, header):
    uuid = publish(store, DATA)
    answer = client.get(f"/images/{uuid}/file", headers={"Range": header})
    assert answer.status_code == 416
    assert answer.headers["content-range"] == f"bytes */{len(DATA)}"
    assert answer.json()["code"] == "RequestedRangeNotSatisfiable"


@pytest.mark.parametrize("header", ["bytes=0-1,4-5", "bytes=5-2", "items=0-3", "bytes=abc", "bytes=-"])
def test_several_or_unparseable_ranges_get_the_whole_file(client, store, header):
    uuid = publish(store, DATA)
    answer = client.get(f"/images/{uuid}/file", headers={"Range": header})
    assert answer.status_code == 200
    assert answer.content == DATA
    assert answer.headers["content-md5"] == content_md5(DATA)


def test_if_range_applies_the_range_only_to_the_same_version(client, store):
    uuid = publish(store, DATA)
    last_modified = client.head(f"/images/{uuid}/file").headers["last-modified"]
    same = client.get(f"/images/{uuid}/file", headers={"Range": "bytes=0-3", "If-Range": last_modified})
    assert same.status_code == 206 and same.content == DATA[:4]
    other = client.get(f"/images/{uuid}/file",
                       headers={"Range": "bytes=0-3", "If-Range": "Thu, 01 Jan 1970 00:00:00 GMT"})
    assert other.status_code == 200 and other.content == DATA


def test_head_ignores_a_range(client, store):
    uuid = publish(store, DATA)
    answer = client.head(f"/images/{uuid}/file", headers={"Range": "bytes=0-3"})
    assert answer.status_code == 200
    assert answer.headers["content-length"] == str(len(DATA))


def test_an_empty_file_is_served_and_any_range_of_it_is_416(client, store):
    uuid = publish(store, b"")
    whole = client.get(f"/images/{uuid}/file")
    assert whole.status_code == 200 and whole.content == b""
    assert whole.headers["content-md5"] == content_md5(b"")
    assert client.get(f"/images/{uuid}/file", headers={"Range": "bytes=0-"}).status_code == 416


def test_partial_files_and_files_without_a_manifest_are_invisible(client, store):
    writing = str(uuidlib.uuid4())
    upload = store.upload(writing, "in-progress")
    upload.write(b"half an image")
    not_yet_published = str(uuidlib.uuid4())
    second = store.upload(not_yet_published, "done")
    second.write(b"complete, manifest still to come")
    second.commit()

    assert client.get("/images").json() == []
    for uuid in (writing, not_yet_published):
        for path in (f"/images/{uuid}", f"/images/{uuid}/file"):
            answer = client.get(path)
            assert (answer.status_code, answer.json()) == (404, NOT_FOUND), path
    assert client.get("/images/.partial").status_code == 404
    upload.abort()


def test_an_unreadable_manifest_is_left_out_of_the_list(client, store):
    good = publish(store, b"fine")
    broken = publish(store, b"fine too")
    with open(os.path.join(store.image_dir(broken), "manifest"), "w") as handle:
        handle.write("{not json")
    assert [m["uuid"] for m in client.get("/images").json()] == [good]


def test_a_store_fault_is_a_json_500_not_a_stack_trace(client, store):
    broken = publish(store, b"data")
    with open(os.path.join(store.image_dir(broken), "manifest"), "w") as handle:
        handle.write("{not json")
    answer = client.get(f"/images/{broken}")
    assert answer.status_code == 500
    assert answer.json() == {"code": "InternalError", "message": "Internal error"}


def test_the_image_server_paths_are_told_apart_from_the_gateway_s():
    for path in ("/ping", "/ping/", "/images", "/images/", "/images/x/file"):
        assert image_server.serves(path), path
    for path in ("/api", "/api/image/", "/imagesx", "/pingx", "/", "/api/openapi.json"):
        assert not image_server.serves(path), path


@pytest.mark.parametrize("header, size, expected", [
    (None, 10, None),
    ("bytes=0-", 10, ByteRange(0, 9)),
    ("bytes = 3 - 4", 10, ByteRange(3, 4)),
    ("BYTES=3-4", 10, ByteRange(3, 4)),
    ("bytes=-20", 10, ByteRange(0, 9)),
    ("bytes=1-2, 5-6", 10, None),
    ("bytes=00003-0004", 10, ByteRange(3, 4)),
    ("bytes=200-150", 100, None),
    ("bytes=0-" + "9" * 5000, 10, ByteRange(0, 9)),
    ("bytes=-" + "9" * 5000, 10, ByteRange(0, 9)),
    ("bytes=" + "9" * 5000 + "-" + "1" * 5000, 10, None),
    ("bytes=\u0661-\u0662", 10, None),  # digits, but not ASCII ones: not a range
])
def test_requested_range(header, size, expected):
    assert requested_range(header, size) == expected


@pytest.mark.parametrize("header, size", [("bytes=10-", 10), ("bytes=-1", 0), ("bytes=0-", 0), ("bytes=-0", 10),
                                          ("bytes=" + "9" * 5000 + "-", 10), ("bytes=-" + "0" * 5000, 10)])
def test_requested_range_unsatisfiable(header, size):
    with pytest.raises(Unsatisfiable):
        requested_range(header, size)


def test_the_command_refuses_to_start_without_a_store(monkeypatch, capsys):
    monkeypatch.setenv("IMAGESVC_IMAGE_STORE", "none")
    assert main(["image-server", "--port", "1"]) == 2
    assert "IMAGESVC_IMAGE_STORE" in capsys.readouterr().err
