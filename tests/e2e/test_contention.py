"""Contention on one image, end to end in both modes (reliability plan K1, K2).

K1: many clients change one image at once against the same version (``If-Match``); the consumer
decides under the image's row lock, so exactly one change per version wins and the rest get 412.
K2: many imports of one name at once, and an import racing a delete of that name: exactly one
image, every loser refused with the original's 406, nothing left behind.

Every request is released by a barrier so they really arrive together; an answer of 201 PENDING
is followed to its final state, so the counts are of outcomes, not of first answers.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from imagesvc.shared.contracts.events import image_stream
from imagesvc.shared.db.catalogue import image_lock_name
from imagesvc.shared.db.models import Image, Lock, StoredEvent
from tests.e2e.conftest import database_url
from tests.support.polling import eventually
from tests.support.systems import start_embedded

pytestmark = pytest.mark.e2e

CLIENTS = 20
IMPORTERS = 10
RACES = 5


def final_code(client: httpx.Client, response: httpx.Response) -> int:
    """The HTTP code the command finally ended with (a 201 PENDING is polled to its end)."""
    if response.status_code != 201 or response.json().get("status") not in ("PENDING", "STARTED"):
        return response.status_code
    task_id = response.json()["task_id"]

    def finished() -> int:
        status = client.get(f"/task/{task_id}/status/")
        assert status.json()["status"] in ("SUCCESS", "FAILURE"), status.text
        return status.status_code

    return eventually(finished, timeout=60, interval=0.2)


def all_at_once(system, requests: list) -> list[tuple[int, httpx.Response]]:
    """Send ``requests`` (each ``client -> response``) from as many threads, released together;
    returns (final code, first answer) of each."""
    barrier = threading.Barrier(len(requests))

    def send(request) -> tuple[int, httpx.Response]:
        with system.client() as client:
            barrier.wait(timeout=30)
            response = request(client)
            return final_code(client, response), response

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(send, requests))


def import_image(client: httpx.Client, origin, name: str) -> httpx.Response:
    manifest_url, _ = origin.add_manifest()
    return client.post(f"/image/{name}/", json={"manifest_url": manifest_url, "dc": "main"})


def etag_of(client: httpx.Client, name: str) -> str:
    shown = client.get(f"/image/{name}/")
    assert shown.status_code == 200, shown.text
    return shown.headers["etag"]


def write_side(system, name: str, uuid: str | None = None) -> tuple[int, int, int]:
    """(image rows named ``name``, image locks held on it, events in the stream of ``uuid``, by
    default of the image now named ``name``)."""
    engine = create_engine(database_url(system))
    images, locks, events = Image.__table__, Lock.__table__, StoredEvent.__table__
    try:
        with engine.connect() as conn:
            uuids = set(conn.execute(select(images.c.uuid).where(images.c.name == name)).scalars())
            streams = uuids | ({uuid} if uuid else set())
            held = conn.execute(select(func.count()).select_from(locks).where(
                locks.c.name.in_([image_lock_name(u) for u in streams]))).scalar_one()
            streamed = conn.execute(select(func.count()).select_from(events).where(
                events.c.stream_id.in_([image_stream(u) for u in streams]))).scalar_one()
        return len(uuids), held, streamed
    finally:
        engine.dispose()


class TestIfMatch:
    def test_show_gives_the_version_as_an_etag_that_each_change_raises_by_one(self, system, origin, name):
        with system.client() as client:
            assert import_image(client, origin, name).status_code == 200
            first = etag_of(client, name)
            assert first == '"v1"'
            assert client.put(f"/image/{name}/", json={"desc": "one"}, headers={"If-Match": first}).status_code == 200
            assert etag_of(client, name) == '"v2"'
            # Without If-Match nothing changes from the original's behaviour.
            assert client.put(f"/image/{name}/", json={"desc": "two"}).status_code == 200
            assert etag_of(client, name) == '"v3"'

    def test_twenty_updates_against_one_version_one_wins_the_rest_412(self, system, origin, name):
        with system.client() as client:
            assert import_image(client, origin, name).status_code == 200
            version = etag_of(client, name)
        requests = [
            (lambda client, i=i: client.put(f"/image/{name}/", json={"desc": f"writer {i}"},
                                            headers={"If-Match": version}))
            for i in range(CLIENTS)
        ]
        outcomes = all_at_once(system, requests)
        codes = sorted(code for code, _ in outcomes)
        assert codes == [200] + [412] * (CLIENTS - 1), codes
        for code, response in outcomes:
            if code == 412 and response.status_code == 412:
                assert response.json() == {"detail": "Precondition failed"}
        winner = next(response for code, response in outcomes if code == 200)
        with system.client() as client:
            assert etag_of(client, name) == f'"v{int(version.strip(chr(34))[1:]) + 1}"'
            assert client.get(f"/image/{name}/").json()["result"]["desc"] == winner.json()["result"]["desc"]
        assert write_side(system, name) == (1, 0, 2)  # imported, then exactly one update

    def test_updates_and_deletes_against_one_version_only_one_takes_effect(self, system, origin, name):
        with system.client() as client:
            imported = import_image(client, origin, name)
            assert imported.status_code == 200
            version = etag_of(client, name)
        headers = {"If-Match": version}
        requests = [(lambda client: client.delete(f"/image/{name}/", headers=headers)) for _ in range(CLIENTS // 2)]
        requests += [(lambda client, i=i: client.put(f"/image/{name}/", json={"desc": f"w{i}"}, headers=headers))
                     for i in range(CLIENTS // 2)]
        codes = sorted(code for code, _ in all_at_once(system, requests))
        rows, held, streamed = write_side(system, name, imported.json()["result"]["uuid"])
        assert held == 0 and streamed == 2
        with system.client() as client:
            shown = client.get(f"/image/{name}/")
        # Whichever won: a deleted image stays deleted (the losers that came after it find no
        # image: 404 comes before 412); an updated one is at the next version.
        assert codes.count(200) == 1 and set(codes) <= {200, 404, 412}, codes
        assert (rows, shown.status_code) in ((0, 404), (1, 200))
        if rows:
            assert codes == [200] + [412] * (CLIENTS - 1), codes
            assert shown.headers["etag"] == '"v2"'

    def test_stale_or_malformed_if_match_is_refused_and_changes_nothing(self, system, origin, name):
        with system.client() as client:
            assert import_image(client, origin, name).status_code == 200
            stale = etag_of(client, name)
            assert client.put(f"/image/{name}/", json={"desc": "moved on"}).status_code == 200
            for tag in (stale, '"v99"', 'W/"v2"', "v2", '"x"', '"v2", "v3"'):
                for response in (client.put(f"/image/{name}/", json={"desc": "lost"}, headers={"If-Match": tag}),
                                 client.delete(f"/image/{name}/", headers={"If-Match": tag})):
                    assert (response.status_code, response.json()) == (412, {"detail": "Precondition failed"}), tag
            shown = client.get(f"/image/{name}/")
            assert shown.json()["result"]["desc"] == "moved on" and shown.headers["etag"] == '"v2"'
            # ``*`` matches any existing image.
            assert client.delete(f"/image/{name}/", headers={"If-Match": "*"}).status_code == 200
            # A deleted image never comes back: a late change against its last version is 404.
            late = client.put(f"/image/{name}/", json={"desc": "late"}, headers={"If-Match": '"v2"'})
            assert (late.status_code, late.json()) == (404, {"detail": "Image not found"})
            assert client.get(f"/image/{name}/").status_code == 404


class TestImportContention:
    def test_ten_imports_of_one_name_one_image_the_rest_406(self, system, origin, name):
        requests = [(lambda client: import_image(client, origin, name)) for _ in range(IMPORTERS)]
        outcomes = all_at_once(system, requests)
        codes = sorted(code for code, _ in outcomes)
        assert codes == [200] + [406] * (IMPORTERS - 1), [(code, response.text) for code, response in outcomes]
        for code, response in outcomes:
            if response.status_code == 406:
                assert response.json() == {"detail": "Image already exists"}
        assert write_side(system, name) == (1, 0, 1)
        with system.client() as client:
            assert client.get(f"/image/{name}/").status_code == 200

    def test_an_import_racing_a_delete_ends_consistently(self, system, origin, name):
        for round_ in range(RACES):
            image_name = f"{name}-{round_}"
            requests = [lambda client: import_image(client, origin, image_name),
                        lambda client: client.delete(f"/image/{image_name}/")]
            (imported, _), (deleted, _) = all_at_once(system, requests)
            assert imported == 200
            assert deleted in (200, 404)
            rows, held, _ = write_side(system, image_name)
            assert held == 0
            # The delete either came first (404, the image stays) or removed the new image.
            assert rows == (0 if deleted == 200 else 1)
            with system.client() as client:
                assert client.get(f"/image/{image_name}/").status_code == (404 if rows == 0 else 200)


@pytest.fixture(scope="module")
def store_system(tmp_path_factory):
    """The embedded system with an image store: an import streams the file and holds a PENDING
    image meanwhile."""
    store = tmp_path_factory.mktemp("store")
    started = start_embedded(tmp_path_factory.mktemp("embedded-store"), {"IMAGESVC_IMAGE_STORE": str(store)})
    started.store = store
    yield started
    started.stop()


def test_ten_imports_of_one_name_into_an_image_store(store_system, origin, name):
    # Each request names a different manifest (uuid), so only the name makes them collide.
    manifests = [origin.add_image(b"disk image " * 1000, pace=0.001) for _ in range(IMPORTERS)]
    requests = [(lambda client, url=url: client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"}))
                for url, _ in manifests]
    outcomes = all_at_once(store_system, requests)
    codes = sorted(code for code, _ in outcomes)
    assert codes == [200] + [406] * (IMPORTERS - 1), codes
    assert write_side(store_system, name)[:2] == (1, 0)
    with store_system.client() as client:
        kept = client.get(f"/image/{name}/").json()["result"]["uuid"]
    stored = {path.name for path in store_system.store.rglob("*")}
    losers = {manifest["uuid"] for _, manifest in manifests} - {kept}
    assert not any(uuid in entry for uuid in losers for entry in stored), "a refused import left data behind"
    assert any(kept in entry for entry in stored)
