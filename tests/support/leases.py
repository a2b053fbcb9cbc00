"""Leases as long-running handlers leave them, for the lease sweeper's tests."""

from __future__ import annotations

import uuid as uuidlib
from datetime import timedelta

import orjson
from sqlalchemy import select

from imagesvc.domain import images
from imagesvc.shared import contracts
from imagesvc.shared.contracts import Actor, ImageImported, TaskStarted, image_stream
from imagesvc.shared.db import locks
from imagesvc.shared.db import events as store
from imagesvc.shared.db.catalogue import SqlCatalogue, image_lock_name
from imagesvc.shared.db.engine import read_transaction, write_transaction
from imagesvc.shared.db.models import StoredEvent, utcnow
from tests.support.records import image_record

TASK = "1e1u1-aaaaaaaa-bbbb-cccc-dddd"


class RecordingRelay:
    def __init__(self):
        self.published: list[store.OutboxRow] = []

    def publish(self, rows) -> bool:
        self.published.extend(rows)
        return True


def begin(engine, command: str, *, status: int = images.STATUS_PENDING, lease_left: float = -5.0,
          task_id: str = TASK, extra_locks=()) -> tuple[str, str]:
    """An image under ``command``'s lease as its handler leaves it: the row (PENDING), the lease
    (``lease_left`` seconds from now: negative = expired), ``task.started`` caused by the command.
    Returns (image uuid, command message id)."""
    uuid = str(uuidlib.uuid4())
    manifest = {"uuid": uuid, "name": "img", "version": "1"}
    image = image_record(uuid=uuid, name=f"img-{uuid[:8]}", status=status, stream_version=1, manifest=manifest,
                         manifest_active={} if command in ("image.import", "image.snapshot") else manifest,
                         dc_bound=None, dcs=[])
    command_id = contracts.new_message_id()
    started = TaskStarted(task_id=task_id, command=command, object_name=image.name, user="admin", owner="admin",
                          dc="main")
    past = utcnow() + timedelta(seconds=lease_left) - timedelta(seconds=60)
    with write_transaction(engine) as conn:
        SqlCatalogue(conn).insert_image(image)
        for name in (image_lock_name(uuid), *extra_locks):
            assert locks.acquire(conn, name, task_id, 60, now=past)
        store.append(conn, [
            (contracts.wrap(ImageImported(image=images.to_state(image), version=1), correlation_id=task_id,
                            causation_id=command_id), (image_stream(uuid), 1)),
            (contracts.wrap(started, correlation_id=task_id, causation_id=command_id, actor=Actor(user="admin", dc="main"),
                            reply_to="gateway-1"), None),
        ])
    return uuid, command_id


def task_events(engine, task_id: str = TASK) -> list[dict]:
    with read_transaction(engine) as conn:
        rows = conn.execute(select(StoredEvent.body).where(StoredEvent.correlation_id == task_id)
                            .order_by(StoredEvent.id)).scalars().all()
    return [orjson.loads(body) for body in rows]
