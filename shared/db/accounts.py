"""Accounts, datacenters and roles: what the administration commands write, and the one query
that tells what a user holds (``load_grants``), used by the gateway and by every consumer."""

from __future__ import annotations

import re
from typing import Iterable

from sqlalchemy import Connection, and_, bindparam, delete, func, insert, or_, select, update

from imagesvc.shared.db.models import Datacenter, Role, RoleDatacenter, RoleMember, User, utcnow
from imagesvc.shared.db.records import DatacenterRecord, Grants, UserRecord
from imagesvc.shared.keys import key_digest

_users = User.__table__
_dcs = Datacenter.__table__
_roles = Role.__table__
_members = RoleMember.__table__
_role_dcs = RoleDatacenter.__table__

#: The permissions a role can hold (reference §4.2).
PERMISSIONS = ("admin", "image_admin", "image_import_admin")

# Every datacenter the user owns or a role of theirs is attached to, with that role's permissions.
_GRANTS = (
    select(_dcs.c.name, _dcs.c.owner_id, _roles.c.permissions)
    .select_from(
        _dcs.outerjoin(_role_dcs, _role_dcs.c.dc_id == _dcs.c.id)
        .outerjoin(_members, and_(_members.c.role_id == _role_dcs.c.role_id,
                                  _members.c.user_id == bindparam("user_id")))
        .outerjoin(_roles, _roles.c.id == _members.c.role_id)
    )
    .where(or_(_dcs.c.owner_id == bindparam("user_id"), _members.c.user_id.is_not(None)))
)


#: Names that can be stored and put in a URL path segment: (pattern, longest) per kind.
_NAMES = {
    "datacenter": (re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z"), 16),
    "role": (re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z"), 80),
    "user": (re.compile(r"^[A-Za-z0-9][A-Za-z0-9.@+_-]*\Z"), 150),
}


def _check_name(kind: str, name: str) -> None:
    pattern, longest = _NAMES[kind]
    if not pattern.match(name) or len(name) > longest:
        extra = " @ +" if kind == "user" else ""
        raise ValueError(f"invalid {kind} name {name!r}: at most {longest} letters, digits and . _ -{extra}, "
                         "starting with a letter or digit")


class AccountExists(Exception):
    pass


class NotFound(LookupError):
    pass


def load_grants(conn: Connection, user_id: int) -> Grants:
    """What ``user_id`` holds in each datacenter, in one statement."""
    permissions: dict[str, set[str]] = {}
    owned: set[str] = set()
    for name, owner_id, held in conn.execute(_GRANTS, {"user_id": user_id}):
        if owner_id == user_id:
            owned.add(name)
        if held is not None:
            permissions.setdefault(name, set()).update(held)
    return Grants(permissions={dc: frozenset(p) for dc, p in permissions.items()}, owned=frozenset(owned))


# --- users -------------------------------------------------------------------------------------


def create_user(conn: Connection, username: str, *, api_key: str | None, is_superadmin: bool,
                api_access: bool = True, password_hash: str | None = None) -> UserRecord:
    """Insert a user; the API key is stored as its digest only. Raises AccountExists, or
    ValueError for a name that could not be used."""
    _check_name("user", username)
    if conn.execute(select(_users.c.id).where(_users.c.username == username)).first() is not None:
        raise AccountExists(username)
    default_dc = conn.execute(select(_dcs.c.id).where(_dcs.c.is_default.is_(True))).scalar()
    user_id = conn.execute(
        insert(_users)
        .values(
            username=username,
            api_key_digest=key_digest(api_key) if api_key else None,
            password_hash=password_hash,
            is_superadmin=is_superadmin,
            api_access=api_access,
            is_active=True,
            default_dc_id=default_dc,
            created_at=utcnow(),
        )
        .returning(_users.c.id)
    ).scalar_one()
    return UserRecord(id=user_id, username=username, is_superadmin=is_superadmin, api_access=api_access,
                      default_dc_id=default_dc)


def set_api_key(conn: Connection, username: str, api_key: str | None) -> bool:
    """Replace (or, with None, revoke) a user's API key. False if there is no such user."""
    result = conn.execute(update(_users).where(_users.c.username == username).values(
        api_key_digest=key_digest(api_key) if api_key else None))
    return result.rowcount == 1


def update_user(conn: Connection, username: str, **values: object) -> None:
    """Set ``is_active``, ``api_access``, ``is_superadmin`` or ``password_hash``. Raises NotFound."""
    allowed = {"is_active", "api_access", "is_superadmin", "password_hash"}
    unknown = set(values) - allowed
    if unknown:
        raise ValueError(f"not a user attribute: {sorted(unknown)}")
    if values and conn.execute(update(_users).where(_users.c.username == username).values(**values)).rowcount != 1:
        raise NotFound(f"no user {username!r}")
    if values.get("is_superadmin") is False and count_superadmins(conn) == 0:
        raise ValueError("that would leave no SuperAdmin")  # the caller's transaction rolls back


def list_users(conn: Connection) -> list[dict]:
    rows = conn.execute(select(_users.c.username, _users.c.is_superadmin, _users.c.api_access, _users.c.is_active,
                               (_users.c.api_key_digest.is_not(None)).label("has_key"))
                        .order_by(_users.c.username)).all()
    return [dict(row._mapping) for row in rows]


def count_superadmins(conn: Connection) -> int:
    return conn.execute(select(func.count()).select_from(_users).where(_users.c.is_superadmin.is_(True))).scalar_one()


def _user_id(conn: Connection, username: str) -> int:
    user_id = conn.execute(select(_users.c.id).where(_users.c.username == username)).scalar()
    if user_id is None:
        raise NotFound(f"no user {username!r}")
    return user_id


# --- datacenters -------------------------------------------------------------------------------


def create_datacenter(conn: Connection, name: str, *, owner: str | None = None, public: bool = False,
                      image_limit: int | None = None) -> DatacenterRecord:
    """Raises AccountExists (name taken), NotFound (owner) or ValueError (name)."""
    _check_name("datacenter", name)
    if image_limit is not None and image_limit < 0:
        raise ValueError("the image limit cannot be negative")
    if conn.execute(select(_dcs.c.id).where(_dcs.c.name == name)).first() is not None:
        raise AccountExists(name)
    owner_id = _user_id(conn, owner) if owner else None
    access = 1 if public else 3
    dc_id = conn.execute(insert(_dcs).values(name=name, is_default=False, image_limit=image_limit, owner_id=owner_id,
                                             access=access, created_at=utcnow()).returning(_dcs.c.id)).scalar_one()
    return DatacenterRecord(id=dc_id, name=name, image_limit=image_limit, owner_id=owner_id, access=access)


def list_datacenters(conn: Connection) -> list[dict]:
    owner = _users.alias("owner")
    rows = conn.execute(
        select(_dcs.c.name, _dcs.c.is_default, _dcs.c.access, _dcs.c.image_limit, owner.c.username.label("owner"))
        .select_from(_dcs.outerjoin(owner, owner.c.id == _dcs.c.owner_id)).order_by(_dcs.c.id)).all()
    return [dict(row._mapping) for row in rows]


def _dc_id(conn: Connection, name: str) -> int:
    dc_id = conn.execute(select(_dcs.c.id).where(_dcs.c.name == name)).scalar()
    if dc_id is None:
        raise NotFound(f"no datacenter {name!r}")
    return dc_id


# --- roles -------------------------------------------------------------------------------------


def create_role(conn: Connection, name: str, permissions: Iterable[str]) -> None:
    """Raises AccountExists, or ValueError for a permission that does not exist."""
    _check_name("role", name)
    held = sorted(set(permissions))
    unknown = [p for p in held if p not in PERMISSIONS]
    if unknown:
        raise ValueError(f"unknown permission(s) {unknown}; known: {', '.join(PERMISSIONS)}")
    if conn.execute(select(_roles.c.id).where(_roles.c.name == name)).first() is not None:
        raise AccountExists(name)
    conn.execute(insert(_roles).values(name=name, permissions=held, created_at=utcnow()))


def _role_id(conn: Connection, name: str) -> int:
    role_id = conn.execute(select(_roles.c.id).where(_roles.c.name == name)).scalar()
    if role_id is None:
        raise NotFound(f"no role {name!r}")
    return role_id


def add_member(conn: Connection, role: str, username: str) -> None:
    _link(conn, _members, True, role_id=_role_id(conn, role), user_id=_user_id(conn, username))


def remove_member(conn: Connection, role: str, username: str) -> None:
    _link(conn, _members, False, role_id=_role_id(conn, role), user_id=_user_id(conn, username))


def attach_role(conn: Connection, role: str, dc: str) -> None:
    _link(conn, _role_dcs, True, role_id=_role_id(conn, role), dc_id=_dc_id(conn, dc))


def detach_role(conn: Connection, role: str, dc: str) -> None:
    _link(conn, _role_dcs, False, role_id=_role_id(conn, role), dc_id=_dc_id(conn, dc))


def _link(conn: Connection, table, present: bool, **key: int) -> None:
    """Make the link row ``key`` of ``table`` exist (or not); idempotent either way."""
    conn.execute(delete(table).where(*[table.c[column] == value for column, value in key.items()]))
    if present:
        conn.execute(insert(table).values(**key))


def list_roles(conn: Connection) -> list[dict]:
    roles = conn.execute(select(_roles.c.id, _roles.c.name, _roles.c.permissions).order_by(_roles.c.name)).all()
    members = conn.execute(select(_members.c.role_id, _users.c.username)
                           .join(_users, _users.c.id == _members.c.user_id)).all()
    dcs = conn.execute(select(_role_dcs.c.role_id, _dcs.c.name).join(_dcs, _dcs.c.id == _role_dcs.c.dc_id)).all()
    return [{"name": r.name, "permissions": list(r.permissions),
             "users": sorted(u for rid, u in members if rid == r.id),
             "dcs": sorted(d for rid, d in dcs if rid == r.id)} for r in roles]


def find(rows: list[dict], key: str, value: str) -> dict | None:
    """The row of a ``list_*`` result whose ``key`` is ``value`` (the lists are small)."""
    return next((row for row in rows if row[key] == value), None)
