"""SQL access to the write-side catalogue: images, their datacenters, users.

Implements ``domain.images.Catalogue`` (reads) plus the writes the consumers make. Every method
runs on the caller's connection, inside the caller's transaction.
"""

from __future__ import annotations

from sqlalchemy import Connection, delete, func, insert, select, update

from shared.db.models import Datacenter, Image, ImageDatacenter, User
from shared.db.records import DatacenterRecord, ImageRecord, UserRecord

_images = Image.__table__
_image_dcs = ImageDatacenter.__table__
_users = User.__table__
_dcs = Datacenter.__table__


class SqlCatalogue:
    def __init__(self, conn: Connection):
        self.conn = conn

    # --- reads ---------------------------------------------------------------------------------

    def image_by_name(self, name: str, *, for_update: bool = False) -> ImageRecord | None:
        return self._image(_images.c.name == name, for_update)

    def image_by_uuid(self, uuid: str, *, for_update: bool = False) -> ImageRecord | None:
        return self._image(_images.c.uuid == uuid, for_update)

    def _image(self, condition, for_update: bool) -> ImageRecord | None:
        bound = _dcs.alias("bound")
        query = (
            select(_images, _users.c.username.label("owner_name"), bound.c.name.label("bound_name"))
            .join(_users, _users.c.id == _images.c.owner_id)
            .outerjoin(bound, bound.c.id == _images.c.dc_bound_id)
            .where(condition)
        )
        if for_update:
            query = query.with_for_update(of=_images)
        row = self.conn.execute(query).first()
        if row is None:
            return None
        attached = self.conn.execute(
            select(_dcs.c.name)
            .join(_image_dcs, _image_dcs.c.dc_id == _dcs.c.id)
            .where(_image_dcs.c.image_uuid == row.uuid)
            .order_by(_dcs.c.name)
        ).scalars()
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
            dcs=list(attached),
            manifest=dict(row.manifest or {}),
            manifest_active=dict(row.manifest_active or {}),
        )

    def name_exists(self, name: str) -> bool:
        return self.conn.execute(select(_images.c.uuid).where(_images.c.name == name)).first() is not None

    def alias_taken(self, alias: str, version: str, *, exclude_uuid: str | None = None) -> bool:
        query = select(_images.c.uuid).where(func.lower(_images.c.alias) == alias.lower(), _images.c.version == version)
        if exclude_uuid is not None:
            query = query.where(_images.c.uuid != exclude_uuid)
        return self.conn.execute(query.limit(1)).first() is not None

    def count_bound(self, dc_name: str) -> int:
        return self.conn.execute(
            select(func.count()).select_from(_images.join(_dcs, _dcs.c.id == _images.c.dc_bound_id)).where(
                _dcs.c.name == dc_name
            )
        ).scalar_one()

    def user(self, username: str) -> UserRecord | None:
        row = self.conn.execute(select(_users).where(_users.c.username == username)).first()
        return user_record(row)

    def user_by_id(self, user_id: int) -> UserRecord | None:
        return user_record(self.conn.execute(select(_users).where(_users.c.id == user_id)).first())

    def datacenter(self, name: str) -> DatacenterRecord | None:
        return datacenter_record(self.conn.execute(select(_dcs).where(_dcs.c.name == name)).first())

    def default_datacenter(self) -> DatacenterRecord:
        row = self.conn.execute(select(_dcs).where(_dcs.c.is_default.is_(True))).first()
        if row is None:
            raise LookupError("no default datacenter: run `imagesvc db upgrade`")
        return datacenter_record(row)  # type: ignore[return-value]

    # --- writes --------------------------------------------------------------------------------

    def insert_image(self, image: ImageRecord) -> None:
        self.conn.execute(insert(_images).values(**self._columns(image), uuid=image.uuid, created=image.created))
        self._set_attachments(image.uuid, image.dcs)

    def update_image(self, image: ImageRecord) -> None:
        self.conn.execute(update(_images).where(_images.c.uuid == image.uuid).values(**self._columns(image)))
        self._set_attachments(image.uuid, image.dcs)

    def delete_image(self, uuid: str) -> None:
        self.conn.execute(delete(_image_dcs).where(_image_dcs.c.image_uuid == uuid))
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
        }

    def _set_attachments(self, uuid: str, dc_names: list[str]) -> None:
        wanted = set(dc_names)
        current = set(
            self.conn.execute(
                select(_dcs.c.name).join(_image_dcs, _image_dcs.c.dc_id == _dcs.c.id).where(
                    _image_dcs.c.image_uuid == uuid
                )
            ).scalars()
        )
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


def user_record(row) -> UserRecord | None:
    if row is None:
        return None
    return UserRecord(
        id=row.id,
        username=row.username,
        is_superadmin=row.is_superadmin,
        api_access=row.api_access,
        is_active=row.is_active,
    )


def datacenter_record(row) -> DatacenterRecord | None:
    if row is None:
        return None
    return DatacenterRecord(id=row.id, name=row.name, is_default=row.is_default, image_limit=row.image_limit)
