"""The HTTP API under ``/api``: each route parses, checks in the reference's order, then reads the
read model or builds a command for the dispatcher. No business decision is final here: the
consumer re-checks everything; the gateway's checks only spare the broker doomed requests.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from datetime import timedelta
from typing import Any, AsyncIterator, Iterator, Mapping, Sequence

from starlette.requests import Request
from starlette.responses import Response

from imagesvc.domain import fields, images, manifest, policy, tasks
from imagesvc.services.gateway.auth import NO_API_ACCESS, Authenticator
from imagesvc.services.gateway.blocking import BoundedPool, Busy, in_thread
from imagesvc.services.gateway import idempotency
from imagesvc.services.gateway.dispatch import Dispatcher, status_body
from imagesvc.services.gateway.http import (
    ApiError,
    ValidationFailed,
    dummy_task_id_for,
    json_response,
    raw_json_response,
    read_json_body,
    streamed_json_response,
    wants_indentation,
)
from imagesvc.services.gateway import listing
from imagesvc.services.gateway.queries import ORDER_FIELDS, ImageListing, Queries, UnknownMarker
from imagesvc.services.gateway.throttle import NoThrottle, Throttle, throttled
from imagesvc.shared.contracts import Actor, AttachImage, DeleteImage, DetachImage, ImportImage, UpdateImage
from imagesvc.shared.db.records import DatacenterRecord, UserRecord
from imagesvc.shared.db.vms import VmRecord
from imagesvc.shared.db.models import utcnow
from imagesvc.shared.keys import check_password, hash_password, key_digest, new_api_key
from imagesvc.shared.net.fetch import FetchError, UrlPolicy

HIDDEN_FROM_LISTS = (fields.ACCESS_INTERNAL,)
#: A datacenter's image list also leaves out deleted images (reference §3.8), and sorts by name only.
HIDDEN_FROM_DC_LISTS = (fields.ACCESS_DELETED, fields.ACCESS_INTERNAL)
DC_ORDER_FIELDS = ("name",)
#: ``GET /image/<name>/vm/`` sorts by hostname only (reference §3.7).
VM_ORDER_FIELDS = ("hostname",)


def parse_order_by(raw: Any, fields: Sequence[str] = tuple(ORDER_FIELDS)) -> list[tuple[str, bool]]:
    """``name,-created`` -> [("name", False), ("created", True)]. 412 for anything else (deviations #2).
    ``fields``: the sort fields of the endpoint (a datacenter's image list sorts by name only)."""
    if raw is None or raw == "":
        return [("name", False)]
    order = []
    for item in str(raw).split(","):
        item = item.strip()
        descending = item.startswith("-")
        field = item[1:] if item[:1] in ("-", "+") else item
        if field not in fields:
            raise ApiError(412, "Invalid order_by; Possible sort fields are: " + ", ".join(fields))
        order.append((field, descending))
    return order


def order_by_refusal(raw: Any) -> str | None:
    """The 412 message a request's ``order_by`` gets from ``parse_order_by``, or None if it is valid
    (for an endpoint that decides it later than the others do)."""
    try:
        parse_order_by(raw)
    except ApiError as refused:
        return refused.detail
    return None


def wants_objects(request: Request) -> bool:
    """``full`` or ``extended``: list objects rather than names. Both flags are checked, so a
    malformed one is a 400 even when the other is set (deviations #1: strict booleans)."""
    full, extended = query_flag(request, "full"), query_flag(request, "extended")
    return full or extended


def _expected_version(request: Request, image) -> dict[str, int]:
    """The ``expected_version`` of a change asked with ``If-Match`` (none without the header or
    with ``*``). A version older than the projected one is refused here (412, nothing sent): the
    image has certainly moved on. Any other is decided by the consumer under the row lock, since
    the read model may lag the write side."""
    raw = request.headers.get("if-match")
    if raw is None:
        return {}
    expected = images.expected_version_of(raw)
    if expected is None:
        return {}
    if expected < image.version:
        raise ApiError(412, images.PRECONDITION_FAILED)
    return {"expected_version": expected}


def query_flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return False
    try:
        return fields.boolean(raw)
    except fields.FieldError as exc:
        raise ValidationFailed({name: exc.messages}) from None


def _enter(request: Request, dc: DatacenterRecord) -> None:
    request.state.dc, request.state.dc_id = dc.name, dc.id


async def access_of(auth: Authenticator, queries: Queries, request: Request) -> policy.Access:
    """The authenticated user and what they hold (a SuperAdmin's grants are not needed)."""
    user = await auth.user(request)
    if user.is_superadmin:
        return policy.Access(user)
    grants = queries.cached_grants(user.id) or await in_thread(queries.grants, user.id)
    return policy.Access(user, grants)


class ImageRoutes:
    def __init__(self, *, queries: Queries, auth: Authenticator, dispatcher: Dispatcher, url_policy: UrlPolicy,
                 max_body_bytes: int):
        self.queries = queries
        self.auth = auth
        self.dispatcher = dispatcher
        self.url_policy = url_policy
        self.max_body_bytes = max_body_bytes

    async def _admin(self, request: Request) -> policy.Access:
        """The entry permission of the /image endpoints (403 ``Permission denied``)."""
        return policy.require_image_admin_somewhere(await access_of(self.auth, self.queries, request))

    async def enter_default_dc(self, request: Request) -> DatacenterRecord:
        """Make the default datacenter the request's (its ``es_dc`` and task ids name it)."""
        dc = self.queries.cached_default_datacenter() or await in_thread(self.queries.default_datacenter)
        _enter(request, dc)
        return dc

    # --- GET /image/ ---------------------------------------------------------------------------

    async def list_images(self, request: Request) -> Response:
        access = await self._admin(request)
        await self.enter_default_dc(request)
        order = parse_order_by(request.query_params.get("order_by"))
        extended = query_flag(request, "extended")
        full = query_flag(request, "full") or extended
        paging, filters = paging_and_filters(request)
        chosen = ImageListing(order, HIDDEN_FROM_LISTS, bound_to=policy.list_scope(access), filters=filters)
        return await self.image_list(request, chosen, paging, full=full, extended=extended)

    async def image_list(self, request: Request, chosen: ImageListing, paging: listing.Paging, *, full: bool,
                         extended: bool) -> Response:
        """An image list's answer: one page (keyset, ``Link`` to the next), or without ``limit``
        the whole list, streamed in batches in the bytes a single read would give."""
        head = b'{"task_id":"' + dummy_task_id_for(request).encode() + b'","status":"SUCCESS","result":'
        if paging.paged:
            try:
                items, last, more = await in_thread(self.queries.image_page, chosen, limit=paging.limit,
                                                    marker=paging.marker, marker_created=paging.marker_created,
                                                    full=full, extended=extended)
            except UnknownMarker:
                raise ValidationFailed({"marker": [listing.UNKNOWN_MARKER]}) from None
            headers = {}
            if more and last is not None:
                headers["Link"] = listing.next_link(request, last.name,
                                                    last.created if chosen.needs_created else None)
            return raw_json_response(request, head + b"[" + b",".join(items) + b"]}", headers=headers)
        chunks = _Chunks(self.queries.image_stream(chosen, full=full, extended=extended))
        first = await in_thread(chunks.next)  # the query runs here: a failure is still a whole answer
        if wants_indentation(request):
            rest = await in_thread(chunks.drain)
            return raw_json_response(request, head + first + rest + b"}")
        return streamed_json_response(_stream(head + first, chunks, b"}"))

    # --- /image/<name>/ ------------------------------------------------------------------------

    async def show(self, request: Request) -> Response:
        access = await self._admin(request)
        await self.enter_default_dc(request)
        parse_order_by(request.query_params.get("order_by"))
        extended = query_flag(request, "extended")
        image = await in_thread(functools.partial(self._existing_in_its_dc, request,
                                                          request.path_params["name"], document=True))
        policy.require_manage(access, image.dc_bound)
        head = b'{"task_id":"' + dummy_task_id_for(request).encode() + b'","status":"SUCCESS","result":'
        return raw_json_response(request, head + image.encoded(extended=extended) + b"}",
                                 headers={"ETag": images.etag(image.version)})

    # --- GET /image/<name>/vm/ (reference §3.7) -----------------------------------------------

    async def vms(self, request: Request) -> Response:
        """The live VMs using the image in any datacenter it is attached to: their hostnames, or
        with ``full``/``extended`` their objects (``vm_object``). Checks as ``show``: 412, 404, 403."""
        access = await self._admin(request)
        await self.enter_default_dc(request)
        raw_order = request.query_params.get("order_by")
        order = parse_order_by(raw_order, VM_ORDER_FIELDS) if raw_order else [("hostname", False)]
        full = wants_objects(request)
        image = await in_thread(self._existing_in_its_dc, request, request.path_params["name"])
        policy.require_manage(access, image.dc_bound)
        # Replicas are left out of the list (reference §3.7), though they keep the image in use.
        paging = paging_of(request, marker_max=listing.HOSTNAME_MAX)  # its marker: a VM's hostname
        found = await in_thread(self.queries.vms_using_image, image.uuid, image.attached, replicas=False)
        if order[0][1]:
            found = found[::-1]  # hostnames are unique among live VMs: no ties to keep stable
        return page_answer(request, found, lambda vm: vm.hostname, paging,
                           lambda vms: [vm_object(vm) for vm in vms] if full else [vm.hostname for vm in vms])

    async def _body(self, request: Request, *, order_by_first: bool = True) -> dict[str, Any]:
        data = await read_json_body(request, self.max_body_bytes)
        if order_by_first and "order_by" in data:
            parse_order_by(data["order_by"])
        return data

    # Each command route makes ONE trip to the thread pool: the checks that need the read model,
    # the command, the journal and the confirmed publish all run there (a trip costs about as
    # much CPU as the work it carries).

    async def create(self, request: Request) -> Response:
        return await self.run_command(request, self._prepare_import)

    async def update(self, request: Request) -> Response:
        return await self.run_command(request, self._prepare_update)

    async def delete(self, request: Request) -> Response:
        return await self.run_command(request, self._prepare_delete)

    async def _superadmin(self, request: Request) -> policy.Access:
        """Attaching and detaching: the URL's datacenter first (404 if invisible to the user), then
        the SuperAdmin permission (403 ``Permission denied``), in the original's order."""
        access = await access_of(self.auth, self.queries, request)
        await in_thread(self._visible_dc, request.path_params["dc"], access)
        policy.require_superadmin(access)
        return access

    async def run_command(self, request: Request, prepare, entry=None, *, order_by_first: bool = True) -> Response:
        """Answer a command request: ``entry`` (default: the /image entry permission) decides who
        may ask, ``prepare(request, access, data)`` checks the request and returns (command, owner,
        datacenter of the task), then the command is published and answered by the answer rule.
        ``order_by_first``: a bad ``order_by`` in the body is refused (412) before ``prepare`` runs;
        else ``prepare`` checks it where its endpoint's precedence puts it."""
        access = await (entry or self._admin)(request)
        await self.enter_default_dc(request)
        data = await self._body(request, order_by_first=order_by_first)
        keyed = self._keyed(request, access)
        if keyed is not None:
            # A repeat of a command published before is answered by its task, before any check
            # (the first request's answer, not a refusal of what the first one did), also when
            # the gateway that published it died before it journaled it.
            replayed = await self.dispatcher.replay(request, keyed)
            if replayed is not None:
                return replayed
        ticket = self.dispatcher.ticket(keyed)
        try:
            submission = await in_thread(self._prepare_and_submit, prepare, request, access, data, ticket)
        except ApiError:
            self.dispatcher.release(ticket)
            # A repeat that raced its first request past the look-up above is refused by what
            # the first one did (an import's 406): answer with the first one's task instead.
            replayed = keyed and await self.dispatcher.replay(request, keyed)
            if replayed:
                return replayed
            raise
        except BaseException:
            self.dispatcher.release(ticket)
            raise
        return await self.dispatcher.answer(request, ticket, submission)

    @staticmethod
    def _keyed(request: Request, access: policy.Access) -> idempotency.Identity | None:
        key = idempotency.requested_key(request)
        if key is None:
            return None
        return idempotency.identity(user_id=access.user.id, method=request.method, path=request.url.path, key=key)

    def _prepare_and_submit(self, prepare, request: Request, access: policy.Access, data: dict[str, Any], ticket):
        """(Thread pool.) Check, build the command and publish it; returns the submission."""
        user = access.user
        command, owner, dc, *node = prepare(request, access, data)  # a 4th item: the node to address
        _enter(request, dc)
        task_id = tasks.new_task_id(user_id=user.id, owner_id=owner.id, dc_id=dc.id, key=ticket.key)
        request.state.task_id = task_id
        submission = self.dispatcher.submit(command, task_id=task_id, actor=Actor(user=user.username, dc=dc.name),
                                            owner=owner.username, node=node[0] if node else None,
                                            message_id=ticket.message_id)
        request.state.message_id = submission.message_id
        request.state.accepted_at = time.perf_counter()
        return submission

    def _prepare_import(self, request: Request, access: policy.Access, data: dict[str, Any]):
        return self.prepare_import_named(request, access, data, request.path_params["name"])

    def prepare_import_named(self, request: Request, access: policy.Access, data: dict[str, Any], name: str):
        """The checks and the command of ``POST /image/<name>/`` (``prepare`` of ``run_command``)."""
        if self.queries.image(name, document=False) is not None:
            raise ApiError(406, images.IMAGE_EXISTS)
        dc = self.queries.default_datacenter()
        if "dc" in data:  # as the original: only an absent dc means the request's; "" or null is looked up
            dc = self.queries.datacenter(str(data["dc"])) if isinstance(data["dc"], str) else None
            if dc is None or not access.sees(dc):
                raise ApiError(404, images.DC_NOT_FOUND)
        _enter(request, dc)  # the request's datacenter from here on (reference §4.3, 3.)
        policy.require_import_into(access, dc.name)
        payload = {k: data[k] for k in fields.IMPORT_FIELDS if k in data}
        if not access.is_superadmin:
            payload.pop("dc_bound", None)  # the original drops it silently for everybody else
        values, errors = images.check_import_shape({**payload, "name": name})
        owner = self._owner(values, errors, default=access.user)
        if not errors:
            self._check_url(values["manifest_url"], errors)
        if errors:
            raise ValidationFailed(errors)
        return ImportImage(name=name, **values), owner, dc

    def _prepare_update(self, request: Request, access: policy.Access, data: dict[str, Any]):
        image = self._existing_in_its_dc(request, request.path_params["name"])
        policy.require_manage(access, image.dc_bound)
        payload = {k: data[k] for k in fields.UPDATE_FIELDS if k in data}
        values, errors = images.check_update_shape(payload)
        owner = self._owner(values, errors, default=self.queries.user(image.owner) or access.user)
        if "dc_bound" in values and "dc_bound" not in errors:
            images.rebind(current=image.dc_bound, attached=image.attached, wanted=values["dc_bound"],
                          is_superadmin=access.is_superadmin, errors=errors)
        if errors:
            raise ValidationFailed(fields.order_errors(errors))
        expected = _expected_version(request, image)
        return (UpdateImage(name=image.name, **values, **expected), owner, self._image_dc(image.dc_bound))

    def _prepare_delete(self, request: Request, access: policy.Access, data: dict[str, Any]):
        image = self._existing_in_its_dc(request, request.path_params["name"])
        policy.require_manage(access, image.dc_bound)
        owner = self.queries.user(image.owner) or access.user
        return DeleteImage(name=image.name, **_expected_version(request, image)), owner, self._image_dc(image.dc_bound)

    # --- /dc/<dc>/image/ (reference §3.8) -------------------------------------------------------

    async def _dc_reader(self, request: Request) -> tuple[policy.Access, DatacenterRecord]:
        """A datacenter's image list is for its Admins (and SuperAdmins); an invisible DC is 404."""
        access = await access_of(self.auth, self.queries, request)
        dc = await in_thread(self._visible_dc, request.path_params["dc"], access)
        if not access.is_admin(dc.name):
            raise ApiError(403, images.PERMISSION_DENIED)
        _enter(request, dc)
        return access, dc

    async def dc_list_images(self, request: Request) -> Response:
        _, dc = await self._dc_reader(request)
        order = parse_order_by(request.query_params.get("order_by"), DC_ORDER_FIELDS)
        extended = query_flag(request, "extended")
        full = query_flag(request, "full") or extended
        paging, filters = paging_and_filters(request)
        chosen = ImageListing(order, HIDDEN_FROM_DC_LISTS, attached_to=dc.name, filters=filters)
        return await self.image_list(request, chosen, paging, full=full, extended=extended)

    async def dc_show_image(self, request: Request) -> Response:
        _, dc = await self._dc_reader(request)
        parse_order_by(request.query_params.get("order_by"), DC_ORDER_FIELDS)
        image = await in_thread(functools.partial(self._attached, request.path_params["name"], dc,
                                                          document=True))
        head = b'{"task_id":"' + dummy_task_id_for(request).encode() + b'","status":"SUCCESS","result":'
        return raw_json_response(request, head + image.encoded(extended=query_flag(request, "extended")) + b"}")

    async def dc_attach(self, request: Request) -> Response:
        return await self.run_command(request, self._prepare_attach, entry=self._superadmin)

    async def dc_detach(self, request: Request) -> Response:
        return await self.run_command(request, self._prepare_detach, entry=self._superadmin)

    def _prepare_attach(self, request: Request, access: policy.Access, data: dict[str, Any]):
        dc = self._visible_dc(request.path_params["dc"], access)
        image = self._existing(request.path_params["name"])
        if dc.name in image.attached:
            raise ApiError(406, images.IMAGE_EXISTS)
        return AttachImage(name=image.name, dc=dc.name), self.queries.user(image.owner) or access.user, dc

    def _prepare_detach(self, request: Request, access: policy.Access, data: dict[str, Any]):
        dc = self._visible_dc(request.path_params["dc"], access)
        image = self._attached(request.path_params["name"], dc)
        if self.queries.vms_using_image(image.uuid, [dc.name]):  # the updater checks again, under the row lock
            raise ApiError(428, images.IMAGE_USED_BY_VMS)
        return DetachImage(name=image.name, dc=dc.name), self.queries.user(image.owner) or access.user, dc

    def _visible_dc(self, name: str, access: policy.Access) -> DatacenterRecord:
        dc = self.queries.datacenter(name)
        if dc is None or not access.sees(dc):
            raise ApiError(404, images.DC_NOT_FOUND)
        return dc

    def _attached(self, name: str, dc: DatacenterRecord, *, document: bool = False):
        image = self.queries.image(name, document=document)
        if image is None or dc.name not in image.attached:
            raise ApiError(404, images.IMAGE_NOT_FOUND)
        return image

    def _existing_in_its_dc(self, request: Request, name: str, *, document: bool = False):
        """The image (404), whose bound datacenter (the default one for a global image) becomes the
        request's: the answer's ``es_dc`` and task id name it (reference §4.3, 3.)."""
        image = self._existing(name, document=document)
        _enter(request, self._image_dc(image.dc_bound))
        return image

    def _existing(self, name: str, *, document: bool = False):
        image = self.queries.image(name, document=document)
        if image is None:
            raise ApiError(404, images.IMAGE_NOT_FOUND)
        return image

    def _check_url(self, url: str, errors: dict[str, list[str]]) -> None:
        """Refuse a manifest URL the importer would refuse anyway, without any lookup (deviations #6)."""
        try:
            self.url_policy.check_static(url)
        except FetchError as exc:
            errors["manifest_url"] = [manifest.unreachable(str(exc))]

    def _owner(self, values: Mapping[str, Any], errors: dict[str, list[str]], *, default: UserRecord) -> UserRecord:
        return images.check_owner(self.queries, values, errors) or default

    def _image_dc(self, dc_bound: str | None) -> DatacenterRecord:
        """An existing image's tasks belong to its bound DC, a global image's to the default DC."""
        dc = self.queries.datacenter(dc_bound) if dc_bound else None
        return dc or self.queries.default_datacenter()


def paging_and_filters(request: Request) -> tuple[listing.Paging, listing.ImageFilters]:
    """An image list's ``limit``/``marker`` and filters: every bad one at once, a 400 with the
    field errors (checked after the entry permission, ``order_by`` and ``full``/``extended``)."""
    errors: dict[str, list[str]] = {}
    paging = listing.parse_paging(request.query_params, errors, keyed=True)
    filters = listing.parse_image_filters(request.query_params, errors)
    if errors:
        raise ValidationFailed(listing.ordered_errors(errors, listing.IMAGE_FILTERS))
    return paging, filters


def paging_of(request: Request, *, marker_max: int = listing.NAME_MAX) -> listing.Paging:
    """``limit``/``marker`` of a list without filters (400 with the field errors)."""
    errors: dict[str, list[str]] = {}
    paging = listing.parse_paging(request.query_params, errors, marker_max=marker_max)
    if errors:
        raise ValidationFailed(listing.ordered_errors(errors, ()))
    return paging


def page_answer(request: Request, items: Sequence[Any], key, paging: listing.Paging, render) -> Response:
    """The answer of a list held in memory: all of it, or the page ``paging`` asks for with the
    ``Link`` to the next one. ``key(item)``: the item's marker; ``render(items)``: the result."""
    headers: dict[str, str] = {}
    if paging.paged:
        found = listing.page_after(items, key, paging)
        if found is None:
            raise ValidationFailed({"marker": [listing.UNKNOWN_MARKER]})
        items, more = found
        if more and items:
            headers["Link"] = listing.next_link(request, key(items[-1]))
    body = {"task_id": dummy_task_id_for(request), "status": "SUCCESS", "result": render(items)}
    return json_response(request, body, headers=headers)


class _Chunks:
    """A blocking chunk generator stepped from the thread pool: one step at a time, and closed
    even when the answer is abandoned while a step runs (a step holds a pooled connection only
    while it reads its batch)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._lock = threading.Lock()

    def next(self) -> bytes:
        with self._lock:
            try:
                return next(self._chunks)
            except BaseException:
                self._chunks.close()
                raise

    def step(self) -> bytes | None:
        with self._lock:
            return next(self._chunks, None)

    def drain(self) -> bytes:
        with self._lock:
            return b"".join(self._chunks)

    def close(self) -> None:
        with self._lock:
            self._chunks.close()


async def _stream(first: bytes, chunks: _Chunks, tail: bytes) -> AsyncIterator[bytes]:
    try:
        yield first
        while (chunk := await in_thread(chunks.step)) is not None:
            yield chunk
        yield tail
    finally:
        # Not awaited: a cancelled answer must not wait, and the lock orders it after a running step.
        asyncio.get_running_loop().run_in_executor(None, chunks.close)


def vm_object(vm: VmRecord) -> dict[str, Any]:
    """A VM of ``GET /image/<name>/vm/?full=true``: where it runs and its disks."""
    return {"hostname": vm.hostname, "uuid": vm.uuid, "dc": vm.dc, "node": vm.node, "status": vm.status,
            "ostype": vm.ostype, "disks": [{"disk_id": d.disk_id, "size": d.size, "image_uuid": d.image_uuid}
                                           for d in vm.disks]}


class TaskRoutes:
    def __init__(self, *, queries: Queries, auth: Authenticator):
        self.queries = queries
        self.auth = auth

    async def status(self, request: Request) -> Response:
        access = await access_of(self.auth, self.queries, request)
        task_id = request.path_params["task_id"]
        parts = tasks.parse_task_id(task_id)
        if parts is None:
            # Not the original's form: a task id a program chose for a command it published itself.
            # Placed by what its consumer recorded (user, owner, datacenter), with the same rule;
            # unknown, it is what the original answers for a malformed id.
            view = await in_thread(self.queries.task, task_id)
            if view is None or not policy.may_read_recorded_task(access, view.dc, user=view.user, owner=view.owner):
                raise ApiError(403, images.PERMISSION_DENIED)
        else:
            # The original's UserTask permission: a well-formed id whose datacenter exists, asked
            # for by an Admin of that datacenter or by the task's user or owner.
            dc = await in_thread(self.queries.datacenter_by_id, parts["dc_id"])
            if dc is None or not policy.may_read_task(access, dc.name, user_id=parts["user_id"],
                                                      owner_id=parts["owner_id"]):
                raise ApiError(403, images.PERMISSION_DENIED)
            if tasks.is_dummy(task_id):
                raise ApiError(404, tasks.TASK_NOT_FOUND)
            view = await in_thread(self.queries.task, task_id)
            if view is None:
                raise ApiError(404, tasks.TASK_NOT_FOUND)
        code, body = status_body(view)
        return json_response(request, body, code, {"es_task_id": task_id, "es_task_response": "true"})


class AccountRoutes:
    """``POST /api/accounts/login/`` and ``GET /api/accounts/logout/`` (the ``es`` client's login)."""

    WELCOME = "Welcome to Danube Cloud API."
    BAD_CREDENTIALS = "Unable to log in with provided credentials."

    def __init__(self, *, queries: Queries, auth: Authenticator, token_seconds: float, max_body_bytes: int,
                 hashing: BoundedPool, throttle: Throttle | NoThrottle = NoThrottle(),
                 attempts: Throttle | NoThrottle = NoThrottle()):
        self.throttle = throttle
        self.attempts = attempts
        self.hashing = hashing
        self.queries = queries
        self.auth = auth
        self.token_seconds = token_seconds
        self.max_body_bytes = max_body_bytes

    async def login(self, request: Request) -> Response:
        # Anonymous: counted per client address (the connection's peer, or what a trusted proxy
        # says: IMAGESVC_TRUSTED_PROXIES).
        address = request.client.host if request.client else None
        self.throttle.check(("address", address))
        data = await read_json_body(request, self.max_body_bytes)
        # The original's answers: 400 {"detail": <the serializer's errors, or its one message>}.
        required = {f: ["This field is required."] for f in ("username", "password")
                    if not isinstance(data.get(f), str) or not data[f]}
        if required:
            return json_response(request, {"detail": required}, 400)
        # No user name is longer (fields.username): a longer one need not be kept whole.
        attempt = (("login-user", data["username"][:150]), ("login-address", address))
        self.attempts.check(*attempt)
        try:
            user = await self.hashing.run(self._check_credentials, data["username"], data["password"])
        except Busy:
            self.attempts.give_back(*attempt)  # not tried: it must not count against the user
            raise throttled(1) from None
        if user is None:
            raise ApiError(400, self.BAD_CREDENTIALS)
        self.attempts.give_back(*attempt)  # the right password: not a failure
        if not user.api_access:
            raise ApiError(400, NO_API_ACCESS + ".")
        token = new_api_key()
        expires = utcnow() + timedelta(seconds=self.token_seconds)
        await in_thread(self.queries.create_token, user.id, key_digest(token), expires)
        request.state.username = user.username
        return json_response(request, {"token": token, "expires": images.format_time(expires),
                                       "detail": self.WELCOME})

    def _check_credentials(self, username: str, password: str) -> UserRecord | None:
        """(The hashing pool: hashing is slow by design.) The user, if the password is theirs."""
        found = self.queries.login_candidate(username)
        user, stored = found if found is not None else (None, None)
        # A missing user costs the same hashing as a wrong password: no timing hint either way.
        matches = check_password(password, stored or _DECOY_HASH)
        return user if user is not None and stored and matches and user.is_active else None

    async def logout(self, request: Request) -> Response:
        await self.auth.user(request)
        digest = getattr(request.state, "token_digest", None)
        if digest is not None:
            await in_thread(self.queries.delete_token, digest)
        return json_response(request, {"detail": "Bye."})


_DECOY_HASH = hash_password("not a password of anybody")
