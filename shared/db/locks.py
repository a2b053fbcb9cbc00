"""Lease locks: one row per held lock, taken and checked in a single atomic statement.

A lock has an owner (a task id) and an expiry. ``acquire`` succeeds when the lock is free,
expired, or already held by the same owner (re-entry after a redelivery); it never waits. Which
command needs which lock, and what "held" means for it, is the handlers' business.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Collection

from sqlalchemy import Connection, bindparam, delete, func, select, update

from imagesvc.shared.db.dialect import insert_for
from imagesvc.shared.db.models import Lock, utcnow

_locks = Lock.__table__


@dataclass(frozen=True)
class LockHolder:
    owner: str
    expires_at: datetime
    #: When this owner last took the lock: the lease's fencing token (see ``acquire``).
    acquired_at: datetime


def acquire(conn: Connection, name: str, owner: str, lease_seconds: float, *, now: datetime | None = None) -> bool:
    """Take ``name`` for ``owner`` until now + lease. True if the caller now holds it."""
    return take(conn, name, owner, lease_seconds, now=now) is not None


def take(conn: Connection, name: str, owner: str, lease_seconds: float, *,
         now: datetime | None = None) -> datetime | None:
    """``acquire``, returning the time of this acquisition when the caller now holds the lock,
    else None.

    The time is the lease's *fencing token*: taking the lock again (the same owner re-entering,
    e.g. a redelivered command resuming its work) stamps a new one, so work begun under the
    earlier token can tell, with ``renew(since=...)``, that it has been superseded."""
    now = now or utcnow()
    expires = now + timedelta(seconds=lease_seconds)
    stmt = insert_for(conn, _locks).values(name=name, owner=owner, acquired_at=now, expires_at=expires)
    stmt = stmt.on_conflict_do_update(
        index_elements=[_locks.c.name],
        set_={"owner": owner, "acquired_at": now, "expires_at": expires},
        where=(_locks.c.expires_at < now) | (_locks.c.owner == owner),
    ).returning(_locks.c.owner)
    return now if conn.execute(stmt).first() is not None else None


def renew(conn: Connection, name: str, owner: str, lease_seconds: float, *, since: datetime | None = None,
          now: datetime | None = None) -> bool:
    """Extend ``owner``'s lease on ``name`` if ``owner`` still holds it (never takes a free lock:
    a lease that lapsed and was taken over, or cleared by the sweeper, stays lost) and, with
    ``since``, still under that token (``acquire``). True if renewed."""
    now = now or utcnow()
    condition = [_locks.c.name == name, _locks.c.owner == owner]
    if since is not None:
        condition.append(_locks.c.acquired_at == since)
    result = conn.execute(update(_locks).where(*condition).values(expires_at=now + timedelta(seconds=lease_seconds)))
    return result.rowcount == 1


def release(conn: Connection, name: str, owner: str) -> bool:
    """Drop the lock if ``owner`` holds it. True if a row was removed."""
    result = conn.execute(delete(_locks).where(_locks.c.name == name, _locks.c.owner == owner))
    return result.rowcount == 1


_HOLDER = select(_locks.c.owner, _locks.c.expires_at, _locks.c.acquired_at).where(
    _locks.c.name == bindparam("name"), _locks.c.expires_at >= bindparam("now", type_=Lock.expires_at.type)
)


def holder(conn: Connection, name: str, *, now: datetime | None = None) -> LockHolder | None:
    """The current, unexpired holder of ``name``, if any."""
    row = conn.execute(_HOLDER, {"name": name, "now": now or utcnow()}).first()
    return LockHolder(owner=row.owner, expires_at=row.expires_at, acquired_at=row.acquired_at) if row else None


def live(conn: Connection, prefix: str, *, now: datetime | None = None) -> set[str]:
    """The names of the locks named ``prefix...`` whose lease has not run out."""
    return set(conn.execute(
        select(_locks.c.name).where(_locks.c.name.startswith(prefix, autoescape=True),
                                    _locks.c.expires_at >= (now or utcnow()))
    ).scalars())


def count_by_state(conn: Connection, *, now: datetime | None = None) -> tuple[int, int]:
    """(held, expired): how many locks have a running lease and how many one that ran out
    (their holders stopped renewing them; the sweeper ends them). One pass over ``locks``, which
    holds one row per lock held."""
    moment = now or utcnow()
    row = conn.execute(select(
        func.count().filter(_locks.c.expires_at >= moment), func.count().filter(_locks.c.expires_at < moment),
    )).one()
    return int(row[0] or 0), int(row[1] or 0)


@dataclass(frozen=True)
class ExpiredLock:
    name: str
    owner: str
    expires_at: datetime


def expired(conn: Connection, prefix: str, *, now: datetime | None = None,
            limit: int | None = 100) -> list[ExpiredLock]:
    """Locks named ``prefix...`` whose lease has run out (oldest first, at most ``limit``; None:
    all): their holders stopped renewing them."""
    rows = conn.execute(
        select(_locks.c.name, _locks.c.owner, _locks.c.expires_at)
        .where(_locks.c.name.startswith(prefix, autoescape=True), _locks.c.expires_at < (now or utcnow()))
        .order_by(_locks.c.expires_at).limit(limit)
    ).all()
    return [ExpiredLock(r.name, r.owner, r.expires_at) for r in rows]


def take_over(conn: Connection, name: str, *, owner: str, new_owner: str, lease_seconds: float,
              now: datetime | None = None) -> bool:
    """Give ``name`` to ``new_owner`` if ``owner`` still holds it and its lease has run out, in one
    conditional statement: a renewal committed first makes this a no-op, and one that comes
    after finds the lock no longer its holder's (``acquire`` refuses it). True if taken."""
    now = now or utcnow()
    result = conn.execute(
        update(_locks)
        .where(_locks.c.name == name, _locks.c.owner == owner, _locks.c.expires_at < now)
        .values(owner=new_owner, acquired_at=now, expires_at=now + timedelta(seconds=lease_seconds))
    )
    return result.rowcount == 1


def restart_leases(conn: Connection, keep: Collection[str], lease_seconds: float, *,
                   now: datetime | None = None) -> None:
    """Every lock held by one of ``keep`` runs for ``lease_seconds`` from now; every other one has
    run out. Only for a caller that knows that no holder is alive (``serve`` starting: nothing but
    itself can hold a lease of its database) and that ``keep`` are the tasks it goes on with."""
    now = now or utcnow()
    kept = list(keep)
    conn.execute(update(_locks).where(_locks.c.owner.in_(kept)).values(expires_at=now + timedelta(seconds=lease_seconds)))
    conn.execute(update(_locks).where(_locks.c.owner.notin_(kept), _locks.c.expires_at >= now)
                 .values(expires_at=now - timedelta(seconds=1)))


def owners(conn: Connection) -> set[str]:
    """The owners of every lock row, held or run out."""
    return set(conn.execute(select(_locks.c.owner).distinct()).scalars())


def owned_by(conn: Connection, owner: str) -> list[str]:
    """The names of every lock ``owner`` holds (expired or not)."""
    return list(conn.execute(select(_locks.c.name).where(_locks.c.owner == owner).order_by(_locks.c.name)).scalars())
