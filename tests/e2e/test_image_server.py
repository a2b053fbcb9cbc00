"""The image server as users run it: ``imagesvc image-server`` on its own, and inside ``imagesvc
serve`` next to ``/api``, answering real HTTP over a store directory holding one image."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid as uuidlib
from pathlib import Path

import httpx
import pytest

from imagesvc.shared.store import LocalStore
from tests.support.systems import start_embedded, start_image_server

IMAGE_BYTES = os.urandom(3 * 1024 * 1024 + 17)  # several stream chunks


@pytest.fixture
def store_with_one_image(tmp_path) -> tuple[Path, str]:
    root = tmp_path / "images"
    store = LocalStore(str(root))
    uuid = str(uuidlib.uuid4())
    upload = store.upload(uuid, "e2e")
    upload.write(IMAGE_BYTES)
    upload.commit()
    store.write_manifest(uuid, {"uuid": uuid, "name": "e2e-image", "version": "1.0"})
    return root, uuid


def test_image_server_serves_ping_and_the_file_over_http(tmp_path, store_with_one_image):
    root, uuid = store_with_one_image
    server = start_image_server(tmp_path, root)
    try:
        assert httpx.get(f"{server.url}/ping", timeout=10).json() == {"ping": "pong"}
        answer = httpx.get(f"{server.url}/images/{uuid}/file", timeout=30)
        assert answer.status_code == 200
        assert answer.content == IMAGE_BYTES
        assert answer.headers["content-length"] == str(len(IMAGE_BYTES))
        assert answer.headers["content-md5"] == base64.b64encode(hashlib.md5(IMAGE_BYTES).digest()).decode()
        part = httpx.get(f"{server.url}/images/{uuid}/file", headers={"Range": "bytes=-100"}, timeout=10)
        assert (part.status_code, part.content) == (206, IMAGE_BYTES[-100:])
        assert [m["uuid"] for m in httpx.get(f"{server.url}/images", timeout=10).json()] == [uuid]
        assert httpx.get(f"{server.url}/images/{uuidlib.uuid4()}", timeout=10).status_code == 404
    finally:
        server.stop()
    assert '"request.handled"' in server.log("image-server")


def test_serve_answers_the_image_server_paths_next_to_the_api(tmp_path, store_with_one_image):
    root, uuid = store_with_one_image
    workdir = tmp_path / "serve"
    workdir.mkdir()
    system = start_embedded(workdir, extra_env={"IMAGESVC_IMAGE_STORE": str(root)})
    try:
        origin = system.url.removesuffix("/api")
        assert httpx.get(f"{origin}/ping", timeout=10).json() == {"ping": "pong"}
        listed = httpx.get(f"{origin}/images", timeout=10)
        assert listed.status_code == 200
        assert [m["uuid"] for m in listed.json()] == [uuid]
        assert httpx.get(f"{origin}/images/{uuid}/file", timeout=30).content == IMAGE_BYTES
        with system.client() as api:
            assert api.get("/image/").status_code == 200
            unknown = api.get("/nothing-here/")
            assert (unknown.status_code, unknown.json()) == (404, {"detail": "Not found."})
    finally:
        system.stop()
