"""E2, E3: events the projector cannot read, and events out of order, never make it skip a
version of an image or stop projecting other images.

Already covered in test_projector.py: a gap filled from the event store (v3 before v1, v2), a
stale version after a newer one changes nothing, a deleted image is never revived, duplicate
delivery, undecodable bytes dead-lettered. Here: a newer producer's ``schema_version`` (read: it
only adds fields), an invalid one or an unknown type (dead-lettered), an unknown type inside an
image's stream (the projection parks there and resumes once it can read it), and v5 delivered
before v4 when the store has no v4 yet.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import ClassVar

import pytest

from imagesvc.domain import images
from imagesvc.shared import contracts
from imagesvc.shared.broker.consumer import Outcome
from imagesvc.shared.contracts import ImageImported, ImageUpdated
from imagesvc.shared.db import events as store
from imagesvc.shared.db.engine import write_transaction
from tests.unit.test_projector import Log, record


@pytest.fixture
def log(engine):
    return Log(engine)


def updated(image_uuid: str, version: int, desc: str) -> ImageUpdated:
    return ImageUpdated(image=images.to_state(record(image_uuid, "a", desc=desc)), version=version, changed=["desc"])


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageRetagged(ImageUpdated):
    """A newer producer's event type in an image's stream: what an incompatible change brings (a new
    message type, never a new version of an old one)."""

    TYPE: ClassVar[str] = "image.retagged"


def store_as_newer_producer(log: Log, event):
    """Store ``event`` as a newer producer would: its envelope of version 2, with a field added."""
    wrapped = contracts.wrap(event, correlation_id="1e1u1-aaaaaaaa-bbbb-cccc-dddd")
    newer = dataclasses.replace(wrapped, schema_version=2, payload={**wrapped.payload, "added_in_v2": True})
    with write_transaction(log.engine) as conn:
        store.append(conn, [(newer, event.stream_position())])
    return newer


def imported(log: Log, name: str = "a") -> str:
    image_uuid = str(uuid.uuid4())
    assert log.deliver(log.store(ImageImported(image=images.to_state(record(image_uuid, name)), version=1))
                       ).outcome is Outcome.ACK
    return image_uuid


def test_an_invalid_schema_version_is_dead_lettered_and_the_next_events_still_apply(log):
    event = contracts.wrap(updated(str(uuid.uuid4()), 1, "x"), correlation_id="x")
    assert log.deliver(dataclasses.replace(event, schema_version=0)).outcome is Outcome.DEAD_LETTER
    image_uuid = imported(log)
    assert log.image(image_uuid)[1] == 1


def test_a_newer_producers_version_is_applied_its_added_fields_ignored(log):
    image_uuid = imported(log)
    v2 = store_as_newer_producer(log, updated(image_uuid, 2, "from a newer producer"))
    assert log.deliver(v2).outcome is Outcome.ACK
    doc, version, _ = log.image(image_uuid)
    assert (doc["desc"], version) == ("from a newer producer", 2)
    assert "added_in_v2" not in doc
    # Also when it is caught up from the store rather than delivered.
    v4 = log.store(updated(image_uuid, 4, "four"))
    store_as_newer_producer(log, updated(image_uuid, 3, "three"))
    assert log.deliver(v4).outcome is Outcome.ACK
    assert log.image(image_uuid)[1] == 4


def test_an_unknown_event_type_is_dead_lettered_and_the_next_events_still_apply(log):
    unknown = dataclasses.replace(contracts.wrap(updated(str(uuid.uuid4()), 1, "x"), correlation_id="x"),
                                  type="image.renamed")
    assert log.deliver(unknown).outcome is Outcome.DEAD_LETTER
    image_uuid = imported(log)
    assert log.image(image_uuid)[1] == 1


def test_an_unreadable_event_in_a_stream_parks_it_there_and_it_resumes_once_readable(log, monkeypatch):
    image_uuid = imported(log)
    two = updated(image_uuid, 2, "two")
    v2 = store_as_newer_producer(log, ImageRetagged(image=two.image, version=2, changed=two.changed))
    v3 = log.store(updated(image_uuid, 3, "three"))
    assert log.deliver(v2).outcome is Outcome.DEAD_LETTER
    # v3 must not be applied over the unread v2 (that would skip it) nor crash the consumer:
    # it goes back to the queue and the image stays at v1.
    parked = log.deliver(v3)
    assert parked.outcome is Outcome.RETRY and "parked after v1" in parked.reason
    assert log.image(image_uuid)[1] == 1
    other = imported(log, "b")  # other images are projected meanwhile
    assert log.image(other)[1] == 1
    # After an upgrade that reads the new type, the redelivered v3 catches up from v2 in the store.
    monkeypatch.setitem(contracts.MESSAGE_TYPES, ImageRetagged.TYPE, ImageRetagged)
    assert log.deliver(v3).outcome is Outcome.ACK
    doc, version, _ = log.image(image_uuid)
    assert (doc["desc"], version) == ("three", 3)


def test_v5_before_v4_waits_for_v4_and_a_stale_v3_is_a_no_op(log):
    image_uuid = imported(log)
    for version in (2, 3):
        assert log.deliver(log.store(updated(image_uuid, version, f"v{version}"))).outcome is Outcome.ACK
    fifth = updated(image_uuid, 5, "v5")
    v5 = contracts.wrap(fifth, correlation_id="x")  # delivered before its producer's v4 is stored
    assert log.deliver(v5).outcome is Outcome.RETRY and log.image(image_uuid)[1] == 3
    v4 = log.store(updated(image_uuid, 4, "v4"))
    with write_transaction(log.engine) as conn:
        store.append(conn, [(v5, fifth.stream_position())])
    assert log.deliver(v5).outcome is Outcome.ACK  # v4 caught up from the store, then v5
    assert log.image(image_uuid)[0]["desc"] == "v5" and log.image(image_uuid)[1] == 5
    # The late v4 and a requeued v3 change nothing: the version never goes backwards.
    stale_v3 = contracts.wrap(updated(image_uuid, 3, "v3"), correlation_id="x")
    assert log.deliver(v4).outcome is Outcome.ACK and log.deliver(stale_v3).outcome is Outcome.ACK
    assert log.image(image_uuid)[0]["desc"] == "v5" and log.image(image_uuid)[1] == 5
