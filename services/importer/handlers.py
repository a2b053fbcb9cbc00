"""Decide an ``image.import``: the checks of reference §5 in order, the manifest, the new image.

Database-level import (no image server): the image is recorded with status OK and its manifest
active, and bound and attached to its datacenter (deviations #5). The manifest is fetched and
the file URL probed outside any transaction; the final checks and the insert happen in one.
"""

from __future__ import annotations

from domain import fields, images, manifest, policy
from shared.contracts import ImageImported, ImportImage, image_stream
from shared.db.models import utcnow
from shared.db.records import ImageRecord
from shared.errors import Invalid, Refused
from shared.handling import CommandContext
from shared.net.fetch import FetchError, Fetcher


def import_image(command: ImportImage, ctx: CommandContext, *, fetcher: Fetcher) -> None:
    payload = command.to_payload()
    with ctx.reading() as catalogue:
        actor = _check_refusals(catalogue, command.name, payload, ctx)
        if not actor.is_superadmin:
            payload.pop("dc_bound", None)  # as the gateway does: only a SuperAdmin chooses the binding
        values, errors = images.check_import_shape(payload)
        images.check_owner(catalogue, values, errors)
    if errors:
        raise Invalid(errors)

    source = _fetch_manifest(fetcher, values["manifest_url"])
    with ctx.reading() as catalogue:
        _check_uuid_free(catalogue, source["uuid"])
    file_url = values.get("file_url") or manifest.default_file_url(values["manifest_url"])
    try:
        fetcher.get(file_url, max_bytes=manifest.PROBE_BYTES, timeout=manifest.FETCH_TIMEOUT, truncate=True)
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
        actor = _check_refusals(catalogue, command.name, payload, ctx)
        dc = catalogue.datacenter(values["dc"]) if "dc" in values else None
        _check_uuid_free(catalogue, source["uuid"])
        owner = images.check_owner(catalogue, values, errors)
        images.check_alias_and_limit(catalogue, alias=alias, version=version, bound_dc=dc if bound else None,
                                     exclude_uuid=None, errors=errors, count_limit=True)
        if errors:
            raise Invalid(errors)
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
            status=images.STATUS_OK, tags=tags, created=now, changed=now, dc_bound=bound_dc,
            dcs=[bound_dc] if bound_dc else [], manifest=stored, manifest_active=stored,
            # A uuid may come back after its image was deleted: its stream goes on from there.
            stream_version=tx.stream_head(image_stream(source["uuid"])) + 1,
        )
        catalogue.insert_image(image)
        task_dc = dc.name if dc else catalogue.default_datacenter().name
        tx.finish([ImageImported(image=images.to_state(image), version=image.stream_version)],
                  result=images.public_view(image), owner=image.owner, dc=task_dc)


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


def _fetch_manifest(fetcher: Fetcher, url: str) -> dict:
    try:
        raw = fetcher.get(url, max_bytes=manifest.MANIFEST_MAX_BYTES, timeout=manifest.FETCH_TIMEOUT)
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
