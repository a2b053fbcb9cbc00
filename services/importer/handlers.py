"""Decide an ``image.import``: the checks of reference §5 in order, the manifest, the new image.

Without an image server (database-level import) the image is recorded with status OK and its
manifest active, and bound and attached to its datacenter (deviations #5). With one, the image
is recorded PENDING under its lease lock and ``task.started`` goes out (the client gets 201),
then the file is streamed into the store and verified (``transfer``), and the image becomes OK;
any failure removes the row and the data (reference §7.3, §7.8). A redelivered import finds its
own pending image (its lease names this task) and starts the transfer over. The manifest is
fetched and the file URL probed outside any transaction.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import replace
from datetime import datetime

from imagesvc.domain import creation, fields, images, manifest, policy
from imagesvc.services.importer import transfer
from imagesvc.shared.contracts import ImageImported, ImportImage, TaskStarted, image_stream
from imagesvc.shared.crash import crash_point
from imagesvc.shared.db.models import utcnow
from imagesvc.shared.db.records import ImageRecord
from imagesvc.shared.errors import CommandFailed, Invalid, Refused, Transient
from imagesvc.shared.handling import CommandContext
from imagesvc.shared.logging import get_logger
from imagesvc.shared.net.fetch import FetchError, Fetcher
from imagesvc.shared.store import StoreError
from imagesvc.shared.store.server import ImageServer

log = get_logger(__name__)


def import_image(command: ImportImage, ctx: CommandContext, *, fetcher: Fetcher, server: ImageServer | None = None,
                 limits: transfer.Limits | None = None, lease_seconds: float | None = None,
                 fetch_timeout: float = manifest.FETCH_TIMEOUT) -> None:
    """``fetch_timeout``: the wall-clock deadline of the manifest fetch and of the file probe,
    each; ``limits`` bound the download."""
    payload = command.to_payload()
    if server is not None:
        with ctx.reading() as catalogue:
            mine = catalogue.image_by_name(command.name)
        if mine is not None and mine.status == images.STATUS_PENDING and mine.lock_owner == ctx.task_id:
            # Our own earlier delivery was interrupted (the importer died or lost its connection;
            # it may even still be running): this one takes the work over under a new token. Never
            # deferred for the user's cap: its image's lease would run out while it waited.
            token = creation.take_over(ctx, mine.uuid, lease_seconds)
            _transfer(ctx, mine, manifest.file_url_of(payload), fetcher, server, limits, lease_seconds, since=token)
            return
    with ctx.reading() as catalogue:
        actor = _check_refusals(catalogue, command.name, payload, ctx)
        if not actor.is_superadmin:
            payload.pop("dc_bound", None)  # as the gateway does: only a SuperAdmin chooses the binding
        values, errors = images.check_import_shape(payload)
        images.check_owner(catalogue, values, errors)
    if errors:
        raise Invalid(errors)

    # From here on a slow origin holds this thread for up to three deadlines: the refusals above
    # come at once, whatever the user's other imports.
    ctx.begin_long_work()
    source = _fetch_manifest(fetcher, values["manifest_url"], fetch_timeout)
    with ctx.reading() as catalogue:
        _check_uuid_free(catalogue, source["uuid"])
    file_url = manifest.file_url_of(values)
    if server is not None and server.serves(file_url):
        _check_local_file(server, source["uuid"], file_url)
    else:
        try:
            fetcher.get(file_url, max_bytes=manifest.PROBE_BYTES, timeout=fetch_timeout, truncate=True)
        except FetchError as exc:
            raise Invalid({"file_url": [manifest.file_unreachable(str(exc))]}, code=exc.code) from None

    # Stage 2: the manifest's values stand in for the keys the request left out.
    offered = {k: v for k, v in manifest.import_defaults(source).items() if k not in payload}
    values, errors = fields.validate({**payload, **offered}, fields.IMPORT_FIELDS)
    bound = values.get("dc_bound", True)
    alias = values.get("alias", command.name)
    version = values.get("version", "1.0")

    with ctx.writing() as tx:
        catalogue = tx.catalogue
        catalogue.lock_namespace()  # the name, the alias and the DC's limit are checked, then claimed
        actor = _check_refusals(catalogue, command.name, payload, ctx)
        dc = catalogue.datacenter(values["dc"]) if "dc" in values else None
        _check_uuid_free(catalogue, source["uuid"])
        owner = images.check_owner(catalogue, values, errors)
        images.check_alias_and_limit(catalogue, alias=alias, version=version, bound_dc=dc if bound else None,
                                     exclude_uuid=None, errors=errors, count_limit=True)
        if errors:
            raise Invalid(errors)
        if server is not None:
            images.require_image_server(server.unavailable(tx.conn))
        now = utcnow()
        ostype = manifest.ostype(source)
        size = manifest.size_mb(source)
        desc = values.get("desc", "")
        access = values.get("access", fields.ACCESS_PRIVATE)
        tags = values.get("tags", [])
        resize = values.get("resize", False)
        deploy = values.get("deploy", False)
        stored = manifest.build(source, uuid=source["uuid"], alias=alias, version=version, desc=desc, access=access,
                                ostype=ostype, size=size, tags=tags, resize=resize, deploy=deploy, now=now)
        bound_dc = dc.name if (bound and dc) else None
        image = ImageRecord(
            uuid=source["uuid"], name=command.name, alias=alias, version=version, desc=desc,
            owner=(owner or actor.user).username, access=access, size=size, ostype=ostype, deploy=deploy, resize=resize,
            status=images.STATUS_OK if server is None else images.STATUS_PENDING, tags=tags, created=now,
            changed=now, dc_bound=bound_dc, dcs=[bound_dc] if bound_dc else [], manifest=stored,
            manifest_active=stored if server is None else {},
            # A uuid may come back after its image was deleted: its stream goes on from there.
            stream_version=tx.stream_head(image_stream(source["uuid"])) + 1,
        )
        catalogue.insert_image(image)
        task_dc = dc.name if dc else catalogue.default_datacenter().name
        imported = ImageImported(image=images.to_state(image), version=image.stream_version)
        if server is None:
            tx.finish([imported], result=images.public_view(image), owner=image.owner, dc=task_dc)
            return
        token = tx.catalogue.hold(tx.catalogue.image_lock(image.uuid), ctx.task_id,
                                  lease_seconds or creation.CREATION_LEASE_SECONDS)
        if token is None:
            # A store sweep holds the uuid while it removes an earlier image's leftovers
            # (services.sweeper.garbage): for a moment only, so the retry finds it free.
            raise Transient(f"the lease of image {image.uuid} is held by another owner")
        tx.emit([imported, TaskStarted(**ctx.task_fields(owner=image.owner, dc=task_dc))])
    ctx.publish_pending()  # the client's 201 comes now, not after the download
    _transfer(ctx, replace(image, lock_owner=ctx.task_id), file_url, fetcher, server, limits, lease_seconds,
              since=token)


def _check_local_file(server: ImageServer, uuid: str, file_url: str) -> None:
    """The probe of a file URL on this image server: the file is looked for in the store, not over
    HTTP, since the image server publishes only images that have a manifest, and a file placed by
    hand has none yet (reference §7.3). A missing file is refused as the original's probe of its
    image server refused it: 404 under ``file_url``."""
    try:
        found = server.store.file_info(uuid)
    except (StoreError, OSError):
        found = None
    if found is None:
        raise Invalid({"file_url": [manifest.file_unreachable(f"404 Client Error: Not Found for url: {file_url}")]},
                      code="http_error")


def _task_dc(catalogue, image: ImageRecord) -> str:
    return image.dc_bound or catalogue.default_datacenter().name


def _transfer(ctx: CommandContext, image: ImageRecord, file_url: str, fetcher: Fetcher, server: ImageServer,
              limits: transfer.Limits | None, lease_seconds: float | None = None, *,
              since: datetime | None = None) -> None:
    """Move the file into the store, then make the image OK; or undo the import. ``since``: the
    token of the lease this delivery holds (a later delivery that re-takes it supersedes us)."""
    assert limits is not None, "an image server needs download limits"
    with ctx.reading() as catalogue:
        task_dc = _task_dc(catalogue, image)
    local = server.serves(file_url)
    report = creation.progress_reporter(ctx, image, task_dc, lease_seconds=lease_seconds, since=since)
    try:
        expected = transfer.Expected.from_manifest(image.manifest)
        if local:
            received = transfer.verify_in_place(server.store, image.uuid, expected, report)
        else:
            # A partial file of this delivery's own: a superseded delivery still writing must
            # not write into the file of the one that took over.
            attempt = f"{ctx.task_id}.{uuidlib.uuid4().hex[:8]}"
            received = transfer.download(fetcher, file_url, server.store, image.uuid, attempt, expected, limits,
                                         report)
        crash_point("after_download")
        files = [{**image.manifest["files"][0], "sha256": received.sha256}]
        final_manifest = {**image.manifest, "files": files}
        try:
            server.store.write_manifest(image.uuid, final_manifest)
        except StoreError as exc:
            raise transfer.TransferFailed(transfer.RC_MANIFEST_WRITE, str(exc), exc.code) from None
        crash_point("after_store")
    except transfer.TransferFailed as failure:
        # A local file was there before this import; and once another delivery took the work over
        # (or the task ended), what the store holds is not ours to remove either.
        if not local and (since is None or creation.owns_data(ctx, image.uuid, since)):
            _discard_data(server, image.uuid)
        creation.undo(ctx, image, creation.failure_of(failure.result(), failure.code), task_dc=task_dc, since=since)
        return
    # The file was on the image server already: the original runs `esimg update -c` on it, whose
    # message this is (reference §7.3, §9.2).
    message = (f"Successfully updated image {image.name}" if local else
               f"Successfully imported image {image.name} "
               f"(transferred {received.size} bytes in {round(received.seconds)} seconds)")
    creation.complete(ctx, image, final_manifest, task_dc=task_dc, since=since, message=message)


def _discard_data(server: ImageServer, uuid: str) -> None:
    try:
        server.store.delete(uuid)
    except StoreError as exc:  # the row goes anyway; the next import of this uuid starts clean
        log.warning("import.discard_failed", uuid=uuid, error=str(exc))


def _check_refusals(catalogue, name: str, payload: dict, ctx: CommandContext) -> policy.Access:
    """403 (entry), 406, 404 and 403 (target datacenter), in the reference's order; returns the
    acting user's access."""
    actor = policy.actor_access(catalogue, ctx.actor)
    if catalogue.name_exists(name):
        raise Refused(406, images.IMAGE_EXISTS, code="image_exists")
    target = catalogue.default_datacenter()
    if "dc" in payload:  # only an absent dc means the request's; "" or null is looked up (and not found)
        target = catalogue.datacenter(payload["dc"]) if isinstance(payload["dc"], str) else None
        if target is None or not actor.sees(target):
            raise Refused(404, images.DC_NOT_FOUND, code="datacenter_not_found")
    policy.require_import_into(actor, target.name)
    return actor


def _fetch_manifest(fetcher: Fetcher, url: str, timeout: float) -> dict:
    try:
        raw = fetcher.get(url, max_bytes=manifest.MANIFEST_MAX_BYTES, timeout=timeout)
    except FetchError as exc:
        raise Invalid({"manifest_url": [manifest.unreachable(str(exc))]}, code=exc.code) from None
    try:
        return manifest.parse(raw)
    except manifest.ManifestError as exc:
        raise Invalid({"manifest_url": [str(exc)]}, code="manifest_invalid") from None


def _check_uuid_free(catalogue, uuid: str) -> None:
    existing = catalogue.image_by_uuid(uuid)
    if existing is not None:
        raise Invalid({"manifest_url": [manifest.uuid_taken(existing.name)]}, code="uuid_taken")


def abandon_import(command: ImportImage, ctx: CommandContext, failure: CommandFailed, *,
                   server: ImageServer | None = None) -> None:
    """The import is given up (its retries ran out): remove its pending image and data, if this
    task created them, and end the task with ``failure``."""
    with ctx.reading() as catalogue:
        mine = catalogue.image_by_name(command.name)
        task_dc = _task_dc(catalogue, mine) if mine is not None else catalogue.default_datacenter().name
    if mine is None or mine.lock_owner != ctx.task_id:
        with ctx.writing() as tx:
            tx.fail([], failure, owner=None, dc=task_dc)
        return
    if server is not None and not server.serves(manifest.file_url_of(command.to_payload())):
        _discard_data(server, mine.uuid)
    creation.undo(ctx, mine, failure, task_dc=task_dc)
