"""Events are believed for what the broker vouches for (reliability row T1 at unit level): the
routing key an event arrived with must be the one its type and payload define, and its publisher
(the RabbitMQ-validated ``user_id``) must be allowed to publish its family. Routing keys carry the
datacenter (T3)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import orjson
import pytest
from sqlalchemy import select

from imagesvc.domain import images
from imagesvc.services.projector.handlers import apply
from imagesvc.shared import contracts
from imagesvc.shared.broker.consumer import BrokerIdentity, Outcome, original_routing_key, ROUTING_KEY_HEADER
from imagesvc.shared.contracts import ImageDeleted, ImageImported, ImageUpdated, NodeUpdated, TaskSucceeded, VmRemoved
from imagesvc.shared.contracts.routing import Publishers, datacenter_word, route
from imagesvc.shared.db import nodes
from imagesvc.shared.db.engine import read_transaction
from imagesvc.shared.db.models import ReadImage, ReadTask
from imagesvc.shared.db.records import ImageRecord
from imagesvc.shared.handling import EventConsumer
from tests.support.projection import delivery_of

SERVICE, NODEWATCH, VMBRIDGE = "imagesvc", "nodewatch", "vmbridge"
PUBLISHERS = Publishers(frozenset({SERVICE}), {"node": frozenset({NODEWATCH}), "vm": frozenset({VMBRIDGE})})


def image_state(dc_bound: str | None = "main", desc: str = "d") -> dict:
    now = datetime(2026, 11, 27, tzinfo=timezone.utc)
    record = ImageRecord(uuid=str(uuid.uuid4()), name=f"img-{uuid.uuid4().hex[:6]}", alias="a", version="1",
                         owner="root", access=1, desc=desc, ostype=1, size=1, resize=False, deploy=False, tags=[],
                         status=1, created=now, changed=now, dc_bound=dc_bound, dcs=[dc_bound] if dc_bound else [])
    return images.to_state(record)


def body(event, task_id: str = "1e1u1-aaaaaaaa-bbbb-cccc-dddd") -> bytes:
    return contracts.encode(contracts.wrap(event, correlation_id=task_id))


class TestRoutingKeys:
    def test_image_events_are_routed_by_the_datacenter_they_are_bound_to(self):
        state = image_state("prague")
        assert route("image.imported", {"image": state, "version": 1}).key == "image.imported.dc.prague"
        assert route("image.updated", {"image": image_state(None)}).key == "image.updated.global"
        assert route("image.deleted", {"uuid": "u", "dc_bound": "prague"}).key == "image.deleted.dc.prague"

    def test_an_image_leaving_a_datacenter_is_also_told_to_that_datacenter(self):
        moved = ImageUpdated(image=image_state(None), version=2, changed=["dc_bound"], previous_dc_bound="prague")
        routing = route(moved.TYPE, moved.to_payload())
        assert (routing.key, routing.cc) == ("image.updated.global", ("image.updated.dc.prague",))
        stayed = ImageUpdated(image=image_state("prague"), version=2, changed=["desc"])
        assert route(stayed.TYPE, stayed.to_payload()).cc == ()

    def test_task_events_are_routed_by_their_datacenter(self):
        assert route("task.succeeded", {"dc": "main"}).key == "task.succeeded.dc.main"
        assert route("task.failed", {"dc": None}).key == "task.failed.global"

    def test_inventory_events_are_routed_by_their_type(self):
        assert route("node.updated", {"hostname": "cn1"}).key == "node.updated"
        assert route("vm.snapshot.removed", {}).key == "vm.snapshot.removed"

    @pytest.mark.parametrize("name, word", [("prague", "prague"), ("my.dc", "my%2Edc"), ("a-b_c", "a-b_c"),
                                            ("x#*y", "x%23%2Ay"), ("dč", "d%C4%8D")])
    def test_a_datacenter_is_one_word_of_a_topic_key(self, name, word):
        assert datacenter_word(name) == word
        assert "." not in word and "#" not in word and "*" not in word


@pytest.fixture
def projector(engine):
    return EventConsumer(name="projector", engine=engine, apply=apply, notify=lambda note: None,
                         publishers=PUBLISHERS)


def rows(engine):
    with read_transaction(engine) as conn:
        return (conn.execute(select(ReadImage.__table__.c.uuid, ReadImage.__table__.c.doc)).all(),
                conn.execute(select(ReadTask.__table__.c.task_id)).all())


class TestProjectorAcceptance:
    def test_imagesvcs_own_events_are_applied(self, projector, engine):
        event = ImageImported(image=image_state(), version=1)
        assert projector(delivery_of(body(event), publisher=SERVICE)).outcome is Outcome.ACK
        assert len(rows(engine)[0]) == 1

    @pytest.mark.parametrize("event", [
        ImageImported(image=image_state(), version=1),
        ImageDeleted(uuid=str(uuid.uuid4()), name="x", version=2),
        TaskSucceeded(task_id="1e1u1-aaaaaaaa-bbbb-cccc-dddd", command="image.update", object_name="x", dc="main"),
    ], ids=["image.imported", "image.deleted", "task.succeeded"])
    def test_an_image_or_task_event_under_a_node_routing_key_is_dead_lettered(self, projector, engine, event):
        """The found case: a user allowed only node.* published image and task bodies as node.updated."""
        disposition = projector(delivery_of(body(event), publisher=NODEWATCH, routing_key="node.updated"))
        assert disposition.outcome is Outcome.DEAD_LETTER
        assert "routing key 'node.updated'" in disposition.reason
        assert rows(engine) == ([], [])

    @pytest.mark.parametrize("publisher", [NODEWATCH, VMBRIDGE, "mallory", None])
    def test_image_and_task_events_come_only_from_service_users(self, projector, engine, publisher):
        for event in (ImageImported(image=image_state(), version=1),
                      TaskSucceeded(task_id="1e1u1-aaaaaaaa-bbbb-cccc-dddd", command="image.update",
                                    object_name="x", dc="main")):
            disposition = projector(delivery_of(body(event), publisher=publisher))
            assert disposition.outcome is Outcome.DEAD_LETTER, publisher
            assert "service users" in disposition.reason
        assert rows(engine) == ([], [])

    def test_inventory_events_come_from_the_users_granted_their_family(self, projector, engine):
        node = NodeUpdated(hostname="cn1", status="online", changed_at="2026-11-27T10:00:00Z")
        assert projector(delivery_of(body(node), publisher=VMBRIDGE)).outcome is Outcome.DEAD_LETTER
        gone = VmRemoved(uuid=str(uuid.uuid4()), changed_at="2026-11-27T10:00:00Z")
        assert projector(delivery_of(body(gone), publisher=NODEWATCH)).outcome is Outcome.DEAD_LETTER
        with read_transaction(engine) as conn:
            assert nodes.get(conn, "cn1") is None
        assert projector(delivery_of(body(node), publisher=NODEWATCH)).outcome is Outcome.ACK
        assert projector(delivery_of(body(node), publisher=SERVICE)).outcome is Outcome.ACK
        with read_transaction(engine) as conn:
            assert nodes.get(conn, "cn1").status == "online"

    def test_a_batch_applies_the_good_events_and_dead_letters_the_forged_ones(self, projector, engine):
        good = ImageImported(image=image_state(), version=1)
        forged = ImageImported(image=image_state(desc="forged"), version=1)
        verdicts = projector.handle_batch([delivery_of(body(good), publisher=SERVICE),
                                           delivery_of(body(forged), publisher=NODEWATCH)])
        assert [v.outcome for v in verdicts] == [Outcome.ACK, Outcome.DEAD_LETTER]
        assert [orjson.loads(doc)["desc"] for _, doc in rows(engine)[0]] == ["d"]

    def test_without_broker_users_only_the_routing_key_is_checked(self, engine):
        """memory:// (serve): nobody outside the process can publish; the rule on users is vacuous."""
        embedded = EventConsumer(name="projector", engine=engine, apply=apply, notify=lambda note: None)
        event = ImageImported(image=image_state(), version=1)
        assert embedded(delivery_of(body(event), routing_key="node.updated")).outcome is Outcome.DEAD_LETTER
        assert embedded(delivery_of(body(event))).outcome is Outcome.ACK


class TestRetriedCopies:
    """A copy the runner republished reaches its queue by the queue's name; the original routing
    key travels in a header, believed only from a service user."""

    identity = BrokerIdentity(own=SERVICE, services=frozenset({SERVICE}))

    def test_a_service_copy_names_the_original_key(self):
        headers = {ROUTING_KEY_HEADER: "image.updated.dc.main"}
        assert original_routing_key(self.identity, SERVICE, headers, "projector.events") == "image.updated.dc.main"

    def test_anybody_elses_header_is_ignored(self):
        headers = {ROUTING_KEY_HEADER: "image.updated.dc.main"}
        assert original_routing_key(self.identity, NODEWATCH, headers, "node.updated") == "node.updated"
        assert original_routing_key(self.identity, None, headers, "node.updated") == "node.updated"
