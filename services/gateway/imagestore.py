"""``/api/imagestore/...``: remote image repositories (reference §3.8).

Every route requires ``IsAnyDcImageImportAdmin`` (403 ``Permission denied``) and works in the
default datacenter. Lists and objects are read from what the last refresh stored; a refresh is an
``imagestore.refresh`` command (the importer fetches: the gateway never does, deviations #6);
importing a repository image is ``POST /image/<name>/`` with the repository's manifest URL.
"""

from __future__ import annotations

from typing import Any, Mapping

from starlette.requests import Request
from starlette.responses import Response

from imagesvc.domain import fields, images, policy, repositories
from imagesvc.services.gateway.blocking import in_thread
from imagesvc.services.gateway.http import ApiError, ValidationFailed, dummy_task_id_for, json_response
from imagesvc.services.gateway.routes import ImageRoutes, access_of, page_answer, paging_of, wants_objects
from imagesvc.shared.contracts import RefreshImageRepositories
from imagesvc.shared.db.catalogue import storable


class ImageStoreRoutes:
    """``configured``: the repositories of the configuration (name -> URL); ``local``: the image
    server as a repository (name, URL), or None."""

    def __init__(self, *, images: ImageRoutes, configured: Mapping[str, str], local: tuple[str, str] | None):
        self.images = images
        self.queries = images.queries
        self.configured = dict(configured)
        self.local = local

    async def _entry(self, request: Request) -> policy.Access:
        access = policy.require_image_import_admin_somewhere(
            await access_of(self.images.auth, self.queries, request))
        await self.images.enter_default_dc(request)
        return access

    def _visible(self, access: policy.Access) -> dict[str, str]:
        return repositories.visible(self.configured, self.local, is_superadmin=access.is_superadmin)

    def _url_of(self, access: policy.Access, name: str) -> str:
        url = self._visible(access).get(name)
        if url is None:
            raise ApiError(404, repositories.NOT_FOUND)
        return url

    def _success(self, request: Request, result: Any) -> Response:
        return json_response(request, {"task_id": dummy_task_id_for(request), "status": "SUCCESS", "result": result})

    # --- GET /imagestore/ and /imagestore/<name>/ -----------------------------------------------

    async def list_repositories(self, request: Request) -> Response:
        access = await self._entry(request)
        visible = self._visible(access)
        full = wants_objects(request)
        paging = paging_of(request)  # its marker: a repository's name
        if not full:
            return page_answer(request, list(visible), str, paging, list)
        states = await in_thread(self.queries.repositories, list(visible))
        return page_answer(request, list(visible), str, paging,
                           lambda page: [repositories.repository_object(name, visible[name], states.get(name))
                                         for name in page])

    async def show_repository(self, request: Request) -> Response:
        access = await self._entry(request)
        name = request.path_params["name"]
        url = self._url_of(access, name)
        states = await in_thread(self.queries.repositories, [name])
        return self._success(request, repositories.repository_object(name, url, states.get(name)))

    # --- PUT /imagestore/ and /imagestore/<name>/ -----------------------------------------------

    async def refresh_all(self, request: Request) -> Response:
        return await self.images.run_command(request, self._prepare_refresh_all, entry=self._entry)

    async def refresh_one(self, request: Request) -> Response:
        return await self.images.run_command(request, self._prepare_refresh_one, entry=self._entry)

    def _prepare_refresh_all(self, request: Request, access: policy.Access, data: dict[str, Any]):
        command = RefreshImageRepositories(repositories=self._visible(access))
        return command, access.user, self.queries.default_datacenter()

    def _prepare_refresh_one(self, request: Request, access: policy.Access, data: dict[str, Any]):
        name = request.path_params["name"]
        command = RefreshImageRepositories(repositories={name: self._url_of(access, name)}, name=name)
        return command, access.user, self.queries.default_datacenter()

    # --- /imagestore/<name>/image/ --------------------------------------------------------------

    def _stored_images(self, access: policy.Access, name: str) -> tuple[str, list[dict[str, Any]]]:
        """(Thread pool.) The repository's URL and the manifests its last refresh stored."""
        url = self._url_of(access, name)
        record = repositories.current(self.queries.repositories([name], with_images=True).get(name), url)
        return url, (record.images if record is not None else None) or []

    async def list_images(self, request: Request) -> Response:
        access = await self._entry(request)
        full = wants_objects(request)
        url, stored = await in_thread(self._stored_images, access, request.path_params["name"])
        paging = paging_of(request)  # its marker: an image's uuid (after the repository's 404)
        if full:
            return page_answer(request, stored, _uuid, paging,
                               lambda page: [repositories.image_object(entry, url) for entry in page])
        return page_answer(request, stored, _uuid, paging, lambda page: [entry["uuid"] for entry in page])

    async def show_image(self, request: Request) -> Response:
        access = await self._entry(request)
        url, stored = await in_thread(self._stored_images, access, request.path_params["name"])
        entry = _find(stored, request.path_params["uuid"])
        return self._success(request, repositories.image_object(entry, url))

    # --- POST /imagestore/<name>/image/<uuid>/ --------------------------------------------------

    async def import_image(self, request: Request) -> Response:
        return await self.images.run_command(request, self._prepare_import, entry=self._entry)

    def _prepare_import(self, request: Request, access: policy.Access, data: dict[str, Any]):
        """The original's imagestore import: the repository (404), its cached image (404), the
        import's parameters from it, 406 when the uuid or the name is taken; then exactly
        ``POST /image/<name>/`` with those parameters, entry permission included."""
        url, stored = self._stored_images(access, request.path_params["name"])
        entry = _find(stored, request.path_params["uuid"])
        # As the original: an absent or empty name means the manifest's.
        name = data.get("name") or entry.get("name")
        if not isinstance(name, str) or not storable(name, 64):
            raise ValidationFailed({"name": images.name_errors(name) or [fields.INVALID]})  # it cannot name an image, nor be looked up
        data = {k: v for k, v in data.items() if k not in ("file_url", "name")}
        data["manifest_url"] = repositories.manifest_url(url, entry["uuid"])
        if self.queries.image_uuid_taken(entry["uuid"]) or self.queries.image(name, document=False) is not None:
            raise ApiError(406, images.IMAGE_EXISTS)
        policy.require_image_admin_somewhere(access)  # the entry permission of POST /image/<name>/
        return self.images.prepare_import_named(request, access, data, name)


def _uuid(entry: dict[str, Any]) -> str:
    return str(entry.get("uuid"))


def _find(stored: list[dict[str, Any]], uuid: str) -> dict[str, Any]:
    for entry in stored:
        if entry.get("uuid") == uuid:
            return entry
    raise ApiError(404, images.IMAGE_NOT_FOUND)
