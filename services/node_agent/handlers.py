"""Decide an ``image.snapshot`` on the node that runs the VM (reference §3.6, §7.5, §9.2 ``create``).

Every check of ``domain.snapshots`` again, authoritatively, in the transaction that records the
image PENDING (bound to and attached to the VM's datacenter) under its lease lock and the
snapshot's (a second image from the same snapshot: 417); ``task.started`` goes out (201). Then the
snapshot is streamed gzip-compressed into the image store (``export``), the manifest gets
``files[0]`` = sha1, size, compression, and the image becomes OK; any failure removes the row and
the data, and frees the snapshot. A redelivered command finds its own pending image (its lease
names this task) and exports again; a given-up one is undone (``abandon_snapshot_image``).
"""

from __future__ import annotations

import uuid as uuidlib
from datetime import datetime

from imagesvc.domain import creation, fields, images, manifest, policy, snapshots
from imagesvc.services.node_agent.export import SnapshotRef, export_snapshot
from imagesvc.shared.contracts import CreateImageFromSnapshot, ImageImported, TaskStarted, image_stream
from imagesvc.shared.crash import crash_point
from imagesvc.shared.db import nodes, vms
from imagesvc.shared.db.models import utcnow
from imagesvc.shared.db.records import ImageRecord
from imagesvc.shared.errors import CommandFailed, Invalid, Refused
from imagesvc.shared.handling import CommandContext
from imagesvc.shared.logging import get_logger
from imagesvc.shared.snapshots import SnapshotDriver
from imagesvc.shared.store import StoreError
from imagesvc.shared.store.server import ImageServer
from imagesvc.shared.store.transfer import RC_MANIFEST_WRITE, TransferFailed

log = get_logger(__name__)


class _Inventory:
    """``domain.snapshots.Inventory`` on the handler's transaction."""

    def __init__(self, tx, server: ImageServer | None, task_id: str):
        self._tx = tx
        self._server = server
        self._task_id = task_id

    def vm(self, hostname_or_uuid: str):
        return vms.get_vm(self._tx.conn, hostname_or_uuid)

    def node_operational(self, hostname: str) -> bool:
        found = nodes.get(self._tx.conn, hostname)
        return found is not None and found.operational

    def snapshot(self, vm_uuid: str, disk_id: int, name: str):
        return vms.get_snapshot(self._tx.conn, vm_uuid, disk_id, name)

    def snapshot_held_by_another(self, vm_uuid: str, disk_id: int, name: str) -> bool:
        holder = self._tx.catalogue.holder(snapshots.snapshot_lock_name(vm_uuid, disk_id, name))
        return holder not in (None, self._task_id)

    def image_name_exists(self, name: str) -> bool:
        return self._tx.catalogue.name_exists(name)

    def image_server_unavailable(self) -> str | None:
        if self._server is None:
            return "store"  # snapshot images need an image server (reference §3.6)
        return self._server.unavailable(self._tx.conn)


def create_image_from_snapshot(command: CreateImageFromSnapshot, ctx: CommandContext, *, node: str,
                               driver: SnapshotDriver, server: ImageServer | None, level: int,
                               lease_seconds: float | None = None) -> None:
    with ctx.reading() as catalogue:
        mine = catalogue.image_by_name(command.name)
    if server is not None and mine is not None and mine.status == images.STATUS_PENDING \
            and mine.lock_owner == ctx.task_id:
        # An earlier delivery was interrupted (it may even still be running): take the work over.
        # Never deferred for the user's cap: its image's lease would run out while it waited.
        token = creation.take_over(ctx, mine.uuid, lease_seconds)
        _export(ctx, command, mine, node=node, driver=driver, server=server, level=level, lease_seconds=lease_seconds,
                since=token)
        return
    payload = command.to_payload()
    with ctx.writing() as tx:
        catalogue = tx.catalogue
        catalogue.lock_namespace()  # the name, the alias and the DC's limit are checked, then claimed
        access = policy.actor_access(catalogue, ctx.actor)
        request_dc = ctx.actor.dc if ctx.actor and ctx.actor.dc else catalogue.default_datacenter().name
        plan = snapshots.check(_Inventory(tx, server, ctx.task_id), access=access, request_dc=request_dc,
                               vm_ref=command.vm, snapname=command.snapshot, name=command.name, data=payload)
        if plan.vm.node != node:
            # The VM moved after the gateway published: its snapshot is not on this node.
            raise Refused(423, images.NODE_NOT_OPERATIONAL, code="vm_on_another_node")
        values, errors = plan.values, {}
        owner = images.check_owner(catalogue, values, errors) or access.user
        dc = catalogue.datacenter(plan.vm.dc)
        images.check_alias_and_limit(catalogue, alias=values["alias"], version=values["version"], bound_dc=dc,
                                     exclude_uuid=None, errors=errors, count_limit=True)
        if errors:
            raise Invalid(errors)
        assert server is not None and owner is not None and dc is not None
        now = utcnow()
        image_uuid = str(uuidlib.uuid4())
        size, ostype = plan.disk.size, plan.vm.ostype
        access_level = values.get("access", fields.ACCESS_PRIVATE)
        built = manifest.build({}, uuid=image_uuid, alias=values["alias"], version=values["version"],
                               desc=values.get("desc", ""), access=access_level, ostype=ostype, size=size,
                               tags=values.get("tags", []), resize=values.get("resize", False),
                               deploy=values.get("deploy", False), now=now)
        image = ImageRecord(
            uuid=image_uuid, name=command.name, alias=values["alias"], version=values["version"],
            desc=values.get("desc", ""), owner=owner.username, access=access_level, size=size, ostype=ostype,
            deploy=values.get("deploy", False), resize=values.get("resize", False), status=images.STATUS_PENDING,
            tags=values.get("tags", []), created=now, changed=now, dc_bound=dc.name, dcs=[dc.name],
            manifest=built, manifest_active={}, stream_version=tx.stream_head(image_stream(image_uuid)) + 1,
        )
        catalogue.insert_image(image)
        snapshot_lock = snapshots.snapshot_lock_name(plan.vm.uuid, plan.disk.disk_id, command.snapshot)
        lease = lease_seconds or creation.CREATION_LEASE_SECONDS
        if not catalogue.hold(snapshot_lock, ctx.task_id, lease):
            raise Refused(417, snapshots.SNAPSHOT_NOT_OK, code="snapshot_status_not_ok")
        # Every refusal came first (a snapshot in use is 417 now, not an image later); a deferred
        # command rolls this transaction back.
        ctx.begin_long_work()
        token = catalogue.hold(catalogue.image_lock(image_uuid), ctx.task_id, lease)
        tx.emit([ImageImported(image=images.to_state(image), version=image.stream_version),
                 TaskStarted(**ctx.task_fields(owner=image.owner, dc=dc.name))])
    ctx.publish_pending()  # the client's 201 comes now, not after the export
    _export(ctx, command, image.with_changes(lock_owner=ctx.task_id), node=node, driver=driver, server=server,
            level=level, vm_uuid=plan.vm.uuid, disk_id=plan.disk.disk_id, lease_seconds=lease_seconds, since=token)


def _export(ctx: CommandContext, command: CreateImageFromSnapshot, image: ImageRecord, *, node: str,
            driver: SnapshotDriver, server: ImageServer, level: int, vm_uuid: str | None = None,
            disk_id: int | None = None, lease_seconds: float | None = None, since: datetime | None = None) -> None:
    """``since``: the token of the image lease this delivery holds (see ``creation.take_over``)."""
    vm_uuid = vm_uuid or command.vm
    disk_id = disk_id or command.disk_id
    snapshot_lock = snapshots.snapshot_lock_name(vm_uuid, disk_id, command.snapshot)
    task_dc = image.dc_bound or ""
    report = creation.progress_reporter(ctx, image, task_dc, extra_locks=[snapshot_lock], lease_seconds=lease_seconds,
                                        since=since)
    try:
        # A partial file of this delivery's own (a superseded one may still be writing).
        attempt = f"{ctx.task_id}.{uuidlib.uuid4().hex[:8]}"
        exported = export_snapshot(driver, SnapshotRef(vm_uuid, disk_id, command.snapshot), server.store, image.uuid,
                                   attempt, report, level=level)
        crash_point("after_export")
        final_manifest = {**image.manifest, "files": [exported.file_description()]}
        try:
            server.store.write_manifest(image.uuid, final_manifest)
        except StoreError as exc:
            raise TransferFailed(RC_MANIFEST_WRITE, str(exc), exc.code) from None
        crash_point("after_store")
    except TransferFailed as failure:
        if since is None or creation.owns_data(ctx, image.uuid, since):  # else another delivery's data
            _discard_data(server, image.uuid)
        creation.undo(ctx, image, creation.failure_of(failure.result(), failure.code), task_dc=task_dc,
                      extra_locks=[snapshot_lock], since=since)
        return
    creation.complete(ctx, image, final_manifest, task_dc=task_dc, extra_locks=[snapshot_lock], since=since,
                      message=(f"Successfully created image {image.name} "
                               f"(transferred {exported.size} bytes in {round(exported.seconds)} seconds)"))


def _discard_data(server: ImageServer, uuid: str) -> None:
    try:
        server.store.delete(uuid)
    except StoreError as exc:  # the row goes anyway; nothing else will ever use this uuid
        log.warning("snapshot_image.discard_failed", uuid=uuid, error=str(exc))


def abandon_snapshot_image(command: CreateImageFromSnapshot, ctx: CommandContext, failure: CommandFailed, *,
                           server: ImageServer | None = None) -> None:
    """The command is given up (its retries ran out): remove its pending image and data, if this
    task created them, free the snapshot, and end the task with ``failure``."""
    with ctx.reading() as catalogue:
        mine = catalogue.image_by_name(command.name)
        fallback_dc = catalogue.default_datacenter().name
    snapshot_lock = snapshots.snapshot_lock_name(command.vm, command.disk_id, command.snapshot)
    if mine is None or mine.lock_owner != ctx.task_id:
        with ctx.writing() as tx:
            tx.catalogue.let_go(snapshot_lock, ctx.task_id)
            tx.fail([], failure, owner=None, dc=ctx.actor.dc if ctx.actor and ctx.actor.dc else fallback_dc)
        return
    if server is not None:
        _discard_data(server, mine.uuid)
    creation.undo(ctx, mine, failure, task_dc=mine.dc_bound or fallback_dc, extra_locks=[snapshot_lock])
