"""The projector keeps the read model equal to the event log, whatever the delivery order."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import orjson
import pytest
from sqlalchemy import select

from imagesvc.domain import images
from imagesvc.services.projector.handlers import apply
from imagesvc.shared import contracts
from imagesvc.shared.broker.consumer import Delivery, Outcome
from imagesvc.shared.contracts import ImageDeleted, ImageImported, ImageUpdated, TaskFailed, TaskSucceeded
from imagesvc.shared.db import events as store
from imagesvc.shared.db.engine import read_transaction, write_transaction
from imagesvc.shared.db.models import ReadImage, ReadTask
from imagesvc.shared.db.records import ImageRecord
from imagesvc.shared.handling import EventConsumer
from tests.support.projection import delivery_of

NOW = datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=timezone.utc)


def record(uuid_: str, name: str, **changes) -> ImageRecord:
    base = ImageRecord(uuid=uuid_, name=name, alias=name, version="1.0", desc="", owner="root", access=3, size=1024,
                       ostype=1, deploy=False, resize=False, status=1, tags=[], created=NOW, changed=NOW,
                       dc_bound="main", dcs=["main"])
    return base.with_changes(**changes)


class Log:
    """Events as a producer would store them (the event store), ready to deliver in any order."""

    def __init__(self, engine):
        self.engine = engine
        self.notes = []
        self.consumer = EventConsumer(name="projector", engine=engine, apply=apply, notify=self.notes.append)

    def store(self, event, task_id="1e1u1-aaaaaaaa-bbbb-cccc-dddd", reply_to: str | None = "gateway.test"):
        envelope = contracts.wrap(event, correlation_id=task_id, reply_to=reply_to)
        with write_transaction(self.engine) as conn:
            store.append(conn, [(envelope, event.stream_position())])
        return envelope

    def deliver(self, envelope):
        return self.consumer(delivery_of(contracts.encode(envelope)))

    def image(self, uuid_):
        with read_transaction(self.engine) as conn:
            row = conn.execute(select(ReadImage.__table__).where(ReadImage.__table__.c.uuid == uuid_)).first()
        return None if row is None else (orjson.loads(row.doc), row.version, orjson.loads(row.dcs))

    def task(self, task_id):
        with read_transaction(self.engine) as conn:
            return conn.execute(select(ReadTask.__table__).where(ReadTask.__table__.c.task_id == task_id)).first()


@pytest.fixture
def log(engine):
    return Log(engine)


def test_events_in_order_build_the_public_document(log):
    image_uuid = str(uuid.uuid4())
    v1 = log.store(ImageImported(image=images.to_state(record(image_uuid, "a")), version=1))
    v2 = log.store(ImageUpdated(image=images.to_state(record(image_uuid, "a", alias="b")), version=2, changed=["alias"]))
    assert log.deliver(v1).outcome is Outcome.ACK and log.deliver(v2).outcome is Outcome.ACK
    doc, version, dcs = log.image(image_uuid)
    assert doc == images.public_view(record(image_uuid, "a", alias="b"))
    assert doc["created"] == "2026-11-27T10:00:00.123456Z"
    assert (version, dcs) == (2, ["main"])


def test_a_gap_is_filled_from_the_event_store(log):
    image_uuid = str(uuid.uuid4())
    v1 = log.store(ImageImported(image=images.to_state(record(image_uuid, "a")), version=1))
    v2 = log.store(ImageUpdated(image=images.to_state(record(image_uuid, "a", desc="two")), version=2, changed=["desc"]))
    v3 = log.store(ImageUpdated(image=images.to_state(record(image_uuid, "a", desc="three")), version=3, changed=["desc"]))
    assert log.deliver(v3).outcome is Outcome.ACK
    assert log.image(image_uuid)[0]["desc"] == "three" and log.image(image_uuid)[1] == 3
    # The late deliveries of v1 and v2 change nothing: versions never go backwards.
    assert log.deliver(v2).outcome is Outcome.ACK and log.deliver(v1).outcome is Outcome.ACK
    assert log.image(image_uuid)[0]["desc"] == "three" and log.image(image_uuid)[1] == 3


def test_a_gap_the_store_cannot_fill_is_retried(log):
    image_uuid = str(uuid.uuid4())
    orphan = contracts.wrap(ImageUpdated(image=images.to_state(record(image_uuid, "a")), version=5, changed=[]),
                            correlation_id="x")
    disposition = log.deliver(orphan)
    assert disposition.outcome is Outcome.RETRY and "out of order" in disposition.reason
    assert log.image(image_uuid) is None


def test_a_deleted_image_is_never_revived_by_a_stale_event(log):
    image_uuid = str(uuid.uuid4())
    v1 = log.store(ImageImported(image=images.to_state(record(image_uuid, "a")), version=1))
    v2 = log.store(ImageDeleted(uuid=image_uuid, name="a", version=2))
    log.deliver(v1)
    log.deliver(v2)
    assert log.image(image_uuid) is None
    log.deliver(v1)  # redelivered after the delete
    assert log.image(image_uuid) is None


def test_duplicate_delivery_is_acknowledged_and_changes_nothing(log):
    image_uuid = str(uuid.uuid4())
    v1 = log.store(ImageImported(image=images.to_state(record(image_uuid, "a")), version=1))
    v2 = log.store(ImageUpdated(image=images.to_state(record(image_uuid, "a", desc="2")), version=2, changed=["desc"]))
    task_id = "1e1u1-99999999-2222-3333-4444"
    done = log.store(TaskSucceeded(task_id=task_id, command="image.update", object_name="a", result={"n": 1},
                                   stream=f"image:{image_uuid}", stream_version=2), task_id)
    for envelope in (v1, v2, done, v1, v2, done):
        assert log.deliver(envelope).outcome is Outcome.ACK
    assert log.image(image_uuid)[0]["desc"] == "2" and log.image(image_uuid)[1] == 2
    # The duplicate outcome changed no row, so no second notification went out.
    assert [(n.task_id, n.status, n.reply_to) for n in log.notes] == [(task_id, "SUCCESS", "gateway.test")]


def test_a_task_nobody_submitted_through_a_gateway_is_applied_without_a_notification(log):
    task_id = "1e1u1-99999999-2222-3333-5555"
    failed = log.store(TaskFailed(task_id=task_id, command="image.delete", object_name="a", http_code=404,
                                  result={"detail": "Image not found"}, code="image_not_found"),
                          task_id, reply_to=None)
    assert log.deliver(failed).outcome is Outcome.ACK
    assert log.task(task_id).status == "FAILURE"
    assert log.notes == []


def test_a_batch_applies_in_one_transaction_and_falls_back_one_by_one(log):
    image_uuid = str(uuid.uuid4())
    v1 = log.store(ImageImported(image=images.to_state(record(image_uuid, "a")), version=1))
    v2 = log.store(ImageUpdated(image=images.to_state(record(image_uuid, "a", desc="2")), version=2, changed=["desc"]))
    orphan = contracts.wrap(ImageUpdated(image=images.to_state(record(str(uuid.uuid4()), "b")), version=7,
                                         changed=[]), correlation_id="x")
    verdicts = log.consumer.handle_batch([_delivery(e) for e in (v1, v2, orphan)])
    assert [v.outcome for v in verdicts] == [Outcome.ACK, Outcome.ACK, Outcome.RETRY]
    assert log.image(image_uuid)[1] == 2


def test_a_task_outcome_waits_for_the_image_state_it_produced(log):
    image_uuid = str(uuid.uuid4())
    task_id = "1e1u1-11111111-2222-3333-4444"
    v1 = log.store(ImageImported(image=images.to_state(record(image_uuid, "a")), version=1), task_id)
    done = log.store(TaskSucceeded(task_id=task_id, command="image.import", object_name="a", result={"ok": 1},
                                   stream=f"image:{image_uuid}", stream_version=1), task_id)
    # The task event arrives first: the projector fills the image from the store before the task.
    assert log.deliver(done).outcome is Outcome.ACK
    assert log.image(image_uuid) is not None
    row = log.task(task_id)
    assert (row.status, row.http_code, row.result) == ("SUCCESS", 200, {"ok": 1})
    assert [(n.task_id, n.status) for n in log.notes] == [(task_id, "SUCCESS")]
    log.deliver(v1)
    assert log.image(image_uuid)[1] == 1


def test_the_first_terminal_state_of_a_task_is_final(log):
    task_id = "1e1u1-55555555-2222-3333-4444"
    failed = log.store(TaskFailed(task_id=task_id, command="image.update", object_name="a", http_code=404,
                                  result={"detail": "Image not found"}, code="image_not_found"), task_id)
    # The event store refuses a second outcome for a task; the projector, too, keeps the first one
    # when a second arrives anyway (say, published to the events exchange by somebody else).
    with pytest.raises(store.TaskAlreadyEnded):
        log.store(TaskSucceeded(task_id=task_id, command="image.update", object_name="a"), task_id)
    later = contracts.wrap(TaskSucceeded(task_id=task_id, command="image.update", object_name="a"),
                           correlation_id=task_id)
    log.deliver(failed)
    log.deliver(later)
    row = log.task(task_id)
    assert (row.status, row.http_code, row.result, row.code) == ("FAILURE", 404, {"detail": "Image not found"},
                                                                 "image_not_found")


def test_a_name_taken_by_an_image_whose_delete_is_not_projected_yet(log):
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    log.deliver(log.store(ImageImported(image=images.to_state(record(old, "shared-name")), version=1)))
    log.deliver(log.store(ImageImported(image=images.to_state(record(new, "shared-name")), version=1)))
    assert log.image(old) is None and log.image(new)[0]["uuid"] == new


def _delivery(envelope):
    return delivery_of(contracts.encode(envelope))


def test_undecodable_events_are_dead_lettered(log):
    disposition = log.consumer(Delivery(body=b"{not json", queue="projector.events", headers={}, message_id="m",
                                        correlation_id=None, message_type=None, user_id=None, redelivered=False,
                                        attempt=1))
    assert disposition.outcome is Outcome.DEAD_LETTER
