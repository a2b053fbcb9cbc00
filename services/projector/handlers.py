"""Apply events to the read model. Decides nothing; only keeps the model equal to the event log.

Image events are applied in stream order: version N only after N-1. A gap is filled from the
event store (the events are committed there before they are ever published), so delivery order
does not matter. A task's terminal state is written only once the image stream it produced has
been applied, which is what lets the gateway promise read-your-writes.
"""

from __future__ import annotations

import orjson
from sqlalchemy import Connection, delete, select

from domain import images, tasks
from shared import contracts
from shared.contracts import Envelope, Event, ImageDeleted, ImageImported, ImageUpdated, TaskEvent, TaskFailed, TaskStarted
from shared.db import events as store
from shared.db.dialect import insert_for, insert_ignore
from shared.db.models import ReadImage, ReadStream, ReadTask, utcnow
from shared.errors import OutOfOrder
from shared.handling import Notification

_images = ReadImage.__table__
_streams = ReadStream.__table__
_tasks = ReadTask.__table__


def apply(conn: Connection, envelope: Envelope, event: Event) -> Notification | None:
    if isinstance(event, TaskEvent):
        return _apply_task(conn, event)
    if event.stream_position() is not None:
        _apply_in_order(conn, event)
    return None


def _position(conn: Connection, stream_id: str) -> int:
    """Current version of a stream, row-locked for this transaction."""
    insert_ignore(conn, _streams, {"stream_id": stream_id, "version": 0})
    return conn.execute(
        select(_streams.c.version).where(_streams.c.stream_id == stream_id).with_for_update()
    ).scalar_one()


def _catch_up(conn: Connection, stream_id: str, position: int, up_to: int) -> int:
    """Apply the stream's stored events after ``position`` up to ``up_to``; returns the new position."""
    for body in store.stream_events(conn, stream_id, after=position, up_to=up_to):
        missing = contracts.parse(contracts.decode(body))
        _apply_change(conn, missing)  # type: ignore[arg-type]
        position = missing.stream_position()[1]  # type: ignore[union-attr, index]
    conn.execute(_streams.update().where(_streams.c.stream_id == stream_id).values(version=position))
    return position


def _apply_in_order(conn: Connection, event: Event) -> None:
    stream_id, version = event.stream_position()  # type: ignore[misc]
    position = _position(conn, stream_id)
    if version <= position:
        return  # already applied (a redelivery, or caught up from the store)
    if version > position + 1:
        position = _catch_up(conn, stream_id, position, version - 1)
        if version > position + 1:
            raise OutOfOrder(f"{stream_id} is at {position}, event is {version}")
    _apply_change(conn, event)
    conn.execute(_streams.update().where(_streams.c.stream_id == stream_id).values(version=version))


def _apply_change(conn: Connection, event: Event) -> None:
    if isinstance(event, ImageDeleted):
        conn.execute(delete(_images).where(_images.c.uuid == event.uuid))
        return
    assert isinstance(event, (ImageImported, ImageUpdated))
    state = event.image
    record = images.from_state(state)
    row = {
        "name": record.name,
        "created": record.created,
        "owner": record.owner,
        "dc_bound": record.dc_bound,
        "access": record.access,
        "status": record.status,
        "doc": orjson.dumps(images.public_view(record)).decode(),
        "dcs": orjson.dumps(sorted(record.dcs)).decode(),
        "version": event.version,
    }
    # Names are unique on the write side; another uuid holding this name here is an image whose
    # deletion (another stream) has not been projected yet.
    conn.execute(delete(_images).where(_images.c.name == record.name, _images.c.uuid != record.uuid))
    stmt = insert_for(conn, _images).values(uuid=record.uuid, **row)
    conn.execute(stmt.on_conflict_do_update(index_elements=[_images.c.uuid], set_=row))


def _apply_task(conn: Connection, event: TaskEvent) -> Notification | None:
    if event.stream and event.stream_version:
        position = _position(conn, event.stream)
        if position < event.stream_version:
            position = _catch_up(conn, event.stream, position, event.stream_version)
            if position < event.stream_version:
                raise OutOfOrder(f"task {event.task_id} waits for {event.stream} v{event.stream_version}")
    if isinstance(event, TaskStarted):
        status, http_code, result, code = tasks.STARTED, 201, None, None
    elif isinstance(event, TaskFailed):
        status, http_code, result, code = tasks.FAILURE, event.http_code, event.result, event.code
    else:
        status, http_code, result, code = tasks.SUCCESS, event.http_code, event.result, None  # type: ignore[attr-defined]
    row = {
        "status": status,
        "http_code": http_code,
        "result": result,
        "code": code,
        "command": event.command,
        "object_name": event.object_name,
        "user": event.user,
        "owner": event.owner,
        "dc": event.dc,
        "updated_at": utcnow(),
    }
    stmt = insert_for(conn, _tasks).values(task_id=event.task_id, **row)
    # The first terminal state is final: a late "started" or a second outcome changes nothing.
    stmt = stmt.on_conflict_do_update(
        index_elements=[_tasks.c.task_id],
        set_=row,
        where=_tasks.c.status.notin_(list(tasks.TERMINAL)),
    )
    conn.execute(stmt)
    return Notification(task_id=event.task_id, status=status, http_code=http_code, result=result)
