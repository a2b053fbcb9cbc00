"""``node.updated`` / ``node.removed``: the contract other systems publish to, and the projector
applying them to the ``nodes`` table, idempotent and order-safe by ``changed_at``."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import orjson
import pytest

from imagesvc.services.projector.handlers import apply, rebuild
from imagesvc.shared import contracts
from imagesvc.shared.broker.consumer import Delivery, Outcome
from imagesvc.shared.contracts import UNSET, NodeRemoved, NodeUpdated
from imagesvc.shared.db import nodes
from imagesvc.shared.db.engine import read_transaction, write_transaction
from imagesvc.shared.errors import PoisonMessage
from imagesvc.shared.handling import EventConsumer

UUID = "2f0c7c3e-1111-2222-3333-444455556666"


def envelope(type_: str, payload: dict) -> bytes:
    """A node event as another system would publish it: imagesvc's envelope, its own ids."""
    message_id = str(uuid.uuid4())
    return orjson.dumps({"id": message_id, "type": type_, "schema_version": 1, "time": "2026-11-27T10:00:00Z",
                         "correlation_id": message_id, "causation_id": None, "actor": None, "payload": payload})


def updated(status="online", at="2026-11-27T10:00:00Z", hostname="cn1.example.com", **more) -> bytes:
    return envelope("node.updated", {"hostname": hostname, "status": status, "changed_at": at, **more})


def removed(at="2026-11-27T10:00:00Z", hostname="cn1.example.com") -> bytes:
    return envelope("node.removed", {"hostname": hostname, "changed_at": at})


def parse(body: bytes):
    return contracts.parse(contracts.decode(body))


# --- the contract ------------------------------------------------------------------------------


def test_node_updated_parses_with_optional_fields_left_out():
    event = parse(updated())
    assert isinstance(event, NodeUpdated)
    assert (event.hostname, event.status, event.uuid, event.address) == ("cn1.example.com", "online", UNSET, UNSET)
    assert event.changed_time == datetime(2026, 11, 27, 10, tzinfo=timezone.utc)
    assert event.stream_position() is None


def test_node_updated_carries_uuid_and_address_and_any_offset():
    event = parse(updated(at="2026-11-27T11:00:00.5+01:00", uuid=UUID, address="10.0.0.5"))
    assert (event.uuid, event.address) == (UUID, "10.0.0.5")
    assert event.changed_time == datetime(2026, 11, 27, 10, 0, 0, 500000, tzinfo=timezone.utc)


def test_node_removed_parses():
    event = parse(removed(at="2026-11-27T10:00:00+00:00"))
    assert isinstance(event, NodeRemoved) and event.hostname == "cn1.example.com"
    assert event.changed_time == datetime(2026, 11, 27, 10, tzinfo=timezone.utc)


@pytest.mark.parametrize("body, reason", [
    (envelope("node.updated", {"status": "online", "changed_at": "2026-11-27T10:00:00Z"}), "'hostname' is required"),
    (envelope("node.updated", {"hostname": "cn1", "status": "online"}), "'changed_at' is required"),
    (envelope("node.updated", {"hostname": "cn1", "changed_at": "2026-11-27T10:00:00Z"}), "'status' is required"),
    (updated(hostname=7), "wrong type"),
    (updated(hostname=""), "hostname"),
    (updated(hostname="h" * 256), "at most 255"),
    (updated(hostname="cn1\x00"), "hostname"),
    (updated(status=""), "status"),
    (updated(status="s" * 33), "status"),
    (updated(at="yesterday"), "not an ISO-8601"),
    (updated(at="2026-11-27T10:00:00"), "no timezone"),
    (updated(at="0001-01-01T00:00:00+01:00"), "out of range"),
    (updated(at=1764237600), "wrong type"),
    (updated(uuid="cn1"), "uuid"),
    (updated(uuid=""), "uuid"),
    (updated(address="a" * 256), "address"),
    (removed(hostname="h" * 256), "at most 255"),
    (removed(at="2026-13-45T10:00:00Z"), "not an ISO-8601"),
    (envelope("node.removed", {"changed_at": "2026-11-27T10:00:00Z"}), "'hostname' is required"),
])
def test_a_node_event_that_could_not_be_stored_is_poison(body, reason):
    with pytest.raises(PoisonMessage, match=reason) as caught:
        parse(body)
    assert caught.value.message_type in ("node.updated", "node.removed")
    assert caught.value.message_id == orjson.loads(body)["id"]


# --- the projector -----------------------------------------------------------------------------


class Projector:
    def __init__(self, engine):
        self.engine = engine
        self.consumer = EventConsumer(name="projector", engine=engine, apply=apply, notify=self.fail_on_notice)

    @staticmethod
    def fail_on_notice(note):
        raise AssertionError(f"node events notify nobody: {note}")

    @staticmethod
    def delivery(body: bytes) -> Delivery:
        try:
            event_type = orjson.loads(body).get("type")
        except (orjson.JSONDecodeError, AttributeError):
            event_type = None
        # Other systems publish their facts with the event type as routing key.
        return Delivery(body=body, queue="projector.events", headers={}, message_id=None, correlation_id=None,
                        message_type=None, user_id=None, redelivered=False, attempt=1,
                        routing_key=event_type if isinstance(event_type, str) else None)

    def deliver(self, *bodies: bytes) -> list[Outcome]:
        if len(bodies) == 1:
            return [self.consumer(self.delivery(bodies[0])).outcome]
        return [d.outcome for d in self.consumer.handle_batch([self.delivery(b) for b in bodies])]

    def nodes(self) -> list[tuple]:
        with read_transaction(self.engine) as conn:
            return [(n.hostname, n.status, n.uuid, n.address) for n in nodes.list_all(conn)]


@pytest.fixture
def projector(engine):
    return Projector(engine)


def test_an_update_is_stored_and_its_redelivery_changes_nothing(projector):
    body = updated(uuid=UUID, address="10.0.0.5")
    assert projector.deliver(body) == [Outcome.ACK]
    assert projector.deliver(body) == [Outcome.ACK]
    assert projector.nodes() == [("cn1.example.com", "online", UUID, "10.0.0.5")]


def test_an_older_update_delivered_late_changes_nothing(projector):
    assert projector.deliver(updated("maintenance", at="2026-11-27T10:05:00Z")) == [Outcome.ACK]
    assert projector.deliver(updated("online", at="2026-11-27T10:00:00Z")) == [Outcome.ACK]
    assert projector.nodes() == [("cn1.example.com", "maintenance", None, None)]


def test_in_one_batch_the_newest_fact_wins_whatever_its_place(projector):
    outcomes = projector.deliver(updated("unreachable", at="2026-11-27T10:09:00Z"),
                                 updated("online", at="2026-11-27T10:10:00Z"),
                                 updated("maintenance", at="2026-11-27T10:01:00Z"))
    assert outcomes == [Outcome.ACK] * 3
    assert projector.nodes() == [("cn1.example.com", "online", None, None)]


def test_a_removal_is_applied_and_an_older_update_does_not_revive_the_node(projector):
    projector.deliver(updated(at="2026-11-27T10:00:00Z"))
    assert projector.deliver(removed(at="2026-11-27T10:10:00Z")) == [Outcome.ACK]
    assert projector.nodes() == []
    assert projector.deliver(updated("online", at="2026-11-27T10:05:00Z")) == [Outcome.ACK]
    assert projector.deliver(removed(at="2026-11-27T10:10:00Z")) == [Outcome.ACK]  # redelivered
    assert projector.nodes() == []


def test_a_removal_older_than_the_state_changes_nothing(projector):
    projector.deliver(updated(at="2026-11-27T10:10:00Z"))
    assert projector.deliver(removed(at="2026-11-27T10:00:00Z")) == [Outcome.ACK]
    assert projector.nodes() == [("cn1.example.com", "online", None, None)]


def test_poison_node_events_are_dead_lettered_and_their_batch_neighbours_applied(projector):
    outcomes = projector.deliver(updated(hostname="h" * 256), updated(at="not a time"),
                                 updated(hostname="cn2", status="maintenance"), removed(hostname=""))
    assert outcomes == [Outcome.DEAD_LETTER, Outcome.DEAD_LETTER, Outcome.ACK, Outcome.DEAD_LETTER]
    assert projector.nodes() == [("cn2", "maintenance", None, None)]


def test_a_read_model_rebuild_leaves_the_nodes_alone(projector):
    projector.deliver(updated(uuid=UUID))
    with write_transaction(projector.engine) as conn:
        rebuild(conn)
    assert projector.nodes() == [("cn1.example.com", "online", UUID, None)]
