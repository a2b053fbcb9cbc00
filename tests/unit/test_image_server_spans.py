"""How the image server reads through the store (any store, an S3 one included): it opens only
the span it answers (a ranged GET for an object store, not a read from the start), it never
sends bytes of another version than its headers describe, and a store that offers direct
download URLs gets GETs redirected there while HEADs stay here."""

from __future__ import annotations

import uuid as uuidlib

import pytest
from starlette.testclient import TestClient

from imagesvc.services.image_server import app as image_server
from imagesvc.shared.store import LocalStore, StoreError, StoreUnavailable
from tests.unit.test_image_server import DATA, content_md5, publish


class Spy(LocalStore):
    """A LocalStore that records what was opened, and can replace the file once right after the
    image server looked at it (between ``file_info`` and ``open_file``)."""

    def __init__(self, root: str):
        super().__init__(root)
        self.opened: list[tuple[int, int | None]] = []
        self.replace_with: bytes | None = None
        self.replace_always = False
        self.redirect: str | None = None

    def open_file(self, uuid, start=0, end=None):
        self.opened.append((start, end))
        if self.replace_with is not None:
            replacement = self.replace_with
            if not self.replace_always:
                self.replace_with = None
            else:
                replacement += b"+"  # another version each time
                self.replace_with = replacement
            upload = self.upload(uuid, "replace")
            upload.write(replacement)
            upload.commit()
        return super().open_file(uuid, start, end)

    def download_url(self, uuid):
        return self.redirect


def test_a_range_opens_only_that_span(tmp_path):
    store = Spy(str(tmp_path / "images"))
    uuid = publish(store, DATA)
    with TestClient(image_server.create_app(store)) as client:
        part = client.get(f"/images/{uuid}/file", headers={"Range": "bytes=100-199"})
        assert (part.status_code, part.content) == (206, DATA[100:200])
        suffix = client.get(f"/images/{uuid}/file", headers={"Range": "bytes=-4"})
        assert suffix.content == b"tail"
        assert client.head(f"/images/{uuid}/file").status_code == 200
    assert store.opened[:2] == [(100, 200), (len(DATA) - 4, len(DATA))]
    assert all(span != (0, None) for span in store.opened[2:])  # a HEAD reads no file (MD5 aside)


def test_a_file_replaced_between_look_and_open_is_served_as_the_new_version(tmp_path):
    store = Spy(str(tmp_path / "images"))
    uuid = publish(store, DATA)
    replacement = b"new" * 5000
    store.replace_with = replacement
    with TestClient(image_server.create_app(store)) as client:
        answer = client.get(f"/images/{uuid}/file")
    assert answer.status_code == 200
    assert answer.content == replacement
    assert answer.headers["content-length"] == str(len(replacement))
    assert answer.headers.get("content-md5") in (None, content_md5(replacement))


def test_a_store_with_download_urls_gets_gets_redirected(tmp_path):
    store = Spy(str(tmp_path / "images"))
    uuid = publish(store, DATA)
    store.redirect = "http://objects.example/bucket/file?X-Amz-Signature=abc"
    with TestClient(image_server.create_app(store)) as client:
        answer = client.get(f"/images/{uuid}/file", follow_redirects=False)
        assert (answer.status_code, answer.headers["location"]) == (302, store.redirect)
        assert answer.headers["cache-control"] == "no-store"
        head = client.head(f"/images/{uuid}/file")
        assert (head.status_code, head.headers["content-md5"]) == (200, content_md5(DATA))
        assert client.get(f"/images/{uuidlib.uuid4()}/file", follow_redirects=False).status_code == 404
    assert store.opened == []


def test_a_file_replaced_at_every_open_is_503_to_try_again(tmp_path):
    store = Spy(str(tmp_path / "images"))
    uuid = publish(store, DATA)
    store.replace_with, store.replace_always = b"v", True
    with TestClient(image_server.create_app(store)) as client:
        answer = client.get(f"/images/{uuid}/file")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert answer.json()["code"] == "ServiceUnavailable"
    assert len(store.opened) == 3


def failing(store: LocalStore, method: str, failure: Exception) -> LocalStore:
    """``store`` with ``method`` raising ``failure`` from now on."""
    def fail(*_args, **_kwargs):
        raise failure

    setattr(store, method, fail)
    return store


@pytest.mark.parametrize("method", ["manifest", "file_info", "open_file", "uuids", "file_md5"])
def test_a_store_that_cannot_answer_is_503_with_retry_after(tmp_path, method):
    store = Spy(str(tmp_path / "images"))
    uuid = publish(store, DATA)
    failing(store, method, StoreUnavailable("image store s3://b/: cannot read: SlowDown"))
    with TestClient(image_server.create_app(store), raise_server_exceptions=False) as client:
        answers = [client.get("/images"), client.get(f"/images/{uuid}"), client.get(f"/images/{uuid}/file")]
    failed = [answer for answer in answers if answer.status_code != 200]
    assert failed, [answer.status_code for answer in answers]
    for answer in failed:
        assert answer.status_code == 503
        assert answer.json() == {"code": "ServiceUnavailable", "message": "Image store is not available; try again"}
        assert int(answer.headers["retry-after"]) >= 1
        assert "s3://" not in answer.text  # the detail names the store: the log's, not an anonymous client's


def test_another_store_failure_is_a_500_in_the_servers_shape(tmp_path):
    store = Spy(str(tmp_path / "images"))
    uuid = publish(store, DATA)
    failing(store, "file_info", StoreError("image store s3://b/: cannot read: Weird"))
    with TestClient(image_server.create_app(store), raise_server_exceptions=False) as client:
        answer = client.get(f"/images/{uuid}/file")
    assert answer.status_code == 500
    assert answer.json() == {"code": "InternalError", "message": "Internal error"}


def test_a_store_that_cannot_sign_a_download_url_has_the_file_streamed(tmp_path):
    store = Spy(str(tmp_path / "images"))
    uuid = publish(store, DATA)
    failing(store, "download_url", StoreUnavailable("no credentials"))
    with TestClient(image_server.create_app(store), raise_server_exceptions=False) as client:
        answer = client.get(f"/images/{uuid}/file", follow_redirects=False)
    assert (answer.status_code, answer.content) == (200, DATA)


def test_an_s3_store_nobody_answers_for_is_503(monkeypatch):
    import socket

    from imagesvc.shared.store.s3 import S3Options, S3Store

    with socket.socket() as closed:  # a port nothing listens on once this socket is closed
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    store = S3Store("s3://nobody/images", S3Options(endpoint_url=f"http://127.0.0.1:{port}", addressing_style="path",
                                                     max_attempts=1, connect_timeout=1, read_timeout=1))
    with TestClient(image_server.create_app(store), raise_server_exceptions=False) as client:
        for path in ("/images", f"/images/{uuidlib.uuid4()}", f"/images/{uuidlib.uuid4()}/file"):
            answer = client.get(path)
            assert (answer.status_code, answer.json()["code"]) == (503, "ServiceUnavailable"), path
            assert answer.headers["retry-after"] == str(image_server.STORE_RETRY_AFTER)
