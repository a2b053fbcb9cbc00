"""Apply events to the read model. Decides nothing; only keeps the model equal to the event log.

Idempotent by construction, so no inbox row is needed: image events are applied in stream order
(version N only after N-1; an applied version is a no-op) and a task's first terminal state is
final. A gap is filled from the event store (events are committed there before they are ever
published), so delivery order does not matter. A task's terminal state is written only once the
image stream version it produced has been applied: that is what lets the gateway promise
read-your-writes.

The common case costs two statements per event: advancing the stream position (which also
row-locks it) and writing the change.

Node events (published by other systems) are not read model: they go to the ``nodes`` table
through ``shared.db.nodes``, where the newest ``changed_at`` per hostname wins, which makes them
idempotent and order-safe too. VM and VM snapshot events go to ``vms`` / ``vm_snapshots``
through ``shared.db.vms`` by the same rule. ``rebuild`` leaves those tables alone.
"""

from __future__ import annotations

import orjson
from sqlalchemy import Connection, and_, bindparam, delete, literal, select, update

from imagesvc.domain import images, tasks
from imagesvc.shared import contracts
from imagesvc.shared.contracts import (
    Envelope, Event, ImageDeleted, ImageImported, ImageUpdated, NodeRemoved, NodeUpdated, TaskEvent, TaskFailed,
    TaskProgress, TaskStarted, VmRemoved, VmSnapshotRemoved, VmSnapshotUpdated, VmUpdated,
)
from imagesvc.shared.db import events as store
from imagesvc.shared.db import nodes, vms
from imagesvc.shared.db.dialect import insert_ignore, prepared
from imagesvc.shared.db.models import ReadImage, ReadStream, ReadTask, utcnow
from imagesvc.shared.errors import OutOfOrder, PoisonMessage
from imagesvc.shared.handling import Notification
from imagesvc.shared.logging import get_logger

log = get_logger(__name__)

_images = ReadImage.__table__
_streams = ReadStream.__table__
_tasks = ReadTask.__table__

# Built once: statement construction is a measurable share of the projector's CPU.
_ADVANCE = (
    update(_streams)
    .where(_streams.c.stream_id == bindparam("s"), _streams.c.version == bindparam("previous"))
    .values(version=bindparam("v"))
    .returning(_streams.c.stream_id)
)
_READ_POSITION = select(_streams.c.version).where(_streams.c.stream_id == bindparam("s"))
_SET_POSITION = update(_streams).where(_streams.c.stream_id == bindparam("s")).values(version=bindparam("v"))
# A running task's latest progress; a late one (after the outcome) changes nothing.
_SET_PROGRESS = (
    update(_tasks)
    .where(_tasks.c.task_id == bindparam("t"), *[_tasks.c.status != literal(state) for state in sorted(tasks.TERMINAL)])
    .values(progress=bindparam("p", type_=_tasks.c.progress.type))
)


_IMAGE_COLUMNS = ("name", "created", "owner", "dc_bound", "access", "status", "doc", "dcs", "version")
_TASK_COLUMNS = ("status", "http_code", "result", "code", "command", "object_name", "user", "owner", "dc", "updated_at")


def _upsert_image(insert):
    return insert.on_conflict_do_update(index_elements=[_images.c.uuid],
                                        set_={c: insert.excluded[c] for c in _IMAGE_COLUMNS})


def _upsert_task(insert):
    # The first terminal state is final: a late "started" or a second outcome changes nothing.
    return insert.on_conflict_do_update(
        index_elements=[_tasks.c.task_id],
        set_={c: insert.excluded[c] for c in _TASK_COLUMNS},
        # Plain comparisons: NOT IN over a list is re-rendered on every execution.
        where=and_(*[_tasks.c.status != literal(state) for state in sorted(tasks.TERMINAL)]),
    ).returning(_tasks.c.task_id)


#: Other systems' facts about VMs: applied to ``vms`` / ``vm_snapshots``, newest ``changed_at`` wins.
_INVENTORY_EVENTS = (VmUpdated, VmRemoved, VmSnapshotUpdated, VmSnapshotRemoved)


def apply(conn: Connection, envelope: Envelope, event: Event, applied: dict[str, int] | None = None
          ) -> Notification | None:
    """Apply one event. ``applied`` (stream -> version) remembers what this transaction has
    already applied, so a task outcome that follows its image event in the same batch needs no
    read of the stream position."""
    applied = {} if applied is None else applied
    if isinstance(event, TaskProgress):
        conn.execute(_SET_PROGRESS, {"t": event.task_id, "p": {"done": event.done, "total": event.total}})
        return None  # informative: nobody waits for it
    if isinstance(event, (NodeUpdated, NodeRemoved)):
        _apply_node(conn, event)
        return None
    if isinstance(event, _INVENTORY_EVENTS):
        _apply_vm(conn, event)
        return None
    if isinstance(event, TaskEvent):
        return _apply_task(conn, event, applied, envelope.reply_to)
    if event.stream_position() is not None:
        _apply_in_order(conn, event)
        stream_id, version = event.stream_position()  # type: ignore[misc]
        applied[stream_id] = max(version, applied.get(stream_id, 0))
    return None


def _apply_node(conn: Connection, event: NodeUpdated | NodeRemoved) -> None:
    if isinstance(event, NodeUpdated):
        record = nodes.NodeRecord(hostname=event.hostname, status=event.status, uuid=event.uuid or None,
                                  address=event.address or None, changed_at=event.changed_time)
        # applied=False is normal, not an error: a redelivery, or a fact older than the stored one.
        log.info("node.updated", hostname=event.hostname, status=event.status, changed_at=event.changed_at,
                 applied=nodes.put(conn, record))
    else:
        log.info("node.removed", hostname=event.hostname, changed_at=event.changed_at,
                 applied=nodes.remove(conn, event.hostname, event.changed_time))


def _apply_vm(conn: Connection, event: VmUpdated | VmRemoved | VmSnapshotUpdated | VmSnapshotRemoved) -> None:
    # applied=False is normal, not an error: a redelivery, or a fact older than the stored one.
    if isinstance(event, VmUpdated):
        disks = tuple(vms.Disk(disk_id=d["disk_id"], size=d["size"], image_uuid=d.get("image_uuid"))
                      for d in event.disks)
        record = vms.VmRecord(uuid=event.uuid, hostname=event.hostname, dc=event.dc, node=event.node,
                              status=event.status, ostype=event.ostype, disks=disks, changed_at=event.changed_time,
                              replica_of=event.replica_of)
        log.info("vm.updated", uuid=event.uuid, hostname=event.hostname, status=event.status, replica_of=event.replica_of,
                 changed_at=event.changed_at, applied=vms.put_vm(conn, record))
    elif isinstance(event, VmRemoved):
        log.info("vm.removed", uuid=event.uuid, changed_at=event.changed_at,
                 applied=vms.remove_vm(conn, event.uuid, event.changed_time))
    elif isinstance(event, VmSnapshotUpdated):
        snapshot = vms.SnapshotRecord(vm_uuid=event.vm_uuid, disk_id=event.disk_id, name=event.name,
                                      status=event.status, changed_at=event.changed_time)
        log.info("vm.snapshot.updated", vm_uuid=event.vm_uuid, disk_id=event.disk_id, name=event.name,
                 status=event.status, changed_at=event.changed_at, applied=vms.put_snapshot(conn, snapshot))
    else:
        log.info("vm.snapshot.removed", vm_uuid=event.vm_uuid, disk_id=event.disk_id, name=event.name,
                 changed_at=event.changed_at,
                 applied=vms.remove_snapshot(conn, event.vm_uuid, event.disk_id, event.name, event.changed_time))


def _apply_in_order(conn: Connection, event: Event) -> None:
    stream_id, version = event.stream_position()  # type: ignore[misc]
    # Fast path: the next version of a known stream, or the first of a new one.
    if version == 1:
        in_order = insert_ignore(conn, _streams, {"stream_id": stream_id, "version": 1})
    else:
        in_order = conn.execute(_ADVANCE, {"s": stream_id, "previous": version - 1, "v": version}).first() is not None
    if in_order:
        _apply_change(conn, event)
        return
    position = _locked_position(conn, stream_id)
    if version <= position:
        return  # already applied (a redelivery, or caught up from the store)
    position = _catch_up(conn, stream_id, position, version - 1)
    if version > position + 1:
        raise OutOfOrder(f"{stream_id} is at {position}, event is {version}")
    _apply_change(conn, event)
    conn.execute(_SET_POSITION, {"s": stream_id, "v": version})


def _locked_position(conn: Connection, stream_id: str) -> int:
    """Current version of a stream, row-locked for this transaction (0 for a new stream)."""
    insert_ignore(conn, _streams, {"stream_id": stream_id, "version": 0})
    return conn.execute(_READ_POSITION.with_for_update(), {"s": stream_id}).scalar_one()


def _catch_up(conn: Connection, stream_id: str, position: int, up_to: int) -> int:
    """Apply the stream's stored events after ``position`` up to ``up_to``; returns the new position."""
    caught_up = position
    for body in store.stream_events(conn, stream_id, after=position, up_to=up_to):
        try:
            missing = contracts.parse(contracts.decode(body))
        except PoisonMessage as unreadable:
            # A stored event this projector cannot read (a newer producer's new message type):
            # the stream parks before it, never skipping it, until an upgraded projector can.
            log.error("projector.stream_parked", stream=stream_id, after=caught_up, reason=unreadable.reason)
            raise OutOfOrder(f"{stream_id} parked after v{caught_up}: {unreadable.reason}") from None
        _apply_change(conn, missing)  # type: ignore[arg-type]
        caught_up = missing.stream_position()[1]  # type: ignore[union-attr, index]
    if caught_up != position:
        conn.execute(_SET_POSITION, {"s": stream_id, "v": caught_up})
    return caught_up


def _apply_change(conn: Connection, event: Event) -> None:
    if isinstance(event, ImageDeleted):
        conn.execute(delete(_images).where(_images.c.uuid == event.uuid))
        return
    assert isinstance(event, (ImageImported, ImageUpdated))
    state = event.image
    row = read_model_row(event)
    if isinstance(event, ImageImported):
        # Names are unique on the write side; another uuid holding this name here is an image
        # whose deletion (another stream) has not been projected yet.
        conn.execute(delete(_images).where(_images.c.name == state["name"], _images.c.uuid != state["uuid"]))
    conn.execute(prepared(conn, _images, "upsert", _upsert_image), {"uuid": state["uuid"], **row})


def read_model_row(event: ImageImported | ImageUpdated) -> dict:
    """The ``rm_images`` row (without ``uuid``) an image's state event projects to."""
    state = event.image
    return {
        "name": state["name"],
        "created": images.parse_time(state["created"]),
        "owner": state["owner"],
        "dc_bound": state.get("dc_bound"),
        "access": state["access"],
        "status": state["status"],
        "doc": orjson.dumps(images.public_view_of_state(state)).decode(),
        "dcs": orjson.dumps(sorted(state.get("dcs") or [])).decode(),
        "version": event.version,
    }


def _apply_task(conn: Connection, event: TaskEvent, applied: dict[str, int],
                reply_to: str | None) -> Notification | None:
    if event.stream and event.stream_version and applied.get(event.stream, 0) < event.stream_version:
        position = conn.execute(_READ_POSITION, {"s": event.stream}).scalar() or 0
        if position < event.stream_version:
            # Its image change may be committing in another transaction: wait for it, then fill
            # whatever is still missing from the store.
            position = _catch_up(conn, event.stream, _locked_position(conn, event.stream), event.stream_version)
            if position < event.stream_version:
                raise OutOfOrder(f"task {event.task_id} waits for {event.stream} v{event.stream_version}")
    if isinstance(event, TaskStarted):
        status, http_code, result, code = tasks.STARTED, 201, None, None
    elif isinstance(event, TaskFailed):
        status, http_code, result, code = tasks.FAILURE, event.http_code, event.result, event.code
    else:
        status, http_code, result, code = tasks.SUCCESS, event.http_code, event.result, None  # type: ignore[attr-defined]
    row = {
        "status": status,
        "http_code": http_code,
        "result": result,
        "code": code,
        "command": event.command,
        "object_name": event.object_name,
        "user": event.user,
        "owner": event.owner,
        "dc": event.dc,
        "updated_at": utcnow(),
    }
    if conn.execute(prepared(conn, _tasks, "upsert", _upsert_task), {"task_id": event.task_id, **row}).first() is None:
        return None  # already final: nothing changed, nobody needs to be told
    if reply_to is None:
        return None  # nobody is waiting (the command did not come through a gateway)
    return Notification(task_id=event.task_id, status=status, http_code=http_code, result=result, reply_to=reply_to)


def rebuild(conn: Connection, *, batch: int = 1000) -> int:
    """Drop the read model and replay the whole event store into it, in commit order.

    Run with the projector stopped (a live projector would race the replay). The gateway's
    journal and the inventory (``nodes``, ``vms``, ``vm_snapshots``: other systems' facts, never in
    the event store) are not part of the read model and are left alone. Returns the number of events replayed.
    """
    for table in (_images, _tasks, _streams):
        conn.execute(delete(table))
    replayed, after = 0, 0
    while True:
        page = store.all_events(conn, after_id=after, limit=batch)
        if not page:
            return replayed
        applied: dict[str, int] = {}
        for event_id, body in page:
            envelope = contracts.decode(body)
            apply(conn, envelope, contracts.parse(envelope), applied)  # type: ignore[arg-type]
            after = event_id
        replayed += len(page)
