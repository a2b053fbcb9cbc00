"""The HTTP API under ``/api``: each route parses, checks in the reference's order, then reads the
read model or builds a command for the dispatcher. No business decision is final here: the
consumer re-checks everything; the gateway's checks only spare the broker doomed requests.
"""

from __future__ import annotations

from typing import Any, Mapping

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from domain import fields, images, manifest, policy, tasks
from services.gateway.auth import Authenticator
from services.gateway.dispatch import Dispatcher, status_body
from services.gateway.http import (
    ApiError,
    ValidationFailed,
    dummy_task_id_for,
    json_response,
    raw_json_response,
    read_json_body,
)
from services.gateway.queries import ORDER_FIELDS, Queries
from shared.contracts import Actor, DeleteImage, ImportImage, UpdateImage
from shared.db.records import DatacenterRecord, UserRecord
from shared.net.fetch import FetchError, UrlPolicy

HIDDEN_FROM_LISTS = (fields.ACCESS_INTERNAL,)


def parse_order_by(raw: Any) -> list[tuple[str, bool]]:
    """``name,-created`` -> [("name", False), ("created", True)]. 412 for anything else (deviations #2)."""
    if raw is None or raw == "":
        return [("name", False)]
    order = []
    for item in str(raw).split(","):
        item = item.strip()
        descending = item.startswith("-")
        field = item[1:] if item[:1] in ("-", "+") else item
        if field not in ORDER_FIELDS:
            raise ApiError(412, "Invalid order_by; Possible sort fields are: " + ", ".join(ORDER_FIELDS))
        order.append((field, descending))
    return order


def query_flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return False
    try:
        return fields.boolean(raw)
    except fields.FieldError as exc:
        raise ValidationFailed({name: exc.messages}) from None


class ImageRoutes:
    def __init__(self, *, queries: Queries, auth: Authenticator, dispatcher: Dispatcher, url_policy: UrlPolicy,
                 max_body_bytes: int):
        self.queries = queries
        self.auth = auth
        self.dispatcher = dispatcher
        self.url_policy = url_policy
        self.max_body_bytes = max_body_bytes

    async def _admin(self, request: Request) -> UserRecord:
        return policy.require_image_admin(await self.auth.user(request))

    async def _default_dc(self, request: Request) -> DatacenterRecord:
        dc = self.queries.cached_default_datacenter() or await run_in_threadpool(self.queries.default_datacenter)
        request.state.dc, request.state.dc_id = dc.name, dc.id
        return dc

    # --- GET /image/ ---------------------------------------------------------------------------

    async def list_images(self, request: Request) -> Response:
        await self._admin(request)
        await self._default_dc(request)
        order = parse_order_by(request.query_params.get("order_by"))
        extended = query_flag(request, "extended")
        full = query_flag(request, "full") or extended
        head = b'{"task_id":"' + dummy_task_id_for(request).encode() + b'","status":"SUCCESS","result":'
        if full:
            docs = await run_in_threadpool(self.queries.image_docs, order, exclude_access=HIDDEN_FROM_LISTS,
                                           extended=extended)
            return raw_json_response(request, head + b"[" + b",".join(docs) + b"]}")
        names = await run_in_threadpool(self.queries.image_names, order, exclude_access=HIDDEN_FROM_LISTS)
        return json_response(request, {"task_id": dummy_task_id_for(request), "status": "SUCCESS", "result": names})

    # --- /image/<name>/ ------------------------------------------------------------------------

    async def show(self, request: Request) -> Response:
        await self._admin(request)
        await self._default_dc(request)
        parse_order_by(request.query_params.get("order_by"))
        extended = query_flag(request, "extended")
        image = await self._existing(request)
        head = b'{"task_id":"' + dummy_task_id_for(request).encode() + b'","status":"SUCCESS","result":'
        return raw_json_response(request, head + image.encoded(extended=extended) + b"}")

    async def _existing(self, request: Request):
        image = await run_in_threadpool(self.queries.image, request.path_params["name"])
        if image is None:
            raise ApiError(404, images.IMAGE_NOT_FOUND)
        return image

    async def _body(self, request: Request) -> dict[str, Any]:
        data = await read_json_body(request, self.max_body_bytes)
        if "order_by" in data:
            parse_order_by(data["order_by"])
        return data

    async def create(self, request: Request) -> Response:
        user = await self._admin(request)
        default_dc = await self._default_dc(request)
        data = await self._body(request)
        name = request.path_params["name"]
        if await run_in_threadpool(self.queries.image, name) is not None:
            raise ApiError(406, images.IMAGE_EXISTS)
        dc = default_dc
        if data.get("dc") is not None:
            found = await self._datacenter(str(data["dc"]))
            if found is None:
                raise ApiError(404, images.DC_NOT_FOUND)
            dc = found
        request.state.dc, request.state.dc_id = dc.name, dc.id
        payload = {k: data[k] for k in fields.IMPORT_FIELDS if k in data}
        values, errors = images.check_import_shape({**payload, "name": name})
        owner = await self._owner(values, errors, default=user)
        if not errors:
            self._check_url(values["manifest_url"], errors)
        if errors:
            raise ValidationFailed(errors)
        command = ImportImage(name=name, **values)
        task_id = tasks.new_task_id(user_id=user.id, owner_id=owner.id, dc_id=dc.id)
        return await self.dispatcher.submit(request, command, task_id=task_id,
                                            actor=Actor(user=user.username, dc=dc.name), owner=owner.username)

    def _check_url(self, url: str, errors: dict[str, list[str]]) -> None:
        """Refuse a manifest URL the importer would refuse anyway, without any lookup (deviations #6)."""
        try:
            self.url_policy.check_static(url)
        except FetchError as exc:
            errors["manifest_url"] = [manifest.unreachable(str(exc))]

    async def _owner(self, values: Mapping[str, Any], errors: dict[str, list[str]], *, default: UserRecord) -> UserRecord:
        if "owner" not in values or "owner" in errors:
            return default
        owner = await self._user(values["owner"])
        if owner is None or not owner.is_active:
            errors["owner"] = [images.owner_missing(values["owner"])]
            return default
        return owner

    async def update(self, request: Request) -> Response:
        user = await self._admin(request)
        await self._default_dc(request)
        data = await self._body(request)
        image = await self._existing(request)
        dc = await self._image_dc(request, image.dc_bound)
        payload = {k: data[k] for k in fields.UPDATE_FIELDS if k in data}
        values, errors = images.check_update_shape(payload)
        owner = await self._owner(values, errors, default=await self._user_named(image.owner, user))
        if errors:
            raise ValidationFailed(fields.order_errors(errors))
        command = UpdateImage(name=image.name, **values)
        task_id = tasks.new_task_id(user_id=user.id, owner_id=owner.id, dc_id=dc.id)
        return await self.dispatcher.submit(request, command, task_id=task_id,
                                            actor=Actor(user=user.username, dc=dc.name), owner=owner.username)

    async def delete(self, request: Request) -> Response:
        user = await self._admin(request)
        await self._default_dc(request)
        await self._body(request)
        image = await self._existing(request)
        dc = await self._image_dc(request, image.dc_bound)
        owner = await self._user_named(image.owner, user)
        task_id = tasks.new_task_id(user_id=user.id, owner_id=owner.id, dc_id=dc.id)
        return await self.dispatcher.submit(request, DeleteImage(name=image.name), task_id=task_id,
                                            actor=Actor(user=user.username, dc=dc.name), owner=owner.username)

    async def _image_dc(self, request: Request, dc_bound: str | None) -> DatacenterRecord:
        """An existing image's tasks belong to its bound DC, a global image's to the default DC."""
        dc = await self._datacenter(dc_bound) if dc_bound else None
        if dc is None:
            dc = await self._default_dc(request)
        request.state.dc, request.state.dc_id = dc.name, dc.id
        return dc

    async def _user_named(self, username: str, fallback: UserRecord) -> UserRecord:
        return await self._user(username) or fallback

    async def _user(self, username: str) -> UserRecord | None:
        return self.queries.cached_user(username) or await run_in_threadpool(self.queries.user_by_name, username)

    async def _datacenter(self, name: str) -> DatacenterRecord | None:
        return self.queries.cached_datacenter(name) or await run_in_threadpool(self.queries.datacenter, name)


class TaskRoutes:
    def __init__(self, *, queries: Queries, auth: Authenticator):
        self.queries = queries
        self.auth = auth

    async def status(self, request: Request) -> Response:
        user = await self.auth.user(request)
        task_id = request.path_params["task_id"]
        parts = tasks.parse_task_id(task_id)
        if parts is None:
            raise ApiError(403, images.PERMISSION_DENIED)
        if not user.is_superadmin and user.id not in (parts["user_id"], parts["owner_id"]):
            raise ApiError(403, images.PERMISSION_DENIED)
        if parts["type"] == "d":
            raise ApiError(404, tasks.TASK_NOT_FOUND)
        view = await run_in_threadpool(self.queries.task, task_id)
        if view is None:
            raise ApiError(404, tasks.TASK_NOT_FOUND)
        code, body = status_body(view)
        return json_response(request, body, code, {"es_task_id": task_id, "es_task_response": "true"})
