"""Database tables: the write side (owned by the consumers), the gateway's command journal,
accounts and datacenters, and the read model (owned by the projector).

The read-model tables are prefixed ``rm_``: they hold nothing that cannot be rebuilt from the
``events`` table, which doubles as the outbox (a row is published once, then kept) and as the
consumers' inbox (a handled command is one with a terminal task event caused by it).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from imagesvc.shared.contracts import TERMINAL_TASK_EVENTS

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """A timestamp that is always timezone-aware UTC in Python, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


# SQLite only auto-increments INTEGER PRIMARY KEY columns.
AutoBigInt = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


metadata = Base.metadata


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# --- accounts and datacenters ---------------------------------------------------------------


class Datacenter(Base):
    __tablename__ = "datacenters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(16), unique=True)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    #: VMS_IMAGE_LIMIT of the original: most images bound to this DC (NULL = unlimited).
    image_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The DC owner is an Admin of it (reference §4.2).
    owner_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL", use_alter=True), nullable=True)
    #: 1 public (visible to every user), 3 private (reference §4.3 "visible to the user").
    access: Mapped[int] = mapped_column(SmallInteger, default=3, server_default=text("3"))

    __table_args__ = (
        Index(
            "uq_datacenters_one_default",
            "is_default",
            unique=True,
            sqlite_where=text("is_default"),
            postgresql_where=text("is_default"),
        ),
    )


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(150), unique=True)
    #: sha256 hex digest of the API key; the key itself is never stored.
    api_key_digest: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    is_superadmin: Mapped[bool] = mapped_column(Boolean, default=False)
    api_access: Mapped[bool] = mapped_column(Boolean, default=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    default_dc_id: Mapped[int | None] = mapped_column(ForeignKey("datacenters.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuthToken(Base):
    """A login token (``POST /api/accounts/login/``), stored as its SHA-256 digest only."""

    __tablename__ = "auth_tokens"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Role(Base):
    """A group of users holding permissions (``admin``, ``image_admin``, ``image_import_admin``)
    in the datacenters it is attached to (reference §4.2)."""

    __tablename__ = "roles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    permissions: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RoleMember(Base):
    __tablename__ = "role_members"

    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)


class RoleDatacenter(Base):
    """A role attached to a datacenter: its members hold its permissions there."""

    __tablename__ = "role_dcs"

    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True)
    dc_id: Mapped[int] = mapped_column(ForeignKey("datacenters.id", ondelete="CASCADE"), primary_key=True)


# --- write side ------------------------------------------------------------------------------


class Image(Base):
    __tablename__ = "images"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    alias: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(16))
    desc: Mapped[str] = mapped_column(String(128), default="")
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    access: Mapped[int] = mapped_column(SmallInteger)
    size: Mapped[int] = mapped_column(Integer)
    ostype: Mapped[int] = mapped_column(SmallInteger)
    deploy: Mapped[bool] = mapped_column(Boolean)
    resize: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[int] = mapped_column(SmallInteger)
    tags: Mapped[list[str]] = mapped_column(JSON)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    manifest_active: Mapped[dict[str, Any]] = mapped_column(JSON)
    dc_bound_id: Mapped[int | None] = mapped_column(ForeignKey("datacenters.id", ondelete="SET NULL"), nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime)
    changed: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Head of the image's event stream (``image:<uuid>``): its next event is version + 1. Kept on
    #: the row so that the writer, which holds the row lock anyway, needs no second row to lock.
    #: A deleted image's head lives on in the event store (``events.stream_head``).
    stream_version: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class ImageDatacenter(Base):
    """An image attached to (usable in) a datacenter."""

    __tablename__ = "image_dcs"

    image_uuid: Mapped[str] = mapped_column(ForeignKey("images.uuid", ondelete="CASCADE"), primary_key=True)
    dc_id: Mapped[int] = mapped_column(ForeignKey("datacenters.id", ondelete="CASCADE"), primary_key=True)


#: The terminal task events: exactly one per handled command (``uq_events_handled``).
_TERMINAL = text("type IN ({})".format(", ".join(f"'{t}'" for t in sorted(TERMINAL_TASK_EVENTS))))


class StoredEvent(Base):
    """Outbox and event store: written in the producing transaction, published, then kept."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(AutoBigInt, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(36), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    stream_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    stream_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    correlation_id: Mapped[str] = mapped_column(String(128), index=True)
    #: Id of the message whose handling produced the event (a redelivery republishes its events).
    causation_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The broker user that published it (RabbitMQ vouches for it); null on memory:// and before.
    published_by: Mapped[str | None] = mapped_column(String(150), nullable=True)

    __table_args__ = (
        Index("uq_events_stream_version", "stream_id", "stream_version", unique=True),
        # The inbox: a command's handling ends in one terminal event caused by it, so a second
        # handling of the same message cannot commit (it is recognised as a duplicate).
        Index("uq_events_handled", "causation_id", unique=True, sqlite_where=_TERMINAL, postgresql_where=_TERMINAL),
        # A task ends once: a second command reusing a task id cannot give it a second outcome.
        Index("uq_events_task_outcome", "correlation_id", unique=True, sqlite_where=_TERMINAL,
              postgresql_where=_TERMINAL),
        Index(
            "ix_events_unpublished",
            "id",
            sqlite_where=text("published_at IS NULL"),
            postgresql_where=text("published_at IS NULL"),
        ),
    )


class Lock(Base):
    """Lease locks (one row per held lock); see ``shared.db.locks``."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeploymentSetting(Base):
    """What every process of one deployment must agree on (``shared.deployment``): recorded by the
    first process that ran with it, checked by every process as it starts."""

    __tablename__ = "deployment"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(1024))
    #: Which process recorded it, e.g. ``importer@host-1``.
    recorded_by: Mapped[str] = mapped_column(String(255))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Node(Base):
    """A compute node (reference §9.4), as the last ``node.*`` event or ``imagesvc admin node``
    described it. Not part of the read model: other systems own these facts."""

    __tablename__ = "nodes"

    hostname: Mapped[str] = mapped_column(String(255), primary_key=True)
    uuid: Mapped[str | None] = mapped_column(String(36), nullable=True)
    #: online, maintenance, unreachable, unlicensed, ... (only ``online`` is operational). Empty
    #: for a removed node, whose row stays so that an older fact cannot revive it: read the table
    #: through ``shared.db.nodes``, which leaves such rows out.
    status: Mapped[str] = mapped_column(String(32))
    address: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: When the fact was true at its source: an older fact never overwrites a newer one.
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)


#: A row of ``vms`` / ``vm_snapshots`` that records a removal (a tombstone) has an empty status.
_LIVE = text("status <> ''")


class Vm(Base):
    """A VM (reference §2.1 ``is_used_by_vms``, §3.6, §3.7), as the last ``vm.*`` event or
    ``imagesvc admin vm`` described it. Not part of the read model: other systems own these facts.
    Read and write it through ``shared.db.vms``, which leaves removed VMs (tombstones) out."""

    __tablename__ = "vms"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    #: Unique among live VMs; a tombstone's (and a VM whose name a newer fact took) is its uuid.
    hostname: Mapped[str] = mapped_column(String(255))
    #: The datacenter's name (not a foreign key: the facts may name a datacenter before it exists here).
    dc: Mapped[str] = mapped_column(String(16))
    #: The compute node's hostname.
    node: Mapped[str] = mapped_column(String(255))
    #: running, stopped, stopping, frozen (the operational ones), ...; empty for a removed VM.
    status: Mapped[str] = mapped_column(String(32))
    ostype: Mapped[int] = mapped_column(SmallInteger)
    #: ``[{"disk_id": 1, "size": 10240, "image_uuid": "..." | null}, ...]``
    disks: Mapped[Any] = mapped_column(JSON)
    #: When the fact was true at its source: an older fact never overwrites a newer one.
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The uuid of the VM this one replicates (a standby copy); null for an ordinary VM.
    replica_of: Mapped[str | None] = mapped_column(String(36), nullable=True)

    __table_args__ = (
        Index("uq_vms_live_hostname", "hostname", unique=True, sqlite_where=_LIVE, postgresql_where=_LIVE),
        Index("ix_vms_dc", "dc"),
    )


class VmSnapshot(Base):
    """A VM disk snapshot, as the last ``vm.snapshot.*`` event or ``imagesvc admin vm snapshot``
    described it (tombstones as in ``vms``)."""

    __tablename__ = "vm_snapshots"

    vm_uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    disk_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: ok (usable), pending, ...; empty for a removed snapshot.
    status: Mapped[str] = mapped_column(String(32))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ImageRepository(Base):
    """A remote image repository's last refresh (reference §2.3, §3.8): the original cached it."""

    __tablename__ = "image_repositories"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(String(1024))
    last_update: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    image_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: The repository's image manifests, newest first.
    images: Mapped[Any] = mapped_column(JSON, nullable=True)


# --- gateway journal -------------------------------------------------------------------------


class TaskOwner(Base):
    """Which command a task id belongs to (bound by the first command handled under it, so that
    no other command can act on the task, end it or take its lease over), and which delivery of
    that command is handling it now (``shared.db.task_owners``)."""

    __tablename__ = "task_owners"

    task_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(128))
    #: The user the command acted for (as the broker vouched for it), and its type.
    actor: Mapped[str | None] = mapped_column(String(150), nullable=True)
    command: Mapped[str] = mapped_column(String(64))
    bound_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The delivery handling the command now (its random token), until ``claim_expires_at``
    #: unless renewed; null once released.
    claim: Mapped[str | None] = mapped_column(String(36), nullable=True)
    claim_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Deliveries that claimed it so far (1: the first; more: later ones).
    claims: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: Claims taken over after they lapsed unreleased: runs of the handler whose process died.
    lapses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class SubmittedCommand(Base):
    """The gateway's command journal: every command it answered 201 (and every command that
    carried an ``Idempotency-Key``), written once the broker confirmed it, so a task is known from
    the moment it is answered, even before any consumer has seen it. It keeps the command as it
    was published (envelope and routing key): ``imagesvc serve`` publishes again, at its next
    start, the ones whose task has no outcome (its in-memory broker lost them)."""

    __tablename__ = "submitted_commands"

    message_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    object_name: Mapped[str] = mapped_column(String(64))
    user: Mapped[str] = mapped_column(String(150))
    owner: Mapped[str | None] = mapped_column(String(150), nullable=True)
    dc: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The routing key and the encoded envelope it was published with (NULL in rows journaled
    #: before the journal kept them).
    routing_key: Mapped[str | None] = mapped_column(String(320), nullable=True)
    body: Mapped[str | None] = mapped_column(Text, nullable=True)


# --- read model ------------------------------------------------------------------------------


class ReadImage(Base):
    __tablename__ = "rm_images"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime)
    owner: Mapped[str] = mapped_column(String(150))
    dc_bound: Mapped[str | None] = mapped_column(String(16), nullable=True)
    access: Mapped[int] = mapped_column(SmallInteger)
    status: Mapped[int] = mapped_column(SmallInteger)
    #: The image's public JSON object (without ``dcs``), encoded once by the projector.
    doc: Mapped[str] = mapped_column(Text)
    #: JSON list of attached datacenter names.
    dcs: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer)

    # The list orders, each ending at the unique name (keyset pages start at an index position):
    # ``created, name`` scanned forwards or backwards, and ``created, name DESC`` for ``-created``
    # (``created DESC, name ASC``, the tie-breaker ascending); ``name`` has its unique index. Then
    # the selective filters, name-ordered: owner, bound datacenter (what a non-SuperAdmin sees),
    # status (pending images are few).
    __table_args__ = (
        Index("ix_rm_images_created_name", "created", "name"),
        Index("ix_rm_images_owner_name", "owner", "name"),
        Index("ix_rm_images_dc_bound_name", "dc_bound", "name"),
        Index("ix_rm_images_status_name", "status", "name"),
    )


Index("ix_rm_images_created_name_desc", ReadImage.created, ReadImage.name.desc())


class ReadStream(Base):
    """The projector's position in each stream (kept after a delete, so stale events stay dead)."""

    __tablename__ = "rm_streams"

    stream_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class ReadTask(Base):
    __tablename__ = "rm_tasks"

    task_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    http_code: Mapped[int] = mapped_column(Integer)
    result: Mapped[Any] = mapped_column(JSON, nullable=True)
    code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    command: Mapped[str] = mapped_column(String(64))
    object_name: Mapped[str] = mapped_column(String(64))
    user: Mapped[str | None] = mapped_column(String(150), nullable=True)
    owner: Mapped[str | None] = mapped_column(String(150), nullable=True)
    dc: Mapped[str | None] = mapped_column(String(16), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: A running task's progress, e.g. ``{"done": 1048576, "total": 1073741824}`` (bytes).
    progress: Mapped[Any] = mapped_column(JSON, nullable=True)
