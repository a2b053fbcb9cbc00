"""The event store, which is also the outbox and the consumers' inbox.

Events are appended in the transaction that produced them, published by the relay afterwards,
and kept: the read model is rebuilt by replaying them in ``id`` order. ``(stream_id,
stream_version)`` is unique, so two writers can never both produce version N of an image.

Inbox: every handled command ends in exactly one terminal task event whose ``causation_id`` is
the command's message id, and that pair is unique (``uq_events_handled``). So "this message was
handled" is written by the same insert that stores the outcome, and a second handling of the
same message cannot commit: ``append`` raises ``AlreadyHandled`` and the transaction rolls back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Sequence

from sqlalchemy import Connection, and_, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError

import orjson

from imagesvc.shared.contracts import TERMINAL_TASK_EVENTS, Envelope, encode
from imagesvc.shared.contracts.routing import Routing, route
from imagesvc.shared.db.dialect import violates
from imagesvc.shared.db.models import StoredEvent, utcnow

_events = StoredEvent.__table__
_HANDLED = next(index for index in _events.indexes if index.name == "uq_events_handled")
_TASK_OUTCOME = next(index for index in _events.indexes if index.name == "uq_events_task_outcome")
# Built once (building statements is a measurable share of a consumer's CPU).
_APPEND = _events.insert().returning(_events.c.id, sort_by_parameter_order=True)
_STREAM_HEAD = select(func.coalesce(func.max(_events.c.stream_version), 0)).where(
    _events.c.stream_id == bindparam("stream_id"))
_HANDLED_BY = select(_events.c.id).where(_events.c.causation_id == bindparam("message_id"),
                                         _events.c.type.in_(sorted(TERMINAL_TASK_EVENTS))).limit(1)


class AlreadyHandled(Exception):
    """The message already has its terminal event: this handling must not commit."""


class TaskAlreadyEnded(Exception):
    """The task id (correlation id) already has its outcome, from a message that may be another one:
    a command reusing a task id gets no outcome of its own."""


@dataclass(frozen=True)
class OutboxRow:
    id: int
    message_id: str
    type: str
    correlation_id: str
    body: bytes
    #: Where the event is published (``shared.contracts.routing``).
    routing: Routing


def _stored_row(row_id: int, message_id: str, event_type: str, correlation_id: str, body: str) -> OutboxRow:
    """An outbox row read back from the table: its routing computed from its stored body."""
    try:
        payload = orjson.loads(body).get("payload") or {}
    except (orjson.JSONDecodeError, AttributeError):
        payload = {}
    return OutboxRow(row_id, message_id, event_type, correlation_id, body.encode(), route(event_type, payload))


def stream_head(conn: Connection, stream_id: str) -> int:
    """The highest version stored for a stream (0 for none). For a stream whose head is not kept
    elsewhere: a new image's uuid may have been used by an image deleted before."""
    return conn.execute(_STREAM_HEAD, {"stream_id": stream_id}).scalar_one()


def append(conn: Connection, envelopes: Iterable[tuple[Envelope, tuple[str, int] | None]]) -> list[OutboxRow]:
    """Store events (with their stream position, if any) as unpublished outbox rows, in one
    statement; return the rows, so the caller can publish them after its commit without reading
    them back.

    Raises AlreadyHandled when one of them is a terminal task event for a message that already
    has one (concurrent handlings: the second waits for the first to commit, then raises), and
    TaskAlreadyEnded when its task already has an outcome (from another message reusing the task
    id, or from this same message: the database reports whichever rule it checks first; tell
    them apart with ``was_handled`` in a new transaction). The transaction is then unusable and
    must be rolled back.
    """
    now = utcnow()
    values = []
    envelopes = list(envelopes)
    for envelope, position in envelopes:
        stream_id, version = position if position else (None, None)
        values.append({
            "message_id": envelope.id,
            "type": envelope.type,
            "stream_id": stream_id,
            "stream_version": version,
            "correlation_id": envelope.correlation_id,
            "causation_id": envelope.causation_id,
            "body": encode(envelope).decode(),
            "created_at": now,
        })
    if not values:
        return []
    try:
        ids = conn.execute(_APPEND, values).scalars().all()
    except IntegrityError as exc:
        if violates(exc, _HANDLED):
            raise AlreadyHandled(values[-1]["causation_id"]) from None
        if violates(exc, _TASK_OUTCOME):
            raise TaskAlreadyEnded(values[-1]["correlation_id"]) from None
        raise
    return [OutboxRow(row_id, v["message_id"], v["type"], v["correlation_id"], v["body"].encode(),
                      route(envelope.type, envelope.payload))
            for row_id, v, (envelope, _) in zip(ids, values, envelopes)]


def unpublished(conn: Connection, *, ids: Sequence[int] | None = None, older_than: datetime | None = None,
                limit: int = 500) -> list[OutboxRow]:
    """Unpublished rows in id order: the given ``ids``, or all created before ``older_than``."""
    query = select(_events.c.id, _events.c.message_id, _events.c.type, _events.c.correlation_id, _events.c.body).where(
        _events.c.published_at.is_(None)
    )
    if ids is not None:
        query = query.where(_events.c.id.in_(list(ids)))
    if older_than is not None:
        query = query.where(_events.c.created_at < older_than)
    rows = conn.execute(query.order_by(_events.c.id).limit(limit)).all()
    return [_stored_row(*row) for row in rows]


def oldest_unpublished_at(conn: Connection) -> datetime | None:
    """When the oldest event not yet published was stored (None: all are published). One row
    read through the partial index ``ix_events_unpublished`` (ids grow with time)."""
    return conn.execute(
        select(_events.c.created_at).where(_events.c.published_at.is_(None)).order_by(_events.c.id).limit(1)
    ).scalar()


def unpublished_for_message(conn: Connection, causation_id: str) -> list[OutboxRow]:
    """Unpublished events caused by one handled message (its redelivery republishes them)."""
    rows = conn.execute(
        select(_events.c.id, _events.c.message_id, _events.c.type, _events.c.correlation_id, _events.c.body)
        .where(_events.c.causation_id == causation_id, _events.c.published_at.is_(None))
        .order_by(_events.c.id)
    ).all()
    return [_stored_row(*row) for row in rows]


def mark_published(conn: Connection, ids: Sequence[int], *, by: str | None = None) -> None:
    """Mark rows the broker confirmed as published, by the broker user ``by`` (None where the
    broker vouches for nobody: memory://). A row already marked keeps its first mark."""
    if ids:
        conn.execute(
            update(_events).where(and_(_events.c.id.in_(list(ids)), _events.c.published_at.is_(None))).values(
                published_at=utcnow(), published_by=by
            )
        )


def stream_events(conn: Connection, stream_id: str, *, after: int, up_to: int) -> list[bytes]:
    """Bodies of a stream's events with ``after < version <= up_to``, in version order."""
    rows = conn.execute(
        select(_events.c.body)
        .where(_events.c.stream_id == stream_id, _events.c.stream_version > after, _events.c.stream_version <= up_to)
        .order_by(_events.c.stream_version)
    ).all()
    return [r.body.encode() for r in rows]


def all_events(conn: Connection, *, after_id: int = 0, limit: int = 1000) -> list[tuple[int, bytes]]:
    """A page of the whole log in commit order, for replays."""
    rows = conn.execute(
        select(_events.c.id, _events.c.body).where(_events.c.id > after_id).order_by(_events.c.id).limit(limit)
    ).all()
    return [(r.id, r.body.encode()) for r in rows]


def was_handled(conn: Connection, message_id: str) -> bool:
    """Whether the message already has its terminal task event (committed)."""
    return conn.execute(_HANDLED_BY, {"message_id": message_id}).first() is not None


def task_started(conn: Connection, task_id: str) -> tuple[str, bytes] | None:
    """The ``task.started`` of a long-running task: (the id of the command that started it, the
    event's envelope), or None."""
    row = conn.execute(
        select(_events.c.causation_id, _events.c.body)
        .where(_events.c.correlation_id == task_id, _events.c.type == "task.started")
        .order_by(_events.c.id).limit(1)
    ).first()
    return (row.causation_id, row.body.encode()) if row else None


def task_ended(conn: Connection, task_id: str) -> bool:
    """Whether the task has its terminal event."""
    return conn.execute(
        select(_events.c.id).where(_events.c.correlation_id == task_id,
                                   _events.c.type.in_(sorted(TERMINAL_TASK_EVENTS))).limit(1)
    ).first() is not None
