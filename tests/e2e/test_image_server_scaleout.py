"""Image servers scale out: several ``imagesvc image-server`` processes over one store serve the
same images with the same bytes and the same headers, so a client (or a load balancer) may use any
of them, switch between them mid-download, and lose one.

The store is a fixture parameter (``shared_store``): a ``SharedStore`` is the store spec every
process gets as ``IMAGESVC_IMAGE_STORE`` plus the environment it needs, and the test reads the
store only through the processes, never through the filesystem, so another kind of store is one
more parameter.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.origin import Origin
from tests.support.polling import eventually
from tests.support.systems import System, start_embedded, start_image_server

pytestmark = pytest.mark.e2e

#: Several stream chunks (the server reads 1 MiB at a time), not a multiple of any of them.
IMAGE_BYTES = os.urandom(3 * 1024 * 1024 + 4099)
#: The headers that must not depend on which image server answered (ETag: none is sent today;
#: if a store adds one, it must agree too).
AGREED_HEADERS = ("content-length", "content-md5", "last-modified", "accept-ranges", "content-range", "etag",
                  "content-type")


@dataclass(frozen=True)
class SharedStore:
    """A store every process of the test opens: ``spec`` is its ``IMAGESVC_IMAGE_STORE``, ``env``
    what else those processes need to reach it (an S3 endpoint and credentials, say)."""

    spec: str
    env: dict[str, str] = field(default_factory=dict)


def _directory_store(request, tmp_path: Path) -> SharedStore:
    return SharedStore(str(tmp_path / "shared-store"))


#: Kind of store -> how to make one for a test. Another kind is one more entry, e.g. an S3 bucket
#: of the test's own: ``request.getfixturevalue("s3_endpoint")`` for the endpoint, then
#: ``SharedStore("s3://<bucket>", {"IMAGESVC_S3_ENDPOINT_URL": ..., "AWS_ACCESS_KEY_ID": ..., ...})``.
STORES = {"directory": _directory_store}


@pytest.fixture(params=sorted(STORES))
def shared_store(request, tmp_path) -> SharedStore:
    return STORES[request.param](request, tmp_path)


@pytest.fixture
def origin():
    served = Origin()
    yield served
    served.close()


@pytest.fixture
def stoppable():
    """Systems to stop when the test ends, however it ends."""
    started: list[System] = []
    yield started
    for system in reversed(started):
        system.stop()


def _workdir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


def _imported(system: System, name: str, manifest_url: str) -> dict:
    """Import ``manifest_url`` as ``name`` through ``system``'s API, waiting for the end; returns
    the image's API object (fails the test unless the import succeeded)."""
    with system.client() as api:
        answer = api.post(f"/image/{name}/", json={"manifest_url": manifest_url, "dc": "main"},
                          headers={"ES-STREAM": "es"})
        assert answer.status_code in (200, 201), answer.text
        final = answer.text.strip().splitlines()[-1]
        assert '"status":"SUCCESS"' in final.replace(" ", ""), answer.text

        def ok() -> dict:
            shown = api.get(f"/image/{name}/")
            assert shown.status_code == 200 and shown.json()["result"]["status"] == 1, shown.text  # 1: OK
            return shown.json()["result"]

        return eventually(ok, timeout=30)


def _deleted(system: System, name: str) -> None:
    with system.client() as api:
        answer = api.delete(f"/image/{name}/", headers={"ES-STREAM": "es"})
        assert answer.status_code in (200, 201), answer.text
        eventually(lambda: _assert_status(api.get(f"/image/{name}/"), 404), timeout=30)


def _assert_status(answer: httpx.Response, status: int) -> None:
    assert answer.status_code == status, answer.text


def _agreed(answer: httpx.Response) -> dict[str, str | None]:
    return {name: answer.headers.get(name) for name in AGREED_HEADERS}


def test_two_image_servers_over_one_store_serve_the_same_bytes_and_survive_losing_one(
        tmp_path, shared_store, origin, stoppable, name):
    store_env = {"IMAGESVC_IMAGE_STORE": shared_store.spec, **shared_store.env}
    url, manifest = origin.add_image(IMAGE_BYTES)
    uuid = manifest["uuid"]

    # The image is imported once, by the installation that owns the store.
    owner = start_embedded(_workdir(tmp_path, "owner"), store_env)
    stoppable.append(owner)
    _imported(owner, name, url)
    origin_fetches = origin.hits.count(f"/images/{uuid}/file")

    servers = [start_image_server(_workdir(tmp_path, f"image-server-{i}"), shared_store.spec, shared_store.env)
               for i in range(2)]
    stoppable.extend(servers)
    first, second = servers
    whole_md5 = base64.b64encode(hashlib.md5(IMAGE_BYTES).digest()).decode()
    file_path = f"/images/{uuid}/file"

    # The first downloads of the new file, through both servers at once: each process computes
    # the file's MD5 (the cache is empty) and writes the store's one cache concurrently.
    with ThreadPoolExecutor(8) as pool:
        downloads = list(pool.map(lambda i: httpx.get(servers[i % 2].url + file_path, timeout=60), range(8)))
    for answer in downloads:
        assert answer.status_code == 200
        assert answer.content == IMAGE_BYTES
        assert answer.headers["content-md5"] == whole_md5
    assert _agreed(downloads[0]) == _agreed(downloads[1])
    assert downloads[0].headers["content-length"] == str(len(IMAGE_BYTES))

    for server in servers:
        assert httpx.get(server.url + "/ping", timeout=10).json() == {"ping": "pong"}
    manifests = [httpx.get(f"{server.url}/images/{uuid}", timeout=10) for server in servers]
    assert manifests[0].status_code == 200 and manifests[0].json() == manifests[1].json()
    assert manifests[0].json()["uuid"] == uuid
    listings = [httpx.get(f"{server.url}/images", timeout=10).json() for server in servers]
    assert listings[0] == listings[1] and [m["uuid"] for m in listings[0]] == [uuid]

    # HEAD (the cached MD5 now) and GET agree on every header, whichever server answers.
    heads = [httpx.head(server.url + file_path, timeout=10) for server in servers]
    assert [h.status_code for h in heads] == [200, 200]
    assert _agreed(heads[0]) == _agreed(heads[1]) == _agreed(downloads[0])

    # A byte range, and a download resumed through the other server: the validator one server
    # gave (Last-Modified) is the other's too, so If-Range yields the range, not the whole file.
    span = {"Range": "bytes=1048570-2097160"}
    parts = [httpx.get(server.url + file_path, headers=span, timeout=10) for server in servers]
    for part in parts:
        assert part.status_code == 206
        assert part.content == IMAGE_BYTES[1048570:2097161]
        assert part.headers["content-range"] == f"bytes 1048570-2097160/{len(IMAGE_BYTES)}"
    assert _agreed(parts[0]) == _agreed(parts[1])
    head_part = httpx.get(first.url + file_path, headers={"Range": "bytes=0-99999"}, timeout=10)
    resumed = httpx.get(second.url + file_path, timeout=10, headers={
        "Range": "bytes=100000-", "If-Range": head_part.headers["last-modified"]})
    assert resumed.status_code == 206
    assert head_part.content + resumed.content == IMAGE_BYTES

    # Another installation imports the image from the first server (its manifest URL, and the
    # file beside it), as a node or a second data centre fetches from an image server.
    consumer = start_embedded(_workdir(tmp_path, "consumer"),
                              {"IMAGESVC_IMAGE_STORE": str(tmp_path / "consumer-store")})
    stoppable.append(consumer)
    consumer_origin = consumer.url.removesuffix("/api")
    fetched = _imported(consumer, name, f"{first.url}/images/{uuid}")
    assert fetched["uuid"] == uuid
    assert httpx.get(consumer_origin + file_path, timeout=30).content == IMAGE_BYTES
    _deleted(consumer, name)

    # One image server dies; the other serves on, the same bytes, and the installation imports
    # the image again, through it.
    first.kill("image-server", signal.SIGKILL)
    with pytest.raises(httpx.TransportError):
        httpx.get(first.url + "/ping", timeout=5)
    survivor = httpx.get(second.url + file_path, timeout=30)
    assert (survivor.status_code, survivor.content) == (200, IMAGE_BYTES)
    assert _agreed(survivor) == _agreed(downloads[0])
    _imported(consumer, name, f"{second.url}/images/{uuid}")
    assert httpx.get(consumer_origin + file_path, timeout=30).content == IMAGE_BYTES

    # Every download after the import came from the image servers, never from the origin.
    assert origin.hits.count(f"/images/{uuid}/file") == origin_fetches
    assert file_path in first.log("image-server") and file_path in second.log("image-server")
