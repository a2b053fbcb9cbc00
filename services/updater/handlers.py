"""Decide an ``image.update`` (reference §3.4): a partial update, checked in the order of §5.

Database-level update, in one transaction that holds the image row: validate the supplied fields
against it, refuse while another task holds the image's lease lock, write the changed columns,
record the new state.
"""

from __future__ import annotations

from domain import fields, images, manifest, policy
from shared.contracts import AttachImage, DetachImage, ImageUpdated, UpdateImage
from shared.db.models import utcnow
from shared.errors import CommandFailed, Invalid, Refused
from shared.handling import CommandContext

_ATTRIBUTES = ("alias", "version", "owner", "access", "desc", "resize", "deploy", "tags")


def update_image(command: UpdateImage, ctx: CommandContext) -> None:
    payload = command.to_payload()
    with ctx.writing() as tx:
        catalogue = tx.catalogue
        # The image and the actor in one round trip; the entry permission (403) still comes first.
        image, user = catalogue.image_and_user(command.name, policy.actor_name(ctx.actor), for_update=True)
        actor = policy.actor_access(catalogue, ctx.actor, user)
        if image is None:
            raise Refused(404, images.IMAGE_NOT_FOUND, code="image_not_found")
        policy.require_manage(actor, image.dc_bound)
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
            images.check_alias_and_limit(catalogue, alias=changes.get("alias", image.alias),
                                         version=changes.get("version", image.version), bound_dc=None,
                                         exclude_uuid=image.uuid, errors=errors, count_limit=False)
        if errors:
            raise Invalid(fields.order_errors(errors))
        if image.status != images.STATUS_OK:
            raise Refused(417, images.STATUS_NOT_OK, code="image_status_not_ok")
        if held:
            raise CommandFailed(images.LOCK_NOT_ACQUIRED, code="image_locked")

        updated = image
        events = []
        if changed:
            now = utcnow()
            columns = {k: changes[k] for k in changed}
            updated = image.with_changes(**columns, changed=now)
            if manifest.MANIFEST_ATTRIBUTES.intersection(changed):
                # Database-level update: the rebuilt manifest is active at once (reference §7.8).
                rebuilt = manifest.for_image(updated)
                columns.update(manifest=rebuilt, manifest_active=rebuilt)
                updated = updated.with_changes(manifest=rebuilt, manifest_active=rebuilt)
            version = image.stream_version + 1
            catalogue.update_fields(image.uuid, columns, changed=now, stream_version=version)
            events.append(ImageUpdated(image=images.to_state(updated), version=version, changed=changed))
        task_dc = updated.dc_bound or catalogue.default_datacenter().name
        tx.finish(events, result=images.public_view(updated), owner=updated.owner, dc=task_dc)


def attach_image(command: AttachImage, ctx: CommandContext) -> None:
    _change_attachment(command.name, command.dc, ctx, attach=True)


def detach_image(command: DetachImage, ctx: CommandContext) -> None:
    _change_attachment(command.name, command.dc, ctx, attach=False)


def _change_attachment(name: str, dc_name: str, ctx: CommandContext, *, attach: bool) -> None:
    """Attach or detach (reference §3.8, §4.4): SuperAdmin only; either way the image is no longer
    bound to a datacenter afterwards."""
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
        tx.finish([ImageUpdated(image=images.to_state(updated), version=version, changed=changed)],
                  result=images.public_view(image) if attach else None, owner=updated.owner, dc=dc.name,
                  http_code=201 if attach else 200)
