"""Writes to accounts and datacenters made by the administration commands."""

from __future__ import annotations

from sqlalchemy import Connection, func, insert, select, update

from shared.db.models import Datacenter, User, utcnow
from shared.db.records import UserRecord
from shared.keys import key_digest

_users = User.__table__
_dcs = Datacenter.__table__


class AccountExists(Exception):
    pass


def create_user(conn: Connection, username: str, *, api_key: str | None, is_superadmin: bool) -> UserRecord:
    """Insert a user; the API key is stored as its digest only. Raises AccountExists."""
    if conn.execute(select(_users.c.id).where(_users.c.username == username)).first() is not None:
        raise AccountExists(username)
    default_dc = conn.execute(select(_dcs.c.id).where(_dcs.c.is_default.is_(True))).scalar()
    user_id = conn.execute(
        insert(_users)
        .values(
            username=username,
            api_key_digest=key_digest(api_key) if api_key else None,
            is_superadmin=is_superadmin,
            api_access=True,
            is_active=True,
            default_dc_id=default_dc,
            created_at=utcnow(),
        )
        .returning(_users.c.id)
    ).scalar_one()
    return UserRecord(id=user_id, username=username, is_superadmin=is_superadmin)


def set_api_key(conn: Connection, username: str, api_key: str) -> bool:
    result = conn.execute(update(_users).where(_users.c.username == username).values(api_key_digest=key_digest(api_key)))
    return result.rowcount == 1


def count_superadmins(conn: Connection) -> int:
    return conn.execute(select(func.count()).select_from(_users).where(_users.c.is_superadmin.is_(True))).scalar_one()
