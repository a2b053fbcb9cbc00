"""The gateway's command journal (``submitted_commands``), as ``serve``'s start-up recovery and the
lease sweeper read it.

The gateway writes the journal (``services.gateway.queries``); this module only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, exists, select

from imagesvc.shared.contracts import TERMINAL_TASK_EVENTS
from imagesvc.shared.db.models import StoredEvent, SubmittedCommand

_journal = SubmittedCommand.__table__
_events = StoredEvent.__table__


@dataclass(frozen=True)
class JournaledCommand:
    """A command the gateway accepted and answered, as it journaled it."""

    message_id: str
    task_id: str
    type: str
    object_name: str
    user: str
    owner: str | None
    dc: str | None
    #: Where and what was published; None for a row journaled before the journal kept them.
    routing_key: str | None
    body: bytes | None


def unfinished(conn: Connection) -> list[JournaledCommand]:
    """The journaled commands whose task has no outcome (no terminal task event), oldest first."""
    ended = exists().where(_events.c.correlation_id == _journal.c.task_id,
                           _events.c.type.in_(sorted(TERMINAL_TASK_EVENTS)))
    rows = conn.execute(select(_journal).where(~ended).order_by(_journal.c.created_at, _journal.c.message_id)).all()
    return [JournaledCommand(message_id=r.message_id, task_id=r.task_id, type=r.type, object_name=r.object_name,
                             user=r.user, owner=r.owner, dc=r.dc, routing_key=r.routing_key,
                             body=r.body.encode() if r.body is not None else None)
            for r in rows]


def command_body(conn: Connection, task_id: str) -> bytes | None:
    """The envelope of the task's command as the gateway published it, or None (not submitted
    through a gateway, or journaled before the journal kept commands)."""
    row = conn.execute(select(_journal.c.body).where(_journal.c.task_id == task_id).limit(1)).first()
    return row.body.encode() if row is not None and row.body is not None else None
