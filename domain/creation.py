"""A long-running image creation (an import that downloads, an image from a snapshot): the image
is recorded PENDING under its lease lock, its file is produced into the image store, then the
image becomes OK, or is removed (reference §7.8). The steps every such command shares.

``tx`` is a handler's ``Transaction`` (``tx.catalogue``, ``tx.finish``, ``tx.fail``, ``tx.emit``),
``ctx`` its ``CommandContext``; duck-typed, so this module needs no database.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from imagesvc.domain import images
from imagesvc.shared.contracts import ImageDeleted, ImageUpdated, TaskProgress, TaskStarted
from imagesvc.shared.db.records import ImageRecord
from imagesvc.shared.errors import CommandFailed, Superseded
from imagesvc.shared.store import StoreError
from imagesvc.shared.store.transfer import TransferFailed

#: The lease of an image being created; renewed with every progress report, so it lapses only
#: when its consumer died (the command's next delivery then takes over, or, if none comes, the
#: lease sweeper ends the task). ``IMAGESVC_LEASE_SECONDS`` overrides it.
CREATION_LEASE_SECONDS = 600.0


def take_over(ctx, uuid: str, lease_seconds: float | None = None) -> datetime:
    """A delivery resuming this task's interrupted creation re-takes the image's lease, under the
    image's row lock (so no completion of an earlier delivery interleaves): returns the lease's
    new token, which supersedes the earlier delivery's (``still_ours``). Raises CommandFailed if
    the task no longer holds the image (the sweeper took it over)."""
    with ctx.writing() as tx:
        current = tx.catalogue.image_by_uuid(uuid, for_update=True)
        if current is None or current.lock_owner != ctx.task_id or current.status != images.STATUS_PENDING:
            raise CommandFailed(images.LOCK_NOT_ACQUIRED, code="image_locked")
        token = tx.catalogue.hold(tx.catalogue.image_lock(uuid), ctx.task_id,
                                  lease_seconds or CREATION_LEASE_SECONDS)
        assert token is not None  # the lease is the task's own
        return token


def still_ours(tx, ctx, uuid: str, since: datetime | None) -> ImageRecord | None:
    """The image under its row lock, if this task still holds its lease under token ``since``.
    Raises Superseded when the task holds it under a later token (a redelivery took the work
    over: it decides), CommandFailed when the task does not hold it at all (the sweeper or
    another task took it over after the lease lapsed); returns None when the image is gone."""
    current = tx.catalogue.image_by_uuid(uuid, for_update=True)
    if current is None:
        return None
    if current.lock_owner != ctx.task_id:
        raise CommandFailed(images.LOCK_NOT_ACQUIRED, code="image_locked")
    if since is not None:
        lease = tx.catalogue.lease(tx.catalogue.image_lock(uuid))
        if lease is None or lease.acquired_at != since:
            raise Superseded(uuid)
    return current


def owns_data(ctx, uuid: str, since: datetime) -> bool:
    """Whether what the store holds for the image is still this delivery's to remove after its
    work failed: only while it holds the image's lease under its token ``since``. Raises
    Superseded if a later delivery of the command re-took the lease (the data is that one's);
    False if the lease is gone (another delivery completed the task, or the lease lapsed and the
    sweeper, which repairs the store itself, takes over)."""
    with ctx.reading() as catalogue:
        lease = catalogue.lease(catalogue.image_lock(uuid))
    if lease is None or lease.owner != ctx.task_id:
        return False
    if lease.acquired_at != since:
        raise Superseded(uuid)
    return True


def progress_reporter(ctx, image: ImageRecord, task_dc: str, extra_locks: Iterable[str] = (),
                      lease_seconds: float | None = None,
                      since: datetime | None = None) -> Callable[[int, "int | None"], None]:
    """``report(done, total)``: renews the image's (and ``extra_locks``') leases for
    ``lease_seconds`` (default ``CREATION_LEASE_SECONDS``) and publishes a ``task.progress`` at once.
    With ``since`` (the lease's token when this delivery took it), raises Superseded once a later
    delivery of the command has re-taken the lease."""
    lease = lease_seconds or CREATION_LEASE_SECONDS

    def report(done: int, total: int | None) -> None:
        with ctx.writing() as tx:
            lock = tx.catalogue.image_lock(image.uuid)
            if not tx.catalogue.renew(lock, ctx.task_id, lease, since=since):
                holder = tx.catalogue.lease(lock)
                if holder is not None and holder.owner == ctx.task_id:
                    raise Superseded(image.uuid)  # a redelivery of the command works on
                # The lease lapsed and the sweeper (or another task) took the image over: this
                # work is no longer ours. Stop it (the transfer removes its partial file).
                raise CommandFailed(images.LOCK_NOT_ACQUIRED, code="lease_lost")
            for lock in extra_locks:
                tx.catalogue.renew(lock, ctx.task_id, lease)
            tx.emit([TaskProgress(**ctx.task_fields(owner=image.owner, dc=task_dc), done=done, total=total)])
        ctx.publish_pending()

    return report


def complete(ctx, image: ImageRecord, final_manifest: dict[str, Any], *, task_dc: str, message: str,
             extra_locks: Iterable[str] = (), since: datetime | None = None) -> None:
    """The file is in the store: the image becomes OK with ``final_manifest`` active, the leases
    go, and the task succeeds with esimg's result ``{"returncode": 0, "message": ...}``. With
    ``since``, only while the lease is still under that token (else Superseded)."""
    with ctx.writing() as tx:
        current = still_ours(tx, ctx, image.uuid, since)
        if current is None:
            # Our lease lapsed and another task took the image over: it decides, not us.
            raise CommandFailed(images.LOCK_NOT_ACQUIRED, code="image_locked")
        now = datetime.now(timezone.utc)
        version = current.stream_version + 1
        done = current.with_changes(status=images.STATUS_OK, manifest=final_manifest, manifest_active=final_manifest,
                                    changed=now, lock_owner=None)
        tx.catalogue.update_fields(image.uuid, {"status": images.STATUS_OK, "manifest": final_manifest,
                                                "manifest_active": final_manifest}, changed=now, stream_version=version)
        for lock in (tx.catalogue.image_lock(image.uuid), *extra_locks):
            tx.catalogue.let_go(lock, ctx.task_id)
        tx.finish([ImageUpdated(image=images.to_state(done), version=version, changed=["manifest", "status"])],
                  result={"returncode": 0, "message": message}, owner=image.owner, dc=task_dc)


def undo(ctx, image: ImageRecord, failure: CommandFailed, *, task_dc: str, extra_locks: Iterable[str] = (),
         since: datetime | None = None) -> None:
    """The original's rollback of a failed creation: the image row is removed (its attachments
    with it) if this task still holds it, the leases go, and the task fails with ``failure``.
    With ``since``: raises Superseded, changing nothing, once a later delivery re-took the lease."""
    with ctx.writing() as tx:
        try:
            current = still_ours(tx, ctx, image.uuid, since)
        except CommandFailed:
            current = None  # taken over by the sweeper or another task: only our leases go
        events = []
        if current is not None and current.lock_owner == ctx.task_id:
            tx.catalogue.delete_image(image.uuid)
            events.append(ImageDeleted(uuid=image.uuid, name=image.name, version=current.stream_version + 1,
                                       dc_bound=image.dc_bound))
        for lock in (tx.catalogue.image_lock(image.uuid), *extra_locks):
            tx.catalogue.let_go(lock, ctx.task_id)
        tx.fail(events, failure, owner=image.owner, dc=task_dc)


def failure_of(returncode_result: dict[str, Any], code: str) -> CommandFailed:
    """A task failure carrying esimg's result (the original answers such a FAILURE with 400)."""
    return CommandFailed(returncode_result, http_code=400, code=code)


def store_failure(returncode: int, exc: StoreError) -> CommandFailed:
    """A task failure for a store operation that failed, with esimg's result and return code."""
    failure = TransferFailed(returncode, str(exc), exc.code)
    return failure_of(failure.result(), failure.code)


# --- a long-running change of an existing image (a manifest rewrite, a delete with a store) -----


def removal_result(name: str) -> dict[str, Any]:
    """The result of a removal from the store that went through (esimg's, as the original's)."""
    return {"returncode": 0, "message": f"Successfully deleted image {name}"}


def mark_pending(tx, ctx, image: ImageRecord, *, task_dc: str, lease_seconds: float) -> None:
    """Take the image's lease and record it PENDING (its next stream version), with
    ``task.started``: the client gets 201 and other commands 417 until the work ends."""
    tx.catalogue.hold(tx.catalogue.image_lock(image.uuid), ctx.task_id, lease_seconds)
    version = image.stream_version + 1
    tx.catalogue.update_fields(image.uuid, {"status": images.STATUS_PENDING}, changed=image.changed,
                               stream_version=version)
    pending = image.with_changes(status=images.STATUS_PENDING)
    tx.emit([ImageUpdated(image=images.to_state(pending), version=version, changed=["status"]),
             TaskStarted(**ctx.task_fields(owner=image.owner, dc=task_dc))])


def held(tx, ctx, uuid: str) -> ImageRecord:
    """The image under its row lock, provided this task still holds its lease (else another task
    took it over after the lease lapsed: it decides, not us)."""
    current = tx.catalogue.image_by_uuid(uuid, for_update=True)
    if current is None or current.lock_owner != ctx.task_id:
        raise CommandFailed(images.LOCK_NOT_ACQUIRED, code="image_locked")
    return current


def back_to_ok(tx, ctx, current: ImageRecord, failure: CommandFailed, *, task_dc: str) -> None:
    """The work failed and changed nothing: the image is OK again, its lease goes, the task fails."""
    version = current.stream_version + 1
    tx.catalogue.let_go(tx.catalogue.image_lock(current.uuid), ctx.task_id)
    tx.catalogue.update_fields(current.uuid, {"status": images.STATUS_OK}, changed=current.changed,
                               stream_version=version)
    restored = current.with_changes(status=images.STATUS_OK)
    tx.fail([ImageUpdated(image=images.to_state(restored), version=version, changed=["status"])], failure,
            owner=current.owner, dc=task_dc)
