"""Decide an ``image.delete`` (reference §3.5): refusals in the order of §5, then the removal.

Database-level delete, in one transaction that holds the image row; refused while another task
holds the image's lease lock. The deletion is the next version of the image's event stream, and
the event store keeps it, so a stale event can never revive the image.
"""

from __future__ import annotations

from domain import images, policy
from shared.contracts import DeleteImage, ImageDeleted
from shared.errors import CommandFailed, Refused
from shared.handling import CommandContext


def delete_image(command: DeleteImage, ctx: CommandContext) -> None:
    with ctx.writing() as tx:
        catalogue = tx.catalogue
        # The image and the actor in one round trip; the entry permission (403) still comes first.
        image, user = catalogue.image_and_user(command.name, policy.actor_name(ctx.actor), for_update=True)
        actor = policy.actor_access(catalogue, ctx.actor, user)
        if image is None:
            raise Refused(404, images.IMAGE_NOT_FOUND, code="image_not_found")
        policy.require_manage(actor, image.dc_bound)
        if image.status != images.STATUS_OK:
            raise Refused(417, images.STATUS_NOT_OK, code="image_status_not_ok")
        if image.lock_owner not in (None, ctx.task_id):  # another task holds the image's lease
            raise CommandFailed(images.LOCK_NOT_ACQUIRED, code="image_locked")
        catalogue.delete_image(image.uuid)
        version = image.stream_version + 1
        task_dc = image.dc_bound or catalogue.default_datacenter().name
        tx.finish([ImageDeleted(uuid=image.uuid, name=image.name, version=version)], result=None,
                  owner=image.owner, dc=task_dc)
