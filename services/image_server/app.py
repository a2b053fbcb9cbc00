"""The image server's ASGI app: the image store, read-only, as the original's image server
(esdc-shipment) serves it to compute nodes and other installations (reference §9.3).

    GET|HEAD /ping                 200 {"ping": "pong"} while the store passes its check, else 503
    GET|HEAD /healthz, /readyz     alive; ready while the store passes its check (else 503)
    GET|HEAD /images               the manifests of every image in the store, by uuid
    GET|HEAD /images/<uuid>        one manifest
    GET|HEAD /images/<uuid>/file   the file: Content-Length, Content-MD5, Last-Modified, one byte range
    GET|HEAD /openapi.json         this server's OpenAPI 3.1 description (openapi.py)

Errors are IMGAPI's ``{"code", "message"}`` bodies (404 ``ResourceNotFound``). Nothing here writes
to the store except the store's own MD5 cache. A store that cannot answer (``StoreUnavailable``:
unreachable, throttling, server errors after the store's retries) is a 503 ``ServiceUnavailable``
with Retry-After; any other store failure (e.g. a stored manifest that is not JSON) a 500
``InternalError`` naming no detail (that goes to the log, without a traceback). A store that cannot
sign a download URL has the file streamed instead.

Content-MD5 (base64 of the file's MD5, RFC 1864) is sent with whole-file answers only: a 206 would
need the digest of the part. The MD5 of a multi-GiB file takes a while to compute, so the store
computes it once per version of the file and caches it; the first whole-file GET of a new file
waits for it before its headers are sent. A HEAD computes it only for files up to
``HEAD_MD5_INLINE_BYTES`` and otherwise sends Content-MD5 only once it is cached: a HEAD must stay
cheap.

The file is read through the store (``ImageStore.open_file``), only the span answered: from an
S3 store a range is one ranged GET. With ``IMAGESVC_IMAGE_SERVER_REDIRECT=presigned`` (an S3
store only) a GET of the file is answered 302 to a short-lived presigned URL of the object
instead (``ImageStore.download_url``); HEAD is still answered here.
"""

from __future__ import annotations

import base64
import time
import uuid as uuidlib
from email.utils import formatdate
from typing import Any, AsyncIterator, Mapping

import orjson
import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagesvc.services.image_server import openapi
from imagesvc.services.image_server.ranges import Unsatisfiable, requested_range
from imagesvc.shared import health
from imagesvc.shared.logging import get_logger
from imagesvc.shared.store import FileInfo, ImageStore, OpenedFile, StoreError, StoreUnavailable, check_uuid

log = get_logger("image_server")

#: Largest file whose MD5 a HEAD computes when it is not cached yet (about 0.1 s of hashing).
HEAD_MD5_INLINE_BYTES = 64 * 1024 * 1024
#: Bytes read from the file per trip to the thread pool while streaming.
STREAM_CHUNK_BYTES = 1024 * 1024
#: Times a file replaced between its look-up and its opening is looked up again.
_REOPENS = 3
#: Seconds a client is told to wait when the store cannot answer.
STORE_RETRY_AFTER = 5

_OCTET_STREAM = "application/octet-stream"


def serves(path: str) -> bool:
    """Whether ``path`` is the image server's (how ``serve`` shares one port with the gateway)."""
    return path in ("/ping", "/ping/", "/images", "/openapi.json") or path.startswith("/images/")


def create_app(store: ImageStore) -> Starlette:
    """The image server over ``store``."""
    server = _ImageServer(store)
    routes = [
        *_both_forms("/ping", server.ping),
        Route("/healthz", server.alive, methods=["GET"]),
        Route("/readyz", server.ready, methods=["GET"]),
        *_both_forms("/images", server.list_images),
        *_both_forms("/images/{uuid}", server.show_image),
        *_both_forms("/images/{uuid}/file", server.image_file),
        Route("/openapi.json", server.description, methods=["GET"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_request_log)],
                    exception_handlers={HTTPException: _http_error, StoreError: _store_error})
    app.router.redirect_slashes = False  # never a redirect built from the request's Host header
    return app


def _both_forms(path: str, endpoint) -> list[Route]:
    # Starlette adds HEAD to every GET route; nothing else is served.
    return [Route(path, endpoint, methods=["GET"]), Route(path + "/", endpoint, methods=["GET"])]


class FileChanged(Exception):
    """The file ended before the length announced in the headers (it was truncated in place,
    which the store's contract rules out): the connection is aborted rather than completed short."""


class _ImageServer:
    def __init__(self, store: ImageStore):
        self.store = store
        self._readiness = health.Readiness({"store": health.store_check(store)}, details=False)
        self._description = orjson.dumps(openapi.document())

    async def description(self, request: Request) -> Response:
        return Response(self._description, media_type="application/json")

    async def alive(self, request: Request) -> Response:
        return _json(health.ALIVE)

    async def ready(self, request: Request) -> Response:
        is_ready, body = await run_in_threadpool(self._readiness.report)
        return _json(body, 200 if is_ready else 503)

    async def ping(self, request: Request) -> Response:
        try:
            await run_in_threadpool(self.store.check)
        except StoreUnavailable as exc:
            # The detail names server paths: it goes to the log, not to an anonymous client.
            log.warning("image_store.unavailable", store=self.store.location, error=str(exc))
            return _error(503, "ServiceUnavailable", "Image store is not available")
        return _json({"ping": "pong"})

    async def list_images(self, request: Request) -> Response:
        return Response(await run_in_threadpool(self._encoded_manifests), media_type="application/json")

    def _encoded_manifests(self) -> bytes:
        manifests = []
        for uuid in self.store.uuids():
            try:
                manifest = self.store.manifest(uuid)
            except StoreError as exc:
                log.warning("image.manifest_unreadable", uuid=uuid, error=str(exc))
                continue
            if manifest is not None:  # None: deleted since the listing
                manifests.append(manifest)
        return orjson.dumps(manifests)

    async def show_image(self, request: Request) -> Response:
        uuid = _image_uuid(request)
        if uuid is None:
            return _not_found()
        manifest = await run_in_threadpool(self.store.manifest, uuid)
        return _not_found() if manifest is None else _json(manifest)

    async def image_file(self, request: Request) -> Response:
        uuid = _image_uuid(request)
        if uuid is None:
            return _not_found()
        for _ in range(_REOPENS):
            info = await run_in_threadpool(self._published_file, uuid)
            if info is None:
                return _not_found()
            if request.method == "GET":
                # A store that offers direct downloads (an S3 store with presigned URLs):
                # the client fetches the bytes, ranges included, from the object store.
                location = await run_in_threadpool(self._download_url, uuid)
                if location is not None:
                    return Response(b"", status_code=302, headers={"Location": location, "Cache-Control": "no-store"})
            response = await self._file_response(request, uuid, info)
            if response is not None:
                return response
        # Replaced between every look and open: a client that retries gets the settled file.
        return _error(503, "ServiceUnavailable", "The image file is being replaced; try again", {"Retry-After": "1"})

    def _download_url(self, uuid: str) -> str | None:
        """The store's direct-download URL, or None: then the file is streamed from here (a store
        that cannot sign one now, e.g. without credentials, may still be readable)."""
        try:
            return self.store.download_url(uuid)
        except StoreError as exc:
            log.warning("image_file.no_download_url", uuid=uuid, error=str(exc))
            return None

    def _published_file(self, uuid: str) -> FileInfo | None:
        """The file of an image that is in the store (has its manifest), or None."""
        if self.store.manifest(uuid) is None:
            return None
        return self.store.file_info(uuid)

    async def _file_response(self, request: Request, uuid: str, info: FileInfo) -> Response | None:
        """The answer for the file as ``info`` describes it; None when the file opened is
        another version (replaced since ``info`` was read): every header must describe the bytes
        sent."""
        size = info.size
        last_modified = formatdate(info.modified, usegmt=True)
        headers = {"Accept-Ranges": "bytes", "Last-Modified": last_modified}
        byte_range = None
        if_range = request.headers.get("if-range")
        # A Range applies to GET only, and under If-Range only to the version the client has.
        if request.method == "GET" and (if_range is None or if_range.strip() == last_modified):
            try:
                byte_range = requested_range(request.headers.get("range"), size)
            except Unsatisfiable:
                return _error(416, "RequestedRangeNotSatisfiable", "Requested range not satisfiable",
                              {**headers, "Content-Range": f"bytes */{size}"})
        if byte_range is None:
            may_compute = request.method == "GET" or size <= HEAD_MD5_INLINE_BYTES
            md5 = await run_in_threadpool(self._md5_of, uuid, info, may_compute)
            if md5 is not None:
                headers["Content-MD5"] = base64.b64encode(bytes.fromhex(md5)).decode()
            first, length, status = 0, size, 200
        else:
            headers["Content-Range"] = byte_range.content_range(size)
            first, length, status = byte_range.first, byte_range.length, 206
        headers["Content-Length"] = str(length)
        if request.method == "HEAD":
            return Response(b"", status_code=status, headers=headers, media_type=_OCTET_STREAM)
        try:
            # Only the bytes answered are read: an object store fetches just the range.
            handle = await run_in_threadpool(self.store.open_file, uuid, first, first + length)
        except FileNotFoundError:
            return _not_found()  # removed since it was looked at
        if handle.info.version != info.version:
            await run_in_threadpool(handle.close)
            return None
        return _FileStream(handle, length, uuid, status_code=status, headers=headers)

    def _md5_of(self, uuid: str, info: FileInfo, may_compute: bool) -> str | None:
        """The MD5 of the file ``info`` describes, or None when it is not cached and must not be
        computed now, or when the image's file was replaced meanwhile (the digest found may be
        the new file's, and a wrong Content-MD5 is worse than none)."""
        md5 = self.store.file_md5(uuid) if may_compute else self.store.cached_file_md5(uuid)
        if md5 is None or self.store.file_info(uuid) != info:
            return None
        return md5


class _FileStream(StreamingResponse):
    """``length`` bytes of the opened span, in chunks read on the thread pool; the handle is
    closed however the response ends, and an answer cut short (the client went away) is logged."""

    def __init__(self, handle: OpenedFile, length: int, uuid: str, **kwargs: Any):
        super().__init__(self._chunks(handle, length), media_type=_OCTET_STREAM, **kwargs)
        self._handle = handle
        self._uuid = uuid
        self._length = length
        self._sent = 0

    async def _chunks(self, handle: OpenedFile, length: int) -> AsyncIterator[bytes]:
        while self._sent < length:
            chunk = await run_in_threadpool(handle.read, min(STREAM_CHUNK_BYTES, length - self._sent))
            if not chunk:
                raise FileChanged(f"file ended {length - self._sent} bytes early")
            yield chunk
            self._sent += len(chunk)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ClientDisconnect:
            pass  # ASGI 2.4 servers say so by raising; older ones cancel the stream
        finally:
            await run_in_threadpool(self._handle.close)
            if self._sent < self._length:
                log.info("image_file.cut_short", uuid=self._uuid, sent=self._sent, length=self._length)


def _image_uuid(request: Request) -> str | None:
    """The path's uuid if it is in canonical form, lower-case included (as the store names its
    directories, and so that it can name nothing outside the store), else None."""
    named = request.path_params["uuid"]
    try:
        return named if check_uuid(named) == named else None
    except StoreError:
        return None


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=dict(headers or {}),
                    media_type="application/json")


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return _json({"code": code, "message": message}, status, headers)


def _not_found() -> Response:
    return _error(404, "ResourceNotFound", "Resource not found")


async def _store_error(request: Request, exc: Exception) -> Response:
    """A store failure before the answer began: 503 while the store cannot answer, else 500;
    the detail (it names the store) goes to the log, not to an anonymous client."""
    assert isinstance(exc, StoreError)
    log.warning("image_store.failed", path=request.url.path, code=exc.code, error=str(exc))
    if isinstance(exc, StoreUnavailable):
        return _error(503, "ServiceUnavailable", "Image store is not available; try again",
                      {"Retry-After": str(STORE_RETRY_AFTER)})
    return _error(500, "InternalError", "Internal error")  # the last line of defence's answer, without a traceback


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _not_found()
    if exc.status_code == 405:
        return _error(405, "BadMethod", f"{request.method} is not allowed", exc.headers)
    return _error(exc.status_code, "HttpError", str(exc.detail), exc.headers)


def _request_log(app: ASGIApp) -> ASGIApp:
    """Per request: a request id in the log context and one log line; and the last line of
    defence: an unexpected error is a JSON 500, never a stack trace."""

    async def logged(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        begun = time.perf_counter()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=uuidlib.uuid4().hex[:16])
        response = {"status": 500, "started": False}

        async def send_noting_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                response["started"] = True
            await send(message)

        try:
            await app(scope, receive, send_noting_status)
        except Exception as exc:  # noqa: BLE001 - the client gets JSON; the log gets the traceback
            log.exception("request.error", error=repr(exc))
            if response["started"]:
                raise  # the server aborts the connection: the body can no longer be completed
            await _error(500, "InternalError", "Internal error")(scope, receive, send_noting_status)
        finally:
            log.info("request.handled", method=scope.get("method"), path=scope.get("path"),
                     status=response["status"], duration_ms=round((time.perf_counter() - begun) * 1000, 2))
            structlog.contextvars.clear_contextvars()

    return logged
