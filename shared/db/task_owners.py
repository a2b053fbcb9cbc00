"""Task ids belong to the command that first used them.

A task id travels in a command's ``correlation_id``, and anybody who subscribes to events sees
it. So before a command changes anything under a task id, its handling binds the id to the
command's message id (``bind``, in the same transaction as that first change): a different command
claiming the same id later is refused (``TaskTaken``) and cannot act on the task, end it, or take
its lease over. A redelivery of the same message, or a retry of it, is the same command.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, select

from shared.db.dialect import insert_ignore
from shared.db.models import TaskOwner, utcnow

_owners = TaskOwner.__table__
_OWNER = select(_owners.c.message_id, _owners.c.actor).where(_owners.c.task_id == bindparam("task_id"))


class TaskTaken(Exception):
    """The task id belongs to another command; this one must change nothing under it."""

    def __init__(self, task_id: str, actor: str | None):
        super().__init__(f"task {task_id} belongs to another command")
        self.task_id = task_id
        self.actor = actor


def bind(conn: Connection, *, task_id: str, message_id: str, actor: str | None, command: str) -> None:
    """Bind ``task_id`` to ``message_id`` unless it is bound already; raises TaskTaken when it is
    bound to another message. Concurrent first binds of one id: one wins, the others wait for its
    transaction and then see its row."""
    if insert_ignore(conn, _owners, {"task_id": task_id, "message_id": message_id, "actor": actor,
                                     "command": command, "bound_at": utcnow()}):
        return
    row = conn.execute(_OWNER, {"task_id": task_id}).first()
    if row is not None and row.message_id != message_id:
        raise TaskTaken(task_id, row.actor)
