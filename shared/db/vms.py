"""VMs and their disk snapshots: what ``vm.*`` / ``vm.snapshot.*`` events and ``imagesvc admin vm``
say about them. Read by the deleter (an image used by a VM is not deleted, reference §5 428), by
``GET /api/image/<name>/vm/`` (§3.7) and by the snapshot-image command (§3.6). Not part of the read
model: other systems own these facts, so ``projector rebuild`` leaves them alone.

The discipline of ``shared.db.nodes``: every fact carries the time it was true at its source
(``changed_at``), and the newest fact about a VM (key: its uuid) or a snapshot (key: VM uuid, disk
id, name) wins whatever order facts arrive in. A removal is kept as a row with an empty status (a
tombstone, invisible to every reader here), so an older update cannot bring it back; a removal
wins a tie with an update of the same instant. Removing a VM removes its snapshots as of that
instant, and a snapshot fact older than its VM's removal is ignored.

Hostnames are unique among live VMs. Facts about *different* VMs may arrive out of order (a VM
renamed away from ``web`` after another was named ``web``): of two VMs claiming one hostname, the
newer fact gets it and the other VM is kept under its uuid as hostname until a newer fact about
it arrives. Its disks, DC and status stay exact meanwhile, which is what images-in-use needs.
UUIDs (VM and image) are stored in lower case.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Collection

from sqlalchemy import Connection, Text, bindparam, cast, func, select, update

from imagesvc.shared.contracts.events import is_uuid, snapshot_key_problem, snapshot_problem, vm_problem, vm_uuid_problem
from imagesvc.shared.db.dialect import insert_ignore, prepared
from imagesvc.shared.db.models import Vm, VmSnapshot
from imagesvc.shared.db.nodes import check_time

_vms = Vm.__table__
_snapshots = VmSnapshot.__table__

#: VM statuses in which a snapshot can be turned into an image (reference §3.6; else 423).
VM_OPERATIONAL_STATUSES = ("running", "stopped", "stopping", "frozen")
#: The one snapshot status an image can be made from (reference §3.6; else 417).
SNAPSHOT_OK = "ok"

#: The status of a removed VM's or snapshot's row. Never a real status: statuses are not empty.
_REMOVED = ""
#: The time of a row that exists only to be locked (older than any fact).
_NEVER = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: The first key of the transaction-scoped advisory locks that serialise claims of one hostname
#: (PostgreSQL); the second is the hostname's hash. An arbitrary constant of this module's own.
_HOSTNAME_LOCK_SPACE = 0x766D


@dataclass(frozen=True)
class Disk:
    disk_id: int
    #: MiB.
    size: int
    #: The image the disk was made from; None for a disk without one.
    image_uuid: str | None = None


@dataclass(frozen=True)
class VmRecord:
    uuid: str
    hostname: str
    #: The datacenter's name.
    dc: str
    #: The compute node's hostname.
    node: str
    status: str
    ostype: int
    disks: tuple[Disk, ...]
    changed_at: datetime
    #: The uuid of the VM this one is a replica of; None for an ordinary VM. A replica's disks
    #: count for an image in use; the list of an image's VMs leaves replicas out (reference §3.7).
    replica_of: str | None = None

    @property
    def operational(self) -> bool:
        return self.status in VM_OPERATIONAL_STATUSES

    def disk(self, disk_id: int) -> Disk | None:
        return next((disk for disk in self.disks if disk.disk_id == disk_id), None)


@dataclass(frozen=True)
class SnapshotRecord:
    vm_uuid: str
    disk_id: int
    name: str
    status: str
    changed_at: datetime

    @property
    def ok(self) -> bool:
        return self.status == SNAPSHOT_OK


# --- statements (built once) ---------------------------------------------------------------------

_VM_COLUMNS = (_vms.c.uuid, _vms.c.hostname, _vms.c.dc, _vms.c.node, _vms.c.status, _vms.c.ostype, _vms.c.disks,
               _vms.c.changed_at, _vms.c.replica_of)
_VM_LIVE = _vms.c.status != _REMOVED
_VM_BY_UUID = select(*_VM_COLUMNS).where(_vms.c.uuid == bindparam("uuid"), _VM_LIVE)
_VM_BY_HOSTNAME = select(*_VM_COLUMNS).where(_vms.c.hostname == bindparam("hostname"), _VM_LIVE)
_VM_LIST = select(*_VM_COLUMNS).where(_VM_LIVE).order_by(_vms.c.hostname)
_VM_LOCK = select(_vms.c.status, _vms.c.changed_at).where(_vms.c.uuid == bindparam("uuid")).with_for_update()
# A snapshot writer only needs its VM's removal not to change under it.
_VM_SHARE = (select(_vms.c.status, _vms.c.changed_at).where(_vms.c.uuid == bindparam("uuid"))
             .with_for_update(read=True))
_HOSTNAME_HOLDER = (select(_vms.c.uuid, _vms.c.changed_at)
                    .where(_vms.c.hostname == bindparam("hostname"), _VM_LIVE, _vms.c.uuid != bindparam("uuid"))
                    .with_for_update())
_CLAIM_LOCK = select(func.pg_advisory_xact_lock(_HOSTNAME_LOCK_SPACE, func.hashtext(bindparam("hostname"))))
_RELEASE_HOSTNAME = update(_vms).where(_vms.c.uuid == bindparam("holder")).values(hostname=bindparam("placeholder"))
_WRITE_VM = (update(_vms).where(_vms.c.uuid == bindparam("key"))
             .values(hostname=bindparam("hostname"), dc=bindparam("dc"), node=bindparam("node"),
                     status=bindparam("status"), ostype=bindparam("ostype"),
                     disks=bindparam("disks", type_=_vms.c.disks.type), changed_at=bindparam("changed_at"),
                     replica_of=bindparam("replica_of")))

_SNAPSHOT_COLUMNS = (_snapshots.c.vm_uuid, _snapshots.c.disk_id, _snapshots.c.name, _snapshots.c.status,
                     _snapshots.c.changed_at)
_SNAPSHOT_LIVE = _snapshots.c.status != _REMOVED
_SNAPSHOT_KEY = (_snapshots.c.vm_uuid == bindparam("vm_uuid"), _snapshots.c.disk_id == bindparam("disk_id"),
                 _snapshots.c.name == bindparam("name"))
_SNAPSHOT_GET = select(*_SNAPSHOT_COLUMNS).where(*_SNAPSHOT_KEY, _SNAPSHOT_LIVE)
_SNAPSHOT_LIST = select(*_SNAPSHOT_COLUMNS).where(_SNAPSHOT_LIVE).order_by(
    _snapshots.c.vm_uuid, _snapshots.c.disk_id, _snapshots.c.name)
_SNAPSHOT_LOCK = select(_snapshots.c.status, _snapshots.c.changed_at).where(*_SNAPSHOT_KEY).with_for_update()
_SNAPSHOT_TOMBSTONE = (update(_snapshots)
                       .where(_snapshots.c.vm_uuid == bindparam("of_vm"), _snapshots.c.disk_id == bindparam("of_disk"),
                              _snapshots.c.name == bindparam("of_name"))
                       .values(status=_REMOVED, changed_at=bindparam("removed_at")))
# A VM's removal ends its snapshots as of that instant (a snapshot fact newer than it stays).
_SNAPSHOTS_OF_REMOVED_VM = (update(_snapshots)
                            .where(_snapshots.c.vm_uuid == bindparam("of_vm"), _SNAPSHOT_LIVE,
                                   _snapshots.c.changed_at <= bindparam("removed_at"))
                            .values(status=_REMOVED, changed_at=bindparam("removed_at")))


# --- checks --------------------------------------------------------------------------------------


def check_vm(record: VmRecord) -> None:
    """Raise ValueError, with a sentence, if ``record`` could not be stored."""
    disks = record.disks if isinstance(record.disks, (tuple, list)) else None
    if disks is not None and not all(isinstance(disk, Disk) for disk in disks):
        raise ValueError("disks must be Disk records")
    problem = vm_problem(uuid=record.uuid, hostname=record.hostname, dc=record.dc, node=record.node,
                         status=record.status, ostype=record.ostype,
                         disks=None if disks is None else [(d.disk_id, d.size, d.image_uuid) for d in disks],
                         replica_of=record.replica_of)
    if problem:
        raise ValueError(problem)
    check_time(record.changed_at)


def check_snapshot(record: SnapshotRecord) -> None:
    """Raise ValueError, with a sentence, if ``record`` could not be stored."""
    problem = snapshot_problem(vm_uuid=record.vm_uuid, disk_id=record.disk_id, name=record.name,
                               status=record.status)
    if problem:
        raise ValueError(problem)
    check_time(record.changed_at)


# --- VMs -----------------------------------------------------------------------------------------


def get_vm(conn: Connection, hostname_or_uuid: str) -> VmRecord | None:
    """The live VM with this uuid (when the argument is a canonical UUID, in either case) or else
    this hostname; None for a VM never known or removed."""
    if is_uuid(hostname_or_uuid):
        row = conn.execute(_VM_BY_UUID, {"uuid": hostname_or_uuid.lower()}).first()
    elif isinstance(hostname_or_uuid, str) and len(hostname_or_uuid) <= 255:
        row = conn.execute(_VM_BY_HOSTNAME, {"hostname": hostname_or_uuid}).first()
    else:
        row = None
    return None if row is None else _vm(row)


def list_vms(conn: Connection) -> list[VmRecord]:
    """Every live VM, by hostname."""
    return [_vm(row) for row in conn.execute(_VM_LIST)]


def vms_using_image(conn: Connection, image_uuid: str, dcs: Collection[str], *,
                    replicas: bool = True) -> list[VmRecord]:
    """The live VMs in these datacenters with a disk made from ``image_uuid``, by hostname (the
    original's ``Image.is_used_by_vms`` over the image's attached DCs, which counts replicas: their
    disks hold the image too). ``replicas=False``: ordinary VMs only, as the original lists them."""
    if not dcs or not is_uuid(image_uuid):
        return []
    wanted = image_uuid.lower()
    # The JSON text narrows the rows in the database; the disks decide.
    query = (select(*_VM_COLUMNS)
             .where(_VM_LIVE, _vms.c.dc.in_(sorted(dcs)),
                    cast(_vms.c.disks, Text).contains(f'"{wanted}"', autoescape=True))
             .order_by(_vms.c.hostname))
    if not replicas:
        query = query.where(_vms.c.replica_of.is_(None))
    found = [_vm(row) for row in conn.execute(query)]
    return [vm for vm in found if any(disk.image_uuid == wanted for disk in vm.disks)]


def put_vm(conn: Connection, record: VmRecord) -> bool:
    """Store ``record`` unless a fact at least as new (state or removal) is stored for its uuid.

    True if it changed the stored state. The VM's row is locked for the rest of the transaction,
    so concurrent writers of one VM queue up and the newest fact wins; a hostname held by another
    live VM goes to whichever of the two facts is newer (module docstring), and claims of one
    hostname take turns. Raises ValueError for a record that could not be stored.
    """
    check_vm(record)
    record = _lowered(record)
    # The hostname's turn before the VM's row: a claimant then never waits for a hostname while
    # holding a row that another claimant of it must lock (a deadlock).
    _serialize_claims(conn, record.hostname)
    stored = _lock_vm(conn, record.uuid)
    if stored.changed_at >= record.changed_at:
        return False
    hostname = _claim_hostname(conn, record)
    conn.execute(_WRITE_VM, {
        "key": record.uuid, "hostname": hostname, "dc": record.dc, "node": record.node, "status": record.status,
        "ostype": record.ostype, "changed_at": record.changed_at, "replica_of": record.replica_of,
        "disks": [{"disk_id": d.disk_id, "size": d.size, "image_uuid": d.image_uuid} for d in record.disks]})
    return True


def remove_vm(conn: Connection, uuid: str, changed_at: datetime) -> bool:
    """Record that the VM was removed at ``changed_at`` (and its snapshots with it), unless a newer
    fact about it is stored.

    True if a live VM was removed by this call. The removal of an unknown VM is remembered too, so
    that an older update arriving later is ignored. Raises ValueError for a uuid or time that could
    not be stored.
    """
    problem = vm_uuid_problem(uuid)
    if problem:
        raise ValueError(problem)
    check_time(changed_at)
    uuid = uuid.lower()
    stored = _lock_vm(conn, uuid)
    if stored.changed_at > changed_at or (stored.status == _REMOVED and stored.changed_at == changed_at):
        return False
    conn.execute(_WRITE_VM, {"key": uuid, "hostname": uuid, "dc": "", "node": "", "status": _REMOVED, "ostype": 0,
                             "disks": [], "changed_at": changed_at, "replica_of": None})
    conn.execute(_SNAPSHOTS_OF_REMOVED_VM, {"of_vm": uuid, "removed_at": changed_at})
    return stored.status != _REMOVED


def _lock_vm(conn: Connection, uuid: str):
    """The VM's stored (status, changed_at), row-locked; a placeholder tombstone row is made first
    for a VM never seen, so that concurrent writers of a new VM queue up too."""
    insert_ignore(conn, _vms, _placeholder(uuid))
    return conn.execute(_VM_LOCK, {"uuid": uuid}).one()


def _placeholder(uuid: str) -> dict:
    return {"uuid": uuid, "hostname": uuid, "dc": "", "node": "", "status": _REMOVED, "ostype": 0, "disks": [],
            "changed_at": _NEVER}


def _serialize_claims(conn: Connection, hostname: str) -> None:
    """Make concurrent claims of ``hostname`` take turns until their transactions end, so each
    sees the one before it committed (a unique-index conflict would abort the transaction instead).
    Only claims need it: giving a hostname up (a rename, a removal) takes nobody's. SQLite's writers
    take turns anyway."""
    if conn.dialect.name == "postgresql":
        conn.execute(_CLAIM_LOCK, {"hostname": hostname})


def _claim_hostname(conn: Connection, record: VmRecord) -> str:
    """The hostname ``record``'s VM is stored under: its own, unless another live VM holds it by a
    fact at least as new, in which case the VM waits under its uuid. An older holder is moved to
    its uuid (its claim is stale: at our instant the name was ours)."""
    holder = conn.execute(_HOSTNAME_HOLDER, {"hostname": record.hostname, "uuid": record.uuid}).first()
    if holder is None:
        return record.hostname
    if holder.changed_at >= record.changed_at:
        return record.uuid
    conn.execute(_RELEASE_HOSTNAME, {"holder": holder.uuid, "placeholder": holder.uuid})
    return record.hostname


def _lowered(record: VmRecord) -> VmRecord:
    disks = tuple(disk if disk.image_uuid is None else dataclasses.replace(disk, image_uuid=disk.image_uuid.lower())
                  for disk in record.disks)
    return dataclasses.replace(record, uuid=record.uuid.lower(), disks=disks,
                               replica_of=record.replica_of.lower() if record.replica_of else None)


def _vm(row) -> VmRecord:
    disks = tuple(Disk(disk_id=d["disk_id"], size=d["size"], image_uuid=d.get("image_uuid")) for d in row.disks or ())
    return VmRecord(uuid=row.uuid, hostname=row.hostname, dc=row.dc, node=row.node, status=row.status,
                    ostype=row.ostype, disks=disks, changed_at=row.changed_at, replica_of=row.replica_of)


# --- snapshots -----------------------------------------------------------------------------------


def get_snapshot(conn: Connection, vm_uuid: str, disk_id: int, name: str) -> SnapshotRecord | None:
    """The live snapshot with this key, or None. (Whether its VM is live is ``get_vm``'s question.)"""
    if snapshot_key_problem(vm_uuid, disk_id, name):
        return None
    row = conn.execute(_SNAPSHOT_GET, {"vm_uuid": vm_uuid.lower(), "disk_id": disk_id, "name": name}).first()
    return None if row is None else SnapshotRecord(*row)


def list_snapshots(conn: Connection, vm_uuid: str | None = None) -> list[SnapshotRecord]:
    """Every live snapshot (of one VM, if ``vm_uuid`` is given), by VM uuid, disk id and name."""
    query = _SNAPSHOT_LIST
    if vm_uuid is not None:
        if not is_uuid(vm_uuid):
            return []
        query = query.where(_snapshots.c.vm_uuid == vm_uuid.lower())
    return [SnapshotRecord(*row) for row in conn.execute(query)]


def put_snapshot(conn: Connection, record: SnapshotRecord) -> bool:
    """Store ``record`` unless a fact at least as new is stored for its key, or its VM was removed
    at or after ``record.changed_at``. True if it changed the stored state. Raises ValueError for a
    record that could not be stored."""
    check_snapshot(record)
    record = dataclasses.replace(record, vm_uuid=record.vm_uuid.lower())
    if _vm_removed_since(conn, record.vm_uuid, record.changed_at):
        return False
    row = {"vm_uuid": record.vm_uuid, "disk_id": record.disk_id, "name": record.name, "status": record.status,
           "changed_at": record.changed_at}
    return conn.execute(prepared(conn, _snapshots, "newer-fact-wins", _newer_snapshot_wins), row).first() is not None


def remove_snapshot(conn: Connection, vm_uuid: str, disk_id: int, name: str, changed_at: datetime) -> bool:
    """Record that the snapshot was removed at ``changed_at``, unless a newer fact is stored.

    True if a live snapshot was removed by this call; the removal of an unknown snapshot is
    remembered too. Raises ValueError for a key or time that could not be stored.
    """
    problem = snapshot_key_problem(vm_uuid, disk_id, name)
    if problem:
        raise ValueError(problem)
    check_time(changed_at)
    key = {"vm_uuid": vm_uuid.lower(), "disk_id": disk_id, "name": name}
    insert_ignore(conn, _snapshots, {**key, "status": _REMOVED, "changed_at": _NEVER})
    stored = conn.execute(_SNAPSHOT_LOCK, key).one()
    if stored.changed_at > changed_at or (stored.status == _REMOVED and stored.changed_at == changed_at):
        return False
    conn.execute(_SNAPSHOT_TOMBSTONE, {"of_vm": key["vm_uuid"], "of_disk": disk_id, "of_name": name,
                                       "removed_at": changed_at})
    return stored.status != _REMOVED


def _vm_removed_since(conn: Connection, vm_uuid: str, changed_at: datetime) -> bool:
    """Whether the VM's removal is as new as ``changed_at``. Holds a share lock on the VM's row
    (made if missing), so a concurrent ``remove_vm`` cannot slip between this and the write."""
    insert_ignore(conn, _vms, _placeholder(vm_uuid))
    vm = conn.execute(_VM_SHARE, {"uuid": vm_uuid}).one()
    return vm.status == _REMOVED and vm.changed_at >= changed_at


def _newer_snapshot_wins(insert):
    return insert.on_conflict_do_update(
        index_elements=[_snapshots.c.vm_uuid, _snapshots.c.disk_id, _snapshots.c.name],
        set_={c: insert.excluded[c] for c in ("status", "changed_at")},
        where=_snapshots.c.changed_at < insert.excluded.changed_at,
    ).returning(_snapshots.c.vm_uuid)
