"""Decide an ``image.update`` (reference §3.4): a partial update, checked in the order of §5.

In one transaction that holds the image row: validate the supplied fields against it, refuse
while another task holds the image's lease lock, write the changed columns, record the new
state. With an image server, a change of the manifest's attributes is long-running (reference
§7.5): the image is marked PENDING under its lease and ``task.started`` goes out (201), the
rebuilt manifest is written to the store, and only then are the attributes saved and the image
OK again; if the store write fails nothing was changed, so nothing needs restoring.
"""

from __future__ import annotations

from imagesvc.domain import creation, fields, images, manifest, policy
from imagesvc.shared.contracts import AttachImage, DetachImage, ImageUpdated, UpdateImage
from imagesvc.shared.crash import crash_point
from imagesvc.shared.db import vms
from imagesvc.shared.db.models import utcnow
from imagesvc.shared.errors import CommandFailed, Invalid, Refused
from imagesvc.shared.handling import CommandContext
from imagesvc.shared.store import StoreError
from imagesvc.shared.store.server import ImageServer

#: A manifest rewrite's hold on its image (a store write takes seconds at most).
UPDATE_LEASE_SECONDS = 300.0

_ATTRIBUTES = ("alias", "version", "owner", "access", "desc", "resize", "deploy", "tags")


def update_image(command: UpdateImage, ctx: CommandContext, *, server: ImageServer | None = None,
                 lease_seconds: float | None = None) -> None:
    payload = command.to_payload()
    payload.pop("expected_version", None)  # a precondition, not an attribute
    with ctx.writing() as tx:
        catalogue = tx.catalogue
        # The image and the actor in one round trip; the entry permission (403) still comes first.
        image, user = catalogue.image_and_user(command.name, policy.actor_name(ctx.actor), for_update=True)
        actor = policy.actor_access(catalogue, ctx.actor, user)
        if image is None:
            raise Refused(404, images.IMAGE_NOT_FOUND, code="image_not_found")
        policy.require_manage(actor, image.dc_bound)
        if not (image.status == images.STATUS_PENDING and image.lock_owner == ctx.task_id):
            # Under the row lock, so of N updates sent against one version exactly one passes.
            # (A resumed task passed it already; its own PENDING marker raised the version since.)
            images.check_expected_version(command.expected_version, image.stream_version)
        held = image.lock_owner not in (None, ctx.task_id)  # another task holds the image's lease

        values, errors = images.check_update_shape(payload)
        if "owner" in values and "owner" not in errors and values["owner"] != image.owner:
            images.check_owner(catalogue, values, errors)
            if held and "owner" not in errors:
                errors["owner"] = [images.PENDING_TASKS]
        changes = {k: values[k] for k in _ATTRIBUTES if k in values}
        if "dc_bound" in values:
            changes["dc_bound"] = images.rebind(current=image.dc_bound, attached=image.dcs, wanted=values["dc_bound"],
                                                is_superadmin=actor.is_superadmin, errors=errors)
        changed = sorted(k for k, v in changes.items() if getattr(image, k) != v)
        if "alias" in changed or "version" in changed:
            catalogue.lock_namespace()  # the new alias+version is checked, then claimed
            images.check_alias_and_limit(catalogue, alias=changes.get("alias", image.alias),
                                         version=changes.get("version", image.version), bound_dc=None,
                                         exclude_uuid=image.uuid, errors=errors, count_limit=False)
        if errors:
            raise Invalid(fields.order_errors(errors))
        rewrites_manifest = server is not None and bool(manifest.MANIFEST_ATTRIBUTES.intersection(changed))
        if server is not None:
            # Every PUT on a system with an image server, also one that changes only database
            # fields (owner, dc_bound) or nothing: the original checks the server first (§13.27).
            images.require_image_server(server.unavailable(tx.conn))
        resuming = image.status == images.STATUS_PENDING and image.lock_owner == ctx.task_id
        if image.status != images.STATUS_OK and not resuming:
            raise Refused(417, images.STATUS_NOT_OK, code="image_status_not_ok")
        if held:
            raise CommandFailed(images.LOCK_NOT_ACQUIRED, code="image_locked")
        if not rewrites_manifest:
            _save(tx, image, {k: changes[k] for k in changed})
            return
        task_dc = image.dc_bound or catalogue.default_datacenter().name
        if not resuming:
            creation.mark_pending(tx, ctx, image, task_dc=task_dc, lease_seconds=lease_seconds or UPDATE_LEASE_SECONDS)
    ctx.publish_pending()
    _rewrite_manifest(ctx, image.uuid, {k: changes[k] for k in changed}, server, task_dc)  # type: ignore[arg-type]


def _save(tx, image, columns: dict) -> None:
    """The database-level update: the changed columns, the manifest rebuilt and active at once
    (reference §7.8), one event, the task's result the updated image."""
    updated = image
    events = []
    if columns:
        now = utcnow()
        updated = image.with_changes(**columns, changed=now)
        if manifest.MANIFEST_ATTRIBUTES.intersection(columns):
            rebuilt = manifest.for_image(updated)
            columns.update(manifest=rebuilt, manifest_active=rebuilt)
            updated = updated.with_changes(manifest=rebuilt, manifest_active=rebuilt)
        version = image.stream_version + 1
        tx.catalogue.update_fields(image.uuid, columns, changed=now, stream_version=version)
        events.append(ImageUpdated(image=images.to_state(updated), version=version,
                                   changed=sorted(k for k in columns if k not in ("manifest", "manifest_active")),
                                   **_moved(image, updated)))
    # The task is placed in the image's datacenter as it is after the change.
    tx.finish(events, result=images.public_view(updated), owner=updated.owner,
              dc=updated.dc_bound or tx.catalogue.default_datacenter().name)


def _moved(before, after) -> dict:
    """``previous_dc_bound`` for an event that moves the image out of its datacenter (or out of
    global): that scope's subscribers are told too (``shared.contracts.routing``)."""
    return {"previous_dc_bound": before.dc_bound} if before.dc_bound != after.dc_bound else {}


def _rewrite_manifest(ctx: CommandContext, uuid: str, columns: dict, server: ImageServer, task_dc: str) -> None:
    """Write the rebuilt manifest to the store, then save the attributes and make the image OK
    again (or only OK again, with the task failed, when the store refused the write)."""
    with ctx.reading() as catalogue:
        image = catalogue.image_by_uuid(uuid)
    if image is None or image.lock_owner != ctx.task_id:
        raise CommandFailed(images.LOCK_NOT_ACQUIRED, code="image_locked")
    updated = image.with_changes(**columns)
    rebuilt = manifest.for_image(updated)
    failure: CommandFailed | None = None
    try:
        server.store.write_manifest(uuid, rebuilt)  # also removes an interrupted attempt's temporary
        crash_point("after_manifest_rewrite")
    except StoreError as exc:
        failure = creation.store_failure(9, exc)
    with ctx.writing() as tx:
        current = creation.held(tx, ctx, uuid)
        if failure is not None:
            creation.back_to_ok(tx, ctx, current, failure, task_dc=task_dc)
            return
        now = utcnow()
        version = current.stream_version + 1
        tx.catalogue.let_go(tx.catalogue.image_lock(uuid), ctx.task_id)
        saved = {**columns, "manifest": rebuilt, "manifest_active": rebuilt, "status": images.STATUS_OK}
        done = current.with_changes(**saved, changed=now)
        tx.catalogue.update_fields(uuid, saved, changed=now, stream_version=version)
        tx.finish([ImageUpdated(image=images.to_state(done), version=version, changed=sorted(saved),
                                **_moved(current, done))],
                  result={"returncode": 0, "message": f"Successfully updated image {current.name}"},
                  owner=done.owner, dc=task_dc)


def attach_image(command: AttachImage, ctx: CommandContext) -> None:
    _change_attachment(command.name, command.dc, ctx, attach=True)


def detach_image(command: DetachImage, ctx: CommandContext) -> None:
    _change_attachment(command.name, command.dc, ctx, attach=False)


def _change_attachment(name: str, dc_name: str, ctx: CommandContext, *, attach: bool) -> None:
    """Attach or detach (reference §3.8, §4.4): SuperAdmin only; either way the image is no longer
    bound to a datacenter afterwards. A detach is refused (428) while a VM of that datacenter uses
    the image."""
    with ctx.writing() as tx:
        catalogue = tx.catalogue
        image, user = catalogue.image_and_user(name, policy.actor_name(ctx.actor), for_update=True)
        policy.require_superadmin(policy.actor_access(catalogue, ctx.actor, user))
        dc = catalogue.datacenter(dc_name)
        if dc is None:
            raise Refused(404, images.DC_NOT_FOUND, code="datacenter_not_found")
        if image is None:
            raise Refused(404, images.IMAGE_NOT_FOUND, code="image_not_found")
        # As they are under the row lock (the catalogue re-reads if the lock had to wait for a writer).
        attached = set(image.dcs)
        if attach and dc.name in attached:
            raise Refused(406, images.IMAGE_EXISTS, code="already_attached")
        if not attach and dc.name not in attached:
            raise Refused(404, images.IMAGE_NOT_FOUND, code="not_attached")
        if not attach and vms.vms_using_image(tx.conn, image.uuid, [dc.name]):
            # The datacenter's VMs (replicas too) would lose the image they were made from.
            raise Refused(428, images.IMAGE_USED_BY_VMS, code="image_used_by_vms")
        wanted = sorted(attached | {dc.name} if attach else attached - {dc.name})
        catalogue.set_attachments(image.uuid, wanted)
        now = utcnow()
        version = image.stream_version + 1
        catalogue.update_fields(image.uuid, {"dc_bound": None} if image.dc_bound else {}, changed=now,
                                stream_version=version)
        updated = image.with_changes(dcs=wanted, dc_bound=None, changed=now)
        changed = ["dc_bound", "dcs"] if image.dc_bound else ["dcs"]
        # The original's answers: attach shows the image as serialized *before* dc_bound was
        # cleared (reference §13.30), detach shows nothing; the event carries the new state.
        tx.finish([ImageUpdated(image=images.to_state(updated), version=version, changed=changed,
                                **_moved(image, updated))],
                  result=images.public_view(image) if attach else None, owner=updated.owner, dc=dc.name,
                  http_code=201 if attach else 200)
