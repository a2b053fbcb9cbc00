"""Decide an ``image.delete`` (reference §3.5): refusals in the order of §5, then the removal.

An image that a live VM in one of its attached datacenters was made from is not deleted (428
``Image is used by some VMs``, after 404/403 and before the image server's 428/423 and 417): the
VMs are other systems' facts, kept in ``vms`` by the projector (``shared.db.vms``).

Database-level delete: one transaction that holds the image row; refused while another task
holds the image's lease lock. With an image server the data goes first, then the record
(deviations #11): the image is marked PENDING under its lease and ``task.started`` goes out
(201), its data is removed from the store (an image with no data there is fine), and only then is
the row deleted; if the store refuses before the image left it (``ImageStore.restore`` says so
when the store cannot tell), the image is OK again and the task says why. The deletion
is the next version of the image's event stream, so a stale event can never revive the image.
"""

from __future__ import annotations

from imagesvc.domain import creation, images, policy
from imagesvc.shared.contracts import DeleteImage, ImageDeleted
from imagesvc.shared.crash import crash_point
from imagesvc.shared.db import vms
from imagesvc.shared.errors import CommandFailed, Refused, Transient
from imagesvc.shared.handling import CommandContext
from imagesvc.shared.store import StoreError
from imagesvc.shared.store.server import ImageServer

#: A removal's hold on its image.
DELETE_LEASE_SECONDS = 300.0


def delete_image(command: DeleteImage, ctx: CommandContext, *, server: ImageServer | None = None,
                 lease_seconds: float | None = None) -> None:
    with ctx.writing() as tx:
        catalogue = tx.catalogue
        # The image and the actor in one round trip; the entry permission (403) still comes first.
        image, user = catalogue.image_and_user(command.name, policy.actor_name(ctx.actor), for_update=True)
        actor = policy.actor_access(catalogue, ctx.actor, user)
        if image is None:
            raise Refused(404, images.IMAGE_NOT_FOUND, code="image_not_found")
        policy.require_manage(actor, image.dc_bound)
        resuming = image.status == images.STATUS_PENDING and image.lock_owner == ctx.task_id
        if not resuming:  # under the row lock: of N deletes sent against one version one passes
            images.check_expected_version(command.expected_version, image.stream_version)
        # A resumed removal was decided already: refusing it now would leave the image PENDING.
        if not resuming and vms.vms_using_image(tx.conn, image.uuid, image.dcs):
            raise Refused(428, images.IMAGE_USED_BY_VMS, code="image_used_by_vms")
        if server is not None:
            images.require_image_server(server.unavailable(tx.conn))
        if image.status != images.STATUS_OK and not resuming:
            raise Refused(417, images.STATUS_NOT_OK, code="image_status_not_ok")
        if image.lock_owner not in (None, ctx.task_id):  # another task holds the image's lease
            raise CommandFailed(images.LOCK_NOT_ACQUIRED, code="image_locked")
        task_dc = image.dc_bound or catalogue.default_datacenter().name
        if server is None:
            catalogue.delete_image(image.uuid)
            tx.finish([ImageDeleted(uuid=image.uuid, name=image.name, version=image.stream_version + 1,
                                    dc_bound=image.dc_bound)],
                      result=None, owner=image.owner, dc=task_dc)
            return
        if not resuming:
            creation.mark_pending(tx, ctx, image, task_dc=task_dc, lease_seconds=lease_seconds or DELETE_LEASE_SECONDS)
    ctx.publish_pending()
    _remove(ctx, image.uuid, server, task_dc)


def _remove(ctx: CommandContext, uuid: str, server: ImageServer, task_dc: str) -> None:
    failure: CommandFailed | None = None
    try:
        server.store.delete(uuid)  # also what an interrupted earlier attempt left in .trash
        crash_point("after_data_removed")
    except StoreError as exc:
        failure = creation.store_failure(1, exc)
        # A store may fail to tell whether its decisive step happened (an object store's manifest
        # delete whose answer was lost): only the store can say whether the image is still there.
        try:
            if not server.store.restore(uuid):
                failure = None  # the data is gone for good: the removal is finished, not undone
        except StoreError as again:
            # Cannot tell now: the delivery is retried (still PENDING under this task's lease);
            # a command that runs out of attempts is settled by the lease sweeper, which asks again.
            raise Transient(f"cannot tell whether image {uuid} left the store: {again}") from None
    with ctx.writing() as tx:
        current = creation.held(tx, ctx, uuid)
        if failure is not None:  # the data is still there: so is the image
            creation.back_to_ok(tx, ctx, current, failure, task_dc=task_dc)
            return
        tx.catalogue.let_go(tx.catalogue.image_lock(uuid), ctx.task_id)
        tx.catalogue.delete_image(uuid)
        tx.finish([ImageDeleted(uuid=uuid, name=current.name, version=current.stream_version + 1,
                                dc_bound=current.dc_bound)],
                  result=creation.removal_result(current.name),
                  owner=current.owner, dc=task_dc)
