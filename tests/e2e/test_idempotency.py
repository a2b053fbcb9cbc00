"""``Idempotency-Key`` (an addition; reliability plan C3: "a duplicate POST with the same key gets
the original answer"), both modes: a repeated keyed command gets the first one's task and answer
and has no second effect, whether it comes after the first ended or races it.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, func, select

from imagesvc.shared.contracts.events import image_stream
from imagesvc.shared.db.models import Image, StoredEvent
from tests.e2e.conftest import database_url, submitted_commands
from tests.support.polling import eventually

pytestmark = pytest.mark.e2e


def ended(client, answer):
    """The final answer of a command: a 201 is followed to its task's end."""
    if answer.status_code != 201:
        return answer
    task_id = answer.json()["task_id"]

    def done():
        status = client.get(f"/task/{task_id}/status/")
        assert status.json()["status"] in ("SUCCESS", "FAILURE"), status.text
        return status

    return eventually(done, timeout=60)


def image_events(system, name: str) -> list[str]:
    engine = create_engine(database_url(system))
    try:
        with engine.connect() as conn:
            uuid = conn.execute(select(Image.uuid).where(Image.name == name)).scalar()
            if uuid is None:
                return []
            return list(conn.execute(select(StoredEvent.type).where(StoredEvent.stream_id == image_stream(uuid))
                                     .order_by(StoredEvent.id)).scalars())
    finally:
        engine.dispose()


def test_a_repeated_import_gets_the_first_answer_not_406(system, origin, name):
    url, _ = origin.add_manifest()
    with system.client() as client:
        first = ended(client, client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"},
                                          headers={"Idempotency-Key": "import-1"}))
        assert first.status_code == 200, first.text
        again = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"},
                            headers={"Idempotency-Key": "import-1"})
        assert again.status_code == 200, again.text
        assert again.json()["task_id"] == first.json()["task_id"]
        assert again.json()["result"] == first.json()["result"]
        # Without the key, or with another one, it is a new request: the image exists.
        for headers in ({}, {"Idempotency-Key": "import-2"}):
            other = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"}, headers=headers)
            assert (other.status_code, other.json()) == (406, {"detail": "Image already exists"})
    assert image_events(system, name) == ["image.imported"]


def test_a_repeated_update_does_not_undo_a_later_one(system, origin, name):
    url, _ = origin.add_manifest()
    with system.client() as client:
        assert ended(client, client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"})).status_code == 200
        first = ended(client, client.put(f"/image/{name}/", json={"desc": "a"}, headers={"Idempotency-Key": "put-a"}))
        assert ended(client, client.put(f"/image/{name}/", json={"desc": "b"})).status_code == 200
        again = client.put(f"/image/{name}/", json={"desc": "a"}, headers={"Idempotency-Key": "put-a"})
        assert (again.status_code, again.json()["task_id"]) == (200, first.json()["task_id"])
        assert client.get(f"/image/{name}/").json()["result"]["desc"] == "b"
    assert image_events(system, name) == ["image.imported", "image.updated", "image.updated"]


def test_repeats_racing_each_other_make_one_command(system, origin, name):
    url, _ = origin.add_manifest()
    copies = 6
    barrier = threading.Barrier(copies)

    def send():
        with system.client() as client:
            barrier.wait(timeout=30)
            answer = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"},
                                 headers={"Idempotency-Key": "raced"})
            return answer.json().get("task_id"), ended(client, answer)

    with ThreadPoolExecutor(copies) as pool:
        outcomes = list(pool.map(lambda _: send(), range(copies)))
    assert {final.status_code for _, final in outcomes} == {200}, [final.text for _, final in outcomes]
    assert len({task_id for task_id, _ in outcomes}) == 1
    assert image_events(system, name) == ["image.imported"]
    engine = create_engine(database_url(system))
    try:
        with engine.connect() as conn:
            task_id = outcomes[0][0]
            terminal = conn.execute(select(func.count()).select_from(StoredEvent).where(
                StoredEvent.correlation_id == task_id,
                StoredEvent.type.in_(["task.succeeded", "task.failed"]))).scalar_one()
    finally:
        engine.dispose()
    assert terminal == 1


@pytest.mark.parametrize("key", ["", "with space", "x" * 256, "caf\u00e9", "tab\there"])
def test_a_malformed_key_is_400_and_nothing_is_published(system, origin, name, key):
    url, _ = origin.add_manifest()
    before = submitted_commands(system)
    with system.client() as client:
        answer = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"},
                             headers={"Idempotency-Key": key.encode("utf-8")})
        assert answer.status_code == 400, answer.text
        assert answer.json() == {"detail": "Invalid Idempotency-Key header: 1 to 255 visible ASCII characters."}
        assert client.get(f"/image/{name}/").status_code == 404
    assert submitted_commands(system) == before
