"""A keyed retry (``Idempotency-Key``) after the gateway died between publishing a command and
journaling it: the gateway in process, its publisher only recording; what it published is handed
to the consumers' handlers and the projector by hand, and the journal row it wrote is removed, as
if it had died before writing it (the e2e rows kill real gateways: tests/faults/test_gateway_crashes.py).
"""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import delete

from imagesvc.services.projector.handlers import apply
from imagesvc.shared import contracts
from imagesvc.shared.broker.consumer import Outcome
from imagesvc.shared.contracts import ImportImage
from imagesvc.shared.db import accounts
from imagesvc.shared.db.engine import read_transaction, write_transaction
from imagesvc.shared.db import events as store
from imagesvc.shared.db.models import SubmittedCommand
from imagesvc.shared.handling import EventConsumer
from tests.support.origin import sample_manifest
from tests.support.projection import delivery_of
from tests.unit.test_command_handling import world  # noqa: F401 - the fixture
from tests.unit.test_gateway import KEY, FakePublisher, client_for

CONSUMER_OF = {"image.import": "importer", "image.update": "updater", "image.delete": "deleter"}


class Gateway:
    """The gateway over ``world``'s database, the commands it published, and a projector."""

    def __init__(self, world, client, publisher):
        self.world, self.client, self.publisher = world, client, publisher
        self._projector = EventConsumer(name="projector", engine=world.engine, apply=apply, notify=lambda note: None)
        self._projected: set[int] = set()

    def handle(self, message: dict) -> None:
        """Deliver one published command to its consumer, as the broker would."""
        envelope = contracts.decode(message["body"])
        assert self.world.deliver(CONSUMER_OF[envelope.type], envelope).outcome is Outcome.ACK

    def project(self) -> None:
        with read_transaction(self.world.engine) as conn:
            stored = [(row_id, body) for row_id, body in store.all_events(conn) if row_id not in self._projected]
        for row_id, body in stored:
            assert self._projector(delivery_of(body)).outcome is Outcome.ACK
            self._projected.add(row_id)

    def forget_journal(self) -> None:
        """The journal as a gateway that died before writing it leaves it."""
        with write_transaction(self.world.engine) as conn:
            conn.execute(delete(SubmittedCommand.__table__))

    def image_events(self) -> list[str]:
        with read_transaction(self.world.engine) as conn:
            types = [orjson.loads(body)["type"] for _, body in store.all_events(conn)]
        return [t for t in types if t.startswith("image.")]


@pytest.fixture
def gateway(world):  # noqa: F811 - the fixture imported above
    with write_transaction(world.engine) as conn:
        accounts.set_api_key(conn, "root", KEY)
    publisher = FakePublisher()
    with client_for(world.engine, publisher) as client:
        yield Gateway(world, client, publisher)


def an_image(gateway: Gateway, name: str) -> str:
    """An imported and projected image (its command published without a key); returns its manifest URL."""
    url = gateway.world.fetcher.serve(sample_manifest())
    assert gateway.client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"}).status_code == 201
    gateway.handle(gateway.publisher.published.pop())
    gateway.project()
    return url


@pytest.mark.parametrize("method, body, effect", [
    ("POST", None, "image.imported"),  # the pre-checks would now answer 406 Image already exists
    ("PUT", {"desc": "patched"}, "image.updated"),
    ("DELETE", None, "image.deleted"),  # ... and 404 Image not found
])
def test_a_retry_of_a_handled_command_the_journal_never_saw_gets_its_outcome(gateway, method, body, effect):
    url = gateway.world.fetcher.serve(sample_manifest())
    if method != "POST":
        an_image(gateway, "centos")
    body = body if method != "POST" else {"manifest_url": url, "dc": "main"}
    keyed = {"Idempotency-Key": "k1"}
    first = gateway.client.request(method, "/image/centos/", json=body, headers=keyed)
    assert first.status_code == 201  # no consumer within the window
    [published] = gateway.publisher.published
    gateway.handle(published)
    gateway.project()
    gateway.forget_journal()

    again = gateway.client.request(method, "/image/centos/", json=body, headers=keyed)
    assert again.status_code == 200, again.text
    assert again.json()["task_id"] == first.json()["task_id"] == published["correlation_id"]
    assert gateway.publisher.published == [published]  # nothing published again
    assert gateway.image_events().count(effect) == 1


def test_a_retry_of_a_command_handled_but_not_yet_projected_is_its_pending_task(gateway):
    url = gateway.world.fetcher.serve(sample_manifest())
    keyed = {"Idempotency-Key": "k2"}
    first = gateway.client.post("/image/centos/", json={"manifest_url": url, "dc": "main"}, headers=keyed)
    [published] = gateway.publisher.published
    gateway.handle(published)
    gateway.forget_journal()

    again = gateway.client.post("/image/centos/", json={"manifest_url": url, "dc": "main"}, headers=keyed)
    task_id = first.json()["task_id"]
    assert (again.status_code, again.json()) == (201, {"task_id": task_id, "status": "PENDING", "result": None})
    assert gateway.publisher.published == [published]
    gateway.project()
    status = gateway.client.get(f"/task/{task_id}/status/")
    assert (status.status_code, status.json()["status"]) == (200, "SUCCESS")


def test_a_retry_of_a_command_still_in_its_queue_publishes_it_again_under_the_same_ids(gateway):
    url = gateway.world.fetcher.serve(sample_manifest())
    keyed = {"Idempotency-Key": "k3"}
    first = gateway.client.post("/image/centos/", json={"manifest_url": url, "dc": "main"}, headers=keyed)
    gateway.forget_journal()

    again = gateway.client.post("/image/centos/", json={"manifest_url": url, "dc": "main"}, headers=keyed)
    assert (again.status_code, again.json()["task_id"]) == (201, first.json()["task_id"])
    copies = gateway.publisher.published
    assert len(copies) == 2
    assert {(m["message_id"], m["correlation_id"]) for m in copies} == {(copies[0]["message_id"],
                                                                           first.json()["task_id"])}
    for copy in copies:  # the second one is a duplicate to the consumer's inbox
        gateway.handle(copy)
    gateway.project()
    assert gateway.image_events() == ["image.imported"]
    assert gateway.client.get(f"/task/{first.json()['task_id']}/status/").json()["status"] == "SUCCESS"


def test_a_task_under_the_message_id_but_not_of_the_key_is_not_answered(gateway):
    url = an_image(gateway, "taken")
    keyed = {"Idempotency-Key": "k4"}
    probe = gateway.client.post("/image/other/", json={"manifest_url": url, "dc": "main"}, headers=keyed)
    message_id = gateway.publisher.published[-1]["message_id"]
    gateway.forget_journal()
    # Another command published by hand under that message id, with a task id of its own.
    forged = gateway.world.run("importer", ImportImage(name="forged", manifest_url=url, dc="main"),
                               message_id=message_id)
    gateway.project()
    assert forged.correlation_id != probe.json()["task_id"]

    again = gateway.client.post("/image/other/", json={"manifest_url": url, "dc": "main"}, headers=keyed)
    assert again.json()["task_id"] == probe.json()["task_id"]
