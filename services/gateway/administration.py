"""Account administration over HTTP, for SuperAdmins, where the original has it: users and their
API keys (``/accounts/user/``), groups, i.e. roles (``/accounts/group/``), datacenters
(``/dc/``) and grants (``/dc/<dc>/group/<name>/``).

Accounts, roles and datacenters are configuration, not catalogue state: like ``imagesvc admin``,
these routes write them in one database transaction (no command, no event), and every consumer
reads them afresh for each command. A new API key is shown once, in the answer, and stored as
its digest only.
"""

from __future__ import annotations

from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import Response

from imagesvc.domain import fields, policy
from imagesvc.services.gateway.auth import Authenticator
from imagesvc.services.gateway.blocking import in_thread
from imagesvc.services.gateway.http import ApiError, ValidationFailed, dummy_task_id_for, envelope, json_response, read_json_body
from imagesvc.services.gateway.queries import Queries
from imagesvc.services.gateway.routes import access_of, wants_objects
from imagesvc.shared.db import accounts
from imagesvc.shared.keys import hash_password, new_api_key

KINDS = {"user": "User", "group": "Group", "dc": "Datacenter"}
_MISSING_USER = "Object with username={} does not exist."


class AdministrationRoutes:
    def __init__(self, *, queries: Queries, auth: Authenticator, max_body_bytes: int):
        self.queries = queries
        self.auth = auth
        self.max_body_bytes = max_body_bytes

    async def _superadmin(self, request: Request) -> None:
        policy.require_superadmin(await access_of(self.auth, self.queries, request))

    def _answer(self, request: Request, result: Any, status: int = 200) -> Response:
        return json_response(request, envelope(dummy_task_id_for(request), "SUCCESS", result), status)

    def _listed(self, request: Request, rows: list[dict], key: str) -> Response:
        full = wants_objects(request)
        return self._answer(request, rows if full else [row[key] for row in rows])

    def _one(self, request: Request, kind: str, rows: list[dict], key: str, value: str) -> Response:
        row = accounts.find(rows, key, value)
        if row is None:
            raise ApiError(404, f"{KINDS[kind]} not found")
        return self._answer(request, row)

    async def _create(self, request: Request, kind: str, write: Callable[[Any], None], reread: Callable[[], Any]
                      ) -> Response:
        try:
            await in_thread(self.queries.administer, write)
        except accounts.AccountExists:
            raise ApiError(406, f"{KINDS[kind]} already exists") from None
        except accounts.NotFound as exc:
            raise ApiError(404, str(exc)) from None
        return self._answer(request, await in_thread(reread), 201)

    # --- users ---------------------------------------------------------------------------------

    async def list_users(self, request: Request) -> Response:
        await self._superadmin(request)
        return self._listed(request, await in_thread(self.queries.administered, accounts.list_users),
                                  "username")

    async def show_user(self, request: Request) -> Response:
        await self._superadmin(request)
        rows = await in_thread(self.queries.administered, accounts.list_users)
        return self._one(request, "user", rows, "username", request.path_params["username"])

    async def create_user(self, request: Request) -> Response:
        await self._superadmin(request)
        username = request.path_params["username"]
        data = await read_json_body(request, self.max_body_bytes)
        values, errors = _parse(data, {"is_super_admin": fields.boolean, "api_access": fields.boolean,
                                       "password": _password})
        if errors:
            raise ValidationFailed(errors)
        hashed = hash_password(values["password"]) if "password" in values else None

        def write(conn) -> None:
            try:
                accounts.create_user(conn, username, api_key=None, is_superadmin=values.get("is_super_admin", False),
                                     api_access=values.get("api_access", True), password_hash=hashed)
            except ValueError as exc:
                raise ValidationFailed({"username": [str(exc)]}) from None

        return await self._create(request, "user", write, lambda: accounts.find(
            self.queries.administered(accounts.list_users), "username", username))

    async def new_api_key(self, request: Request) -> Response:
        """``PUT /accounts/user/<username>/apikeys/``: a new API key, shown this once."""
        await self._superadmin(request)
        username = request.path_params["username"]
        key = new_api_key()

        def write(conn) -> None:
            if not accounts.set_api_key(conn, username, key):
                raise ApiError(404, "User not found")

        await in_thread(self.queries.administer, write)
        return self._answer(request, {"api_key": key})

    # --- groups (roles) ------------------------------------------------------------------------

    async def list_groups(self, request: Request) -> Response:
        await self._superadmin(request)
        return self._listed(request, await in_thread(self.queries.administered, accounts.list_roles),
                                  "name")

    async def show_group(self, request: Request) -> Response:
        await self._superadmin(request)
        rows = await in_thread(self.queries.administered, accounts.list_roles)
        return self._one(request, "group", rows, "name", request.path_params["name"])

    async def create_group(self, request: Request) -> Response:
        await self._superadmin(request)
        name = request.path_params["name"]
        data = await read_json_body(request, self.max_body_bytes)
        values, errors = _parse(data, {"permissions": _permissions, "users": _names})
        if errors:
            raise ValidationFailed(errors)

        def write(conn) -> None:
            try:
                accounts.create_role(conn, name, values.get("permissions", []))
            except ValueError as exc:
                raise ValidationFailed({"name": [str(exc)]}) from None
            known = {row["username"] for row in accounts.list_users(conn)}
            missing = [u for u in values.get("users", []) if u not in known]
            if missing:
                raise ValidationFailed({"users": [_MISSING_USER.format(missing[0])]})
            for username in values.get("users", []):
                accounts.add_member(conn, name, username)

        return await self._create(request, "group", write, lambda: accounts.find(
            self.queries.administered(accounts.list_roles), "name", name))

    # --- datacenters and grants ----------------------------------------------------------------

    async def list_dcs(self, request: Request) -> Response:
        await self._superadmin(request)
        return self._listed(request, await in_thread(self.queries.administered, accounts.list_datacenters),
                                  "name")

    async def show_dc(self, request: Request) -> Response:
        await self._superadmin(request)
        rows = await in_thread(self.queries.administered, accounts.list_datacenters)
        return self._one(request, "dc", rows, "name", request.path_params["dc"])

    async def create_dc(self, request: Request) -> Response:
        await self._superadmin(request)
        name = request.path_params["dc"]
        data = await read_json_body(request, self.max_body_bytes)
        values, errors = _parse(data, {"owner": fields.username, "access": _dc_access})
        if errors:
            raise ValidationFailed(errors)

        def write(conn) -> None:
            if "owner" in values and not _user_exists(conn, values["owner"]):
                raise ValidationFailed({"owner": [_MISSING_USER.format(values["owner"])]})
            try:
                accounts.create_datacenter(conn, name, owner=values.get("owner"),
                                           public=values.get("access") == policy.PUBLIC)
            except ValueError as exc:
                raise ValidationFailed({"name": [str(exc)]}) from None

        return await self._create(request, "dc", write, lambda: accounts.find(
            self.queries.administered(accounts.list_datacenters), "name", name))

    async def list_dc_groups(self, request: Request) -> Response:
        await self._superadmin(request)
        dc = request.path_params["dc"]
        roles = await in_thread(self.queries.administered, accounts.list_roles)
        if accounts.find(await in_thread(self.queries.administered, accounts.list_datacenters), "name", dc) is None:
            raise ApiError(404, "Datacenter not found")
        return self._answer(request, [role["name"] for role in roles if dc in role["dcs"]])

    async def attach_group(self, request: Request) -> Response:
        return await self._grant(request, attach=True)

    async def detach_group(self, request: Request) -> Response:
        return await self._grant(request, attach=False)

    async def _grant(self, request: Request, *, attach: bool) -> Response:
        """Give a group's permissions in a datacenter (or take them back)."""
        await self._superadmin(request)
        dc, name = request.path_params["dc"], request.path_params["name"]

        def write(conn) -> None:
            if accounts.find(accounts.list_datacenters(conn), "name", dc) is None:
                raise ApiError(404, "Datacenter not found")
            role = accounts.find(accounts.list_roles(conn), "name", name)
            if role is None:
                raise ApiError(404, "Group not found")
            if attach and dc in role["dcs"]:
                raise ApiError(406, "Group already exists")
            if not attach and dc not in role["dcs"]:
                raise ApiError(404, "Group not found")
            (accounts.attach_role if attach else accounts.detach_role)(conn, name, dc)

        await in_thread(self.queries.administer, write)
        role = accounts.find(await in_thread(self.queries.administered, accounts.list_roles), "name", name)
        return self._answer(request, role, 201 if attach else 200)


def _parse(data: dict[str, Any], parsers: dict[str, Callable[[Any], Any]]) -> tuple[dict, dict]:
    values, errors = {}, {}
    for key, parse in parsers.items():
        if key in data:
            try:
                values[key] = parse(data[key])
            except fields.FieldError as exc:
                errors[key] = exc.messages
    return values, errors


def _password(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise fields.FieldError(fields.REQUIRED)
    if fields.has_control_characters(value) or len(value) > 1024:
        raise fields.FieldError(fields.INVALID)
    return value


def _names(value: Any) -> list[str]:
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(items, list):
        raise fields.FieldError(fields.INVALID)
    return [fields.username(item) for item in items]


def _permissions(value: Any) -> list[str]:
    names = _names(value)
    for name in names:
        if name not in accounts.PERMISSIONS:
            raise fields.FieldError(f"Select a valid choice. {name} is not one of the available choices.")
    return names


def _dc_access(value: Any) -> int:
    number = fields.integer(value)
    if number not in (1, 3):
        raise fields.FieldError(f"Select a valid choice. {number} is not one of the available choices.")
    return number


def _user_exists(conn, username: str) -> bool:
    return accounts.find(accounts.list_users(conn), "username", username) is not None
