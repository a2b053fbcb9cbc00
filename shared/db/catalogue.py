"""SQL access to the write-side catalogue: images, their datacenters, users.

Implements ``domain.images.Catalogue`` (reads) plus the writes the consumers make. Every method
runs on the caller's connection, inside the caller's transaction.
"""

from __future__ import annotations

import functools
import time
from datetime import datetime

from sqlalchemy import JSON, Connection, bindparam, delete, func, insert, literal, select, update

from imagesvc.shared.db import accounts, locks
from imagesvc.shared.db.models import Datacenter, Image, ImageDatacenter, Lock, User, utcnow
from imagesvc.shared.db.records import DatacenterRecord, Grants, ImageRecord, UserRecord

_images = Image.__table__
_image_dcs = ImageDatacenter.__table__
_users = User.__table__
_dcs = Datacenter.__table__
_locks = Lock.__table__
#: Database URL -> (expiry, default datacenter).
_DEFAULT_DC: dict[str, tuple[float, DatacenterRecord]] = {}

# Statements are built once (building them is a measurable share of a consumer's CPU).
_bound = _dcs.alias("bound")


#: The key of the transaction-scoped advisory lock that serialises the writers of the image
#: namespace (PostgreSQL). An arbitrary constant of this module's own.
_NAMESPACE_LOCK_KEY = 0x696D6E73
_LOCK_NAMESPACE = select(func.pg_advisory_xact_lock(_NAMESPACE_LOCK_KEY))

#: An image's lease lock (``shared.db.locks``) is named this prefix + the image uuid.
IMAGE_LOCK_PREFIX = "image:"


def image_lock_name(uuid: str) -> str:
    """The name of an image's lease lock."""
    return IMAGE_LOCK_PREFIX + uuid


@functools.lru_cache(maxsize=16)
def _image_statement(dialect: str, column: str, for_update: bool):
    """The image, its owner's name, its bound and attached datacenters and the current holder of
    its lease lock, in one statement."""
    aggregate = func.json_agg if dialect == "postgresql" else func.json_group_array
    attached = (
        select(aggregate(_dcs.c.name, type_=JSON))
        .select_from(_image_dcs.join(_dcs, _dcs.c.id == _image_dcs.c.dc_id))
        .where(_image_dcs.c.image_uuid == _images.c.uuid)
        .scalar_subquery()
    )
    lock_owner = (
        select(_locks.c.owner)
        .where(_locks.c.name == literal(IMAGE_LOCK_PREFIX) + _images.c.uuid,
               _locks.c.expires_at >= bindparam("now", type_=Lock.expires_at.type))
        .scalar_subquery()
    )
    # The row's stream version as of the statement's snapshot. Under READ COMMITTED, a FOR UPDATE
    # that waited for another writer returns that writer's row, but its subqueries and joins keep
    # the older snapshot: a difference between the two versions says so (see ``_image``).
    snapshot = _images.alias("snapshot")
    snapshot_version = select(snapshot.c.stream_version).where(snapshot.c.uuid == _images.c.uuid).scalar_subquery()
    # The acting user comes along (no extra round trip for the consumer's permission check).
    actor = _users.alias("actor")
    query = (
        select(_images, _users.c.username.label("owner_name"), _bound.c.name.label("bound_name"),
               attached.label("attached"), lock_owner.label("lock_owner"), snapshot_version.label("snapshot_version"),
               *[actor.c[c].label(f"actor_{c}") for c in ("id", "username", "is_superadmin", "api_access",
                                                          "is_active", "default_dc_id")])
        .join(_users, _users.c.id == _images.c.owner_id)
        .outerjoin(_bound, _bound.c.id == _images.c.dc_bound_id)
        .outerjoin(actor, actor.c.username == bindparam("actor"))
        .where(_images.c[column] == bindparam("key"))
    )
    return query.with_for_update(of=_images) if for_update else query


_NAME_EXISTS = select(_images.c.uuid).where(_images.c.name == bindparam("name"))
_ALIAS_TAKEN = {
    ignore_case: select(_images.c.uuid)
    .where((func.lower(_images.c.alias) if ignore_case else _images.c.alias) == bindparam("alias"),
           _images.c.version == bindparam("version"), _images.c.uuid != bindparam("exclude"))
    .limit(1)
    for ignore_case in (False, True)
}
_USER_BY_NAME = select(_users).where(_users.c.username == bindparam("username"))
_DC_BY_NAME = select(_dcs).where(_dcs.c.name == bindparam("name"))


class SqlCatalogue:
    def __init__(self, conn: Connection):
        self.conn = conn

    # --- reads ---------------------------------------------------------------------------------

    def image_by_name(self, name: str, *, for_update: bool = False) -> ImageRecord | None:
        return self.image_and_user(name, None, for_update=for_update)[0]

    def image_by_uuid(self, uuid: str, *, for_update: bool = False) -> ImageRecord | None:
        return self._image("uuid", uuid, None, for_update)[0]

    def image_and_user(self, name: str, username: str | None, *,
                       for_update: bool = False) -> tuple[ImageRecord | None, UserRecord | None]:
        """The image named ``name`` and the user ``username``, in one round trip when the image
        exists (a command's target and its actor)."""
        if not storable(name, 64):
            return None, self.user(username) if username else None
        image, user = self._image("name", name, username, for_update)
        if image is None and username:
            user = self.user(username)
        return image, user

    def _image(self, column: str, key: str, username: str | None,
               for_update: bool) -> tuple[ImageRecord | None, UserRecord | None]:
        statement = _image_statement(self.conn.dialect.name, column, for_update)
        actor = username if username and storable(username, 150) else None
        params = {"key": key, "now": utcnow(), "actor": actor}
        row = self.conn.execute(statement, params).first()
        if row is not None and row.snapshot_version != row.stream_version:
            # It waited for a concurrent writer of this image: read again, now that the row lock
            # is held, so that attachments, owner and lease holder are as that writer left them.
            row = self.conn.execute(statement, params).first()
        if row is None:
            return None, None
        user = None
        if row.actor_id is not None:
            user = UserRecord(id=row.actor_id, username=row.actor_username, is_superadmin=row.actor_is_superadmin,
                              api_access=row.actor_api_access, is_active=row.actor_is_active,
                              default_dc_id=row.actor_default_dc_id)
        attached = sorted(row.attached or [])
        return ImageRecord(
            uuid=row.uuid,
            name=row.name,
            alias=row.alias,
            version=row.version,
            desc=row.desc,
            owner=row.owner_name,
            access=row.access,
            size=row.size,
            ostype=row.ostype,
            deploy=row.deploy,
            resize=row.resize,
            status=row.status,
            tags=list(row.tags or []),
            created=row.created,
            changed=row.changed,
            dc_bound=row.bound_name,
            dcs=attached,
            manifest=dict(row.manifest or {}),
            manifest_active=dict(row.manifest_active or {}),
            lock_owner=row.lock_owner,
            stream_version=row.stream_version,
        ), user

    def lock_namespace(self) -> None:
        """Make the writers that check and then claim image names, aliases and datacenter image
        limits take turns until their transactions end, so each one's checks see every claim
        committed before it, in the order the checks run (PostgreSQL's READ COMMITTED would
        otherwise let a claim commit between two checks of one writer). Take it before the first
        check, in a writing transaction; SQLite's writers take turns anyway."""
        if self.conn.dialect.name == "postgresql":
            self.conn.execute(_LOCK_NAMESPACE)

    def name_exists(self, name: str) -> bool:
        return storable(name, 64) and self.conn.execute(_NAME_EXISTS, {"name": name}).first() is not None

    def alias_taken(self, alias: str, version: str, *, exclude_uuid: str | None = None,
                    ignore_case: bool = False) -> bool:
        """Whether another image has this alias and version (the alias compared case-insensitively
        with ``ignore_case``)."""
        params = {"alias": alias.lower() if ignore_case else alias, "version": version, "exclude": exclude_uuid or ""}
        return self.conn.execute(_ALIAS_TAKEN[ignore_case], params).first() is not None

    def count_bound(self, dc_name: str) -> int:
        return self.conn.execute(
            select(func.count()).select_from(_images.join(_dcs, _dcs.c.id == _images.c.dc_bound_id)).where(
                _dcs.c.name == dc_name
            )
        ).scalar_one()

    def image_statuses(self) -> dict[str, tuple[str, int]]:
        """Every image's name and status, by uuid (what a check of the image store needs)."""
        rows = self.conn.execute(select(_images.c.uuid, _images.c.name, _images.c.status))
        return {row.uuid: (row.name, row.status) for row in rows}

    def user(self, username: str) -> UserRecord | None:
        if not storable(username, 150):
            return None
        return user_record(self.conn.execute(_USER_BY_NAME, {"username": username}).first())

    def grants(self, user_id: int) -> Grants:
        return accounts.load_grants(self.conn, user_id)

    def datacenter(self, name: str) -> DatacenterRecord | None:
        if not storable(name, 16):
            return None
        return datacenter_record(self.conn.execute(_DC_BY_NAME, {"name": name}).first())

    def default_datacenter(self) -> DatacenterRecord:
        """The default datacenter (cached per process for a minute: it is fixed at installation)."""
        key = str(self.conn.engine.url)
        cached = _DEFAULT_DC.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        row = self.conn.execute(select(_dcs).where(_dcs.c.is_default.is_(True))).first()
        if row is None:
            raise LookupError("no default datacenter: run `imagesvc db upgrade`")
        found = datacenter_record(row)
        _DEFAULT_DC[key] = (time.monotonic() + 60.0, found)  # type: ignore[assignment]
        return found  # type: ignore[return-value]

    # --- writes --------------------------------------------------------------------------------

    def insert_image(self, image: ImageRecord) -> None:
        self.conn.execute(insert(_images).values(**self._columns(image), uuid=image.uuid, created=image.created))
        self.set_attachments(image.uuid, image.dcs)

    def update_fields(self, uuid: str, changes: dict, *, changed: datetime, stream_version: int) -> None:
        """Write only the given attributes (``owner`` by username, ``dc_bound`` by name or None),
        and the version of the event that records the change."""
        values = {k: v for k, v in changes.items() if k not in ("owner", "dc_bound")}
        values["stream_version"] = stream_version
        if "owner" in changes:
            owner = self.user(changes["owner"])
            if owner is None:
                raise LookupError(f"unknown owner {changes['owner']!r}")
            values["owner_id"] = owner.id
        if "dc_bound" in changes:
            bound = self.datacenter(changes["dc_bound"]) if changes["dc_bound"] else None
            values["dc_bound_id"] = bound.id if bound else None
        self.conn.execute(_update_statement(frozenset(values)), {**values, "changed": changed, "key": uuid})

    def delete_image(self, uuid: str) -> None:
        """Remove the image; its attachments go with it (ON DELETE CASCADE)."""
        self.conn.execute(delete(_images).where(_images.c.uuid == uuid))

    def _columns(self, image: ImageRecord) -> dict:
        owner = self.user(image.owner)
        if owner is None:
            raise LookupError(f"unknown owner {image.owner!r}")
        bound = self.datacenter(image.dc_bound) if image.dc_bound else None
        return {
            "name": image.name,
            "alias": image.alias,
            "version": image.version,
            "desc": image.desc,
            "owner_id": owner.id,
            "access": image.access,
            "size": image.size,
            "ostype": image.ostype,
            "deploy": image.deploy,
            "resize": image.resize,
            "status": image.status,
            "tags": list(image.tags),
            "manifest": image.manifest,
            "manifest_active": image.manifest_active,
            "dc_bound_id": bound.id if bound else None,
            "changed": image.changed,
            "stream_version": image.stream_version,
        }

    # --- leases (``shared.db.locks``) ------------------------------------------------------------

    @staticmethod
    def image_lock(uuid: str) -> str:
        """The name of an image's lease lock (``image_lock_name``)."""
        return image_lock_name(uuid)

    def hold(self, lock: str, owner: str, lease_seconds: float) -> datetime | None:
        """Take or re-take the lease lock ``lock`` for ``owner``: the lease's new fencing token
        (``locks.acquire``), or None if another owner holds it."""
        return locks.take(self.conn, lock, owner, lease_seconds)

    def renew(self, lock: str, owner: str, lease_seconds: float, *, since: datetime | None = None) -> bool:
        """Extend ``owner``'s lease on ``lock`` only if ``owner`` still holds it (and, with
        ``since``, has not taken it again since that token)."""
        return locks.renew(self.conn, lock, owner, lease_seconds, since=since)

    def lease(self, lock: str) -> locks.LockHolder | None:
        """The current holder of ``lock`` and its token while the lease lasts, else None."""
        return locks.holder(self.conn, lock)

    def let_go(self, lock: str, owner: str) -> None:
        """Release ``lock`` if ``owner`` holds it."""
        locks.release(self.conn, lock, owner)

    def holder(self, lock: str) -> str | None:
        """The owner of ``lock`` while its lease lasts, else None."""
        found = locks.holder(self.conn, lock)
        return found.owner if found else None

    def attachments(self, uuid: str) -> set[str]:
        """The datacenters the image is attached to, read now (not the snapshot of an earlier
        statement: under READ COMMITTED, call it after taking the image's row lock)."""
        return set(self.conn.execute(
            select(_dcs.c.name).join(_image_dcs, _image_dcs.c.dc_id == _dcs.c.id).where(_image_dcs.c.image_uuid == uuid)
        ).scalars())

    def set_attachments(self, uuid: str, dc_names: list[str]) -> None:
        """Attach the image to exactly these datacenters (by name)."""
        wanted = set(dc_names)
        current = self.attachments(uuid)
        if wanted == current:
            return
        ids = dict(self.conn.execute(select(_dcs.c.name, _dcs.c.id).where(_dcs.c.name.in_(wanted | current))).all())
        removed = [ids[name] for name in current - wanted]
        if removed:
            self.conn.execute(
                delete(_image_dcs).where(_image_dcs.c.image_uuid == uuid, _image_dcs.c.dc_id.in_(removed))
            )
        for name in sorted(wanted - current):
            self.conn.execute(insert(_image_dcs).values(image_uuid=uuid, dc_id=ids[name]))


def storable(key: str, max_length: int) -> bool:
    """Whether ``key`` could be stored in a column of that length at all: anything else names
    nothing, and must not reach the database (PostgreSQL refuses NUL characters outright)."""
    return 0 < len(key) <= max_length and "\x00" not in key


@functools.lru_cache(maxsize=256)
def _update_statement(columns: frozenset[str]):
    """UPDATE of exactly these columns (and ``changed``), built once per column set."""
    names = sorted(columns | {"changed"})
    return update(_images).where(_images.c.uuid == bindparam("key")).values({n: bindparam(n) for n in names})


def user_record(row) -> UserRecord | None:
    if row is None:
        return None
    return UserRecord(
        id=row.id,
        username=row.username,
        is_superadmin=row.is_superadmin,
        api_access=row.api_access,
        is_active=row.is_active,
        default_dc_id=row.default_dc_id,
    )


def datacenter_record(row) -> DatacenterRecord | None:
    if row is None:
        return None
    return DatacenterRecord(id=row.id, name=row.name, is_default=row.is_default, image_limit=row.image_limit,
                            owner_id=row.owner_id, access=row.access)
