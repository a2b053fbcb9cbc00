"""Compute nodes (reference §9.4): what ``node.*`` events and ``imagesvc admin node`` say about
them. Not part of the read model: other systems own these facts, so ``projector rebuild`` leaves
them alone.

Every fact carries the time it was true at its source (``changed_at``), and the newest fact about
a hostname wins whatever order facts arrive in: a late or redelivered event never overwrites a
newer one. A removal is kept as a row with an empty status (a tombstone, invisible to ``get`` and
``list_all``), so an update older than the removal cannot bring the node back. A removal wins a
tie with an update of the same instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Connection, bindparam, select, update

from imagesvc.shared.contracts.events import node_hostname_problem, node_problem
from imagesvc.shared.db.dialect import insert_ignore, prepared
from imagesvc.shared.db.models import Node

_nodes = Node.__table__

#: The one status in which a node can do work.
OPERATIONAL_STATUS = "online"
#: Statuses a node is known to report (Danube Cloud's, plus what a monitor may say while a node
#: boots or is switched off). Others are stored as given; they are simply not operational.
KNOWN_STATUSES = ("online", "maintenance", "unreachable", "unlicensed", "offline", "initializing")

#: The status of a removed node's row. Never a real status: node statuses are not empty.
_REMOVED = ""
#: The time of a row that exists only to be locked (older than any fact).
_NEVER = datetime(1970, 1, 1, tzinfo=timezone.utc)

_VISIBLE = _nodes.c.status != _REMOVED
_COLUMNS = (_nodes.c.hostname, _nodes.c.status, _nodes.c.uuid, _nodes.c.address, _nodes.c.changed_at)
_GET = select(*_COLUMNS).where(_nodes.c.hostname == bindparam("hostname"), _VISIBLE)
_LIST = select(*_COLUMNS).where(_VISIBLE).order_by(_nodes.c.hostname)
_LOCK = select(_nodes.c.status, _nodes.c.changed_at).where(_nodes.c.hostname == bindparam("hostname")).with_for_update()
_TOMBSTONE = (update(_nodes).where(_nodes.c.hostname == bindparam("host"))
              .values(status=_REMOVED, uuid=None, address=None, changed_at=bindparam("removed_at")))


@dataclass(frozen=True)
class NodeRecord:
    hostname: str
    status: str
    uuid: str | None
    address: str | None
    changed_at: datetime

    @property
    def operational(self) -> bool:
        return self.status == OPERATIONAL_STATUS


def check(record: NodeRecord) -> None:
    """Raise ValueError, with a sentence, if ``record`` could not be stored."""
    problem = node_problem(hostname=record.hostname, status=record.status, uuid=record.uuid,
                           address=record.address)
    if problem:
        raise ValueError(problem)
    check_time(record.changed_at)


def get(conn: Connection, hostname: str) -> NodeRecord | None:
    """The node's newest known state, or None for a node never known or removed."""
    row = conn.execute(_GET, {"hostname": hostname}).first()
    return None if row is None else NodeRecord(*row)


def list_all(conn: Connection) -> list[NodeRecord]:
    """Every known node, by hostname."""
    return [NodeRecord(*row) for row in conn.execute(_LIST)]


def put(conn: Connection, record: NodeRecord) -> bool:
    """Store ``record`` unless a fact at least as new (state or removal) is stored for its hostname.

    True if it changed the stored state. One atomic statement: of concurrent writers the newest
    fact wins (on PostgreSQL the conflict waits for the other row's transaction and re-reads it).
    Raises ValueError for a record that could not be stored.
    """
    check(record)
    row = {"hostname": record.hostname, "status": record.status, "uuid": record.uuid, "address": record.address,
           "changed_at": record.changed_at}
    return conn.execute(prepared(conn, _nodes, "newer-fact-wins", _newer_fact_wins), row).first() is not None


def remove(conn: Connection, hostname: str, changed_at: datetime) -> bool:
    """Record that the node was removed at ``changed_at``, unless a newer fact is stored.

    True if a known node was removed by this call. A removal of an unknown node is remembered
    too, so that an older update arriving later is ignored. Raises ValueError for a hostname or
    time that could not be stored.
    """
    problem = node_hostname_problem(hostname)
    if problem:
        raise ValueError(problem)
    check_time(changed_at)
    # Make sure there is a row to lock, so concurrent writers of this hostname queue up behind us.
    insert_ignore(conn, _nodes, {"hostname": hostname, "status": _REMOVED, "uuid": None, "address": None,
                                 "changed_at": _NEVER})
    stored = conn.execute(_LOCK, {"hostname": hostname}).one()
    if stored.changed_at > changed_at:
        return False
    if stored.status == _REMOVED and stored.changed_at == changed_at:
        return False
    conn.execute(_TOMBSTONE, {"host": hostname, "removed_at": changed_at})
    return stored.status != _REMOVED


def _newer_fact_wins(insert):
    return insert.on_conflict_do_update(
        index_elements=[_nodes.c.hostname],
        set_={c: insert.excluded[c] for c in ("status", "uuid", "address", "changed_at")},
        where=_nodes.c.changed_at < insert.excluded.changed_at,
    ).returning(_nodes.c.hostname)


def check_time(changed_at: object) -> None:
    """Raise ValueError unless ``changed_at`` is a timezone-aware datetime (facts from several
    sources are ordered by instant)."""
    if not isinstance(changed_at, datetime) or changed_at.tzinfo is None or changed_at.utcoffset() is None:
        raise ValueError("changed_at must be a datetime with a timezone")
