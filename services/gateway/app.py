"""Assemble the gateway's ASGI application from its parts (wiring only)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Callable

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagesvc.domain.repositories import local_repository
from imagesvc.services.gateway import asyncapi
from imagesvc.services.gateway import openapi
from imagesvc.services.gateway.docs_page import OPEN_PATHS as DOCS_PATHS, DocsPage
from imagesvc.services.gateway.auth import Authenticator
from imagesvc.services.gateway.blocking import BoundedPool, in_thread
from imagesvc.services.gateway.dispatch import Dispatcher, TaskWaiter
from imagesvc.services.gateway.http import (
    ApiError,
    GatewayMiddleware,
    ValidationFailed,
    error_response,
    handle_api_error,
    handle_command_failed,
    handle_validation,
    json_response,
)
from imagesvc.services.gateway.queries import Queries
from imagesvc.services.gateway.administration import AdministrationRoutes
from imagesvc.services.gateway.imagestore import ImageStoreRoutes
from imagesvc.services.gateway.snapshots import SnapshotRoutes
from imagesvc.services.gateway.routes import AccountRoutes, ImageRoutes, TaskRoutes
from imagesvc.services.gateway.throttle import throttle_for
from imagesvc.shared.broker.connection import broker_identity
from imagesvc.shared.broker.notifications import NotificationListener
from imagesvc.shared.broker.topology import Topology
from imagesvc.shared import health, metrics
from imagesvc.shared.config import Settings
from imagesvc.shared.db.migrate import head_revision
from imagesvc.shared.store import open_store
from imagesvc.shared.errors import CommandFailed
from imagesvc.shared.net.fetch import UrlPolicy

if TYPE_CHECKING:
    from sqlalchemy import Engine


class ImageNameConvertor(Convertor):
    """The name segment of the original's URLs: ``[A-Za-z0-9._-]+``."""

    regex = r"[A-Za-z0-9._-]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


def _routes(path: str, endpoint, methods: list[str]) -> list[Route]:
    """The original requires the trailing slash; we accept both forms (deviations table, header)."""
    return [Route(path, endpoint, methods=methods), Route(path + "/", endpoint, methods=methods)]


#: The paths anybody may call (their other methods are refused without asking who calls).
_OPEN_PATHS = ("/api/accounts/login", "/api/openapi.json", "/api/asyncapi.json", "/healthz", "/readyz", "/metrics")
_OPEN_PATHS += DOCS_PATHS  # the interactive API docs (/api/docs/) and their assets


def _http_errors(auth: Authenticator):
    """Starlette's own refusals in the original's shapes. A method the path does not take is
    refused (405) only after the caller is authenticated, as the original's views authenticate,
    throttle and check permissions before they look at the method (reference §4.1, §5)."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            if not request.url.path.rstrip("/").endswith(_OPEN_PATHS):
                try:
                    await auth.user(request)
                except ApiError as refused:
                    return handle_api_error(request, refused)
            return error_response(request, 405, f'Method "{request.method}" not allowed.')
        if exc.status_code == 404:
            return error_response(request, 404, "Not found.")
        return error_response(request, exc.status_code, str(exc.detail))

    return http_error


def create_app(settings: Settings, *, engine: Engine, publisher, topology: Topology,
               connect: Callable[[], Any], system_metrics: metrics.SystemMetrics | None = None) -> Starlette:
    """``system_metrics``: the scrape-time gauges ``/metrics`` appends (outbox lag, leases,
    dead-letter depths); ``/metrics`` is served unless ``IMAGESVC_METRICS=off``."""
    register_url_convertor("imagename", ImageNameConvertor())
    queries = Queries(engine, cache_seconds=settings.auth_cache_seconds)
    throttle = throttle_for(settings.throttle)
    auth = Authenticator(queries, throttle)
    listener: NotificationListener | None = None
    waiter = TaskWaiter(queries, listening=lambda: listener is not None and listener.ready.is_set())
    identity = broker_identity(settings)
    listener = NotificationListener(lambda: connect(), topology, waiter.notify, on_reconnect=waiter.wake_all,
                                    services=identity.services if identity else None)
    declared_nodes: set[str] = set()

    def declare_node_queue(hostname: str) -> None:
        """Declare the queue of ``hostname``'s node agent (once per process), so commands for a
        node whose agent has not started yet wait for it."""
        if hostname in declared_nodes:
            return
        with connect() as connection:
            topology.for_node(hostname).declare(connection.default_channel)
        declared_nodes.add(hostname)

    dispatcher = Dispatcher(queries=queries, publisher=publisher, topology=topology, waiter=waiter,
                            answer_window=settings.answer_window, reply_to=listener.address,
                            broker_user=identity.own if identity else None, declare_node_queue=declare_node_queue)
    images = ImageRoutes(queries=queries, auth=auth, dispatcher=dispatcher, url_policy=UrlPolicy(settings.fetch_allow),
                         max_body_bytes=settings.max_body_bytes)
    imagestore = ImageStoreRoutes(images=images, configured=settings.repositories(),
                                  local=local_repository(settings.image_server_url))
    store = open_store(settings.image_store, settings.s3_options())
    snapshot_routes = SnapshotRoutes(images=images, store=store, image_server_node=settings.image_server_node)
    task_routes = TaskRoutes(queries=queries, auth=auth)
    administration = AdministrationRoutes(queries=queries, auth=auth, max_body_bytes=settings.max_body_bytes)
    account_routes = AccountRoutes(queries=queries, auth=auth, token_seconds=settings.token_seconds,
                                   max_body_bytes=settings.max_body_bytes, throttle=throttle,
                                   attempts=throttle_for(settings.login_throttle),
                                   hashing=BoundedPool(threads=settings.password_hash_threads,
                                                       waiting=settings.password_hash_queue, name="gateway-hashing"))

    async def openapi_document(request: Request) -> Response:
        return json_response(request, openapi.document())

    async def asyncapi_document(request: Request) -> Response:
        return json_response(request, asyncapi.document())

    checks = {"database": health.database_check(engine, head_revision()),
              "broker": health.broker_check(connect, settings.publish_timeout)}
    if store is not None:
        checks["store"] = health.store_check(store)
    readiness = health.Readiness(checks, details=False)  # a public port: the reasons go to the log

    async def alive(request: Request) -> Response:
        return json_response(request, health.ALIVE)

    async def ready(request: Request) -> Response:
        is_ready, body = await in_thread(readiness.report)
        return json_response(request, body, 200 if is_ready else 503)

    async def metrics_text(request: Request) -> Response:
        body = await in_thread(metrics.exposition, system_metrics)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    routes = [
        *_routes("/api/image", images.list_images, ["GET"]),
        *_routes("/api/image/{name:imagename}", images.show, ["GET"]),
        *_routes("/api/image/{name:imagename}", images.create, ["POST"]),
        *_routes("/api/image/{name:imagename}", images.update, ["PUT"]),
        *_routes("/api/image/{name:imagename}", images.delete, ["DELETE"]),
        *_routes("/api/image/{name:imagename}/vm", images.vms, ["GET"]),
        *_routes("/api/vm/{vm}/snapshot/{snapname}/image/{name:imagename}", snapshot_routes.create_image, ["POST"]),
        *_routes("/api/dc/{dc}/image", images.dc_list_images, ["GET"]),
        *_routes("/api/dc/{dc}/image/{name:imagename}", images.dc_show_image, ["GET"]),
        *_routes("/api/dc/{dc}/image/{name:imagename}", images.dc_attach, ["POST"]),
        *_routes("/api/dc/{dc}/image/{name:imagename}", images.dc_detach, ["DELETE"]),
        *_routes("/api/imagestore", imagestore.list_repositories, ["GET"]),
        *_routes("/api/imagestore", imagestore.refresh_all, ["PUT"]),
        *_routes("/api/imagestore/{name:imagename}", imagestore.show_repository, ["GET"]),
        *_routes("/api/imagestore/{name:imagename}", imagestore.refresh_one, ["PUT"]),
        *_routes("/api/imagestore/{name:imagename}/image", imagestore.list_images, ["GET"]),
        *_routes("/api/imagestore/{name:imagename}/image/{uuid}", imagestore.show_image, ["GET"]),
        *_routes("/api/imagestore/{name:imagename}/image/{uuid}", imagestore.import_image, ["POST"]),
        *_routes("/api/accounts/user", administration.list_users, ["GET"]),
        *_routes("/api/accounts/user/{username}", administration.show_user, ["GET"]),
        *_routes("/api/accounts/user/{username}", administration.create_user, ["POST"]),
        *_routes("/api/accounts/user/{username}/apikeys", administration.new_api_key, ["PUT"]),
        *_routes("/api/accounts/group", administration.list_groups, ["GET"]),
        *_routes("/api/accounts/group/{name}", administration.show_group, ["GET"]),
        *_routes("/api/accounts/group/{name}", administration.create_group, ["POST"]),
        *_routes("/api/dc", administration.list_dcs, ["GET"]),
        *_routes("/api/dc/{dc}", administration.show_dc, ["GET"]),
        *_routes("/api/dc/{dc}", administration.create_dc, ["POST"]),
        *_routes("/api/dc/{dc}/group", administration.list_dc_groups, ["GET"]),
        *_routes("/api/dc/{dc}/group/{name}", administration.attach_group, ["POST"]),
        *_routes("/api/dc/{dc}/group/{name}", administration.detach_group, ["DELETE"]),
        *_routes("/api/task/{task_id}/status", task_routes.status, ["GET"]),
        *_routes("/api/task/{task_id}/state", task_routes.status, ["GET"]),
        *_routes("/api/accounts/login", account_routes.login, ["POST"]),
        *_routes("/api/accounts/logout", account_routes.logout, ["GET"]),
        Route("/api/openapi.json", openapi_document, methods=["GET"]),
        Route("/api/asyncapi.json", asyncapi_document, methods=["GET"]),
        Route("/healthz", alive, methods=["GET"]),
        Route("/readyz", ready, methods=["GET"]),
        *DocsPage().routes(),
    ]
    if settings.metrics == "on":
        routes.append(Route("/metrics", metrics_text, methods=["GET"]))

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette):
        waiter.bind(asyncio.get_running_loop())
        listener.start()
        try:
            yield
        finally:
            listener.stop()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(GatewayMiddleware)],
        exception_handlers={
            ApiError: handle_api_error,
            ValidationFailed: handle_validation,
            CommandFailed: handle_command_failed,
            HTTPException: _http_errors(auth),
        },
        lifespan=lifespan,
    )
    # Never a redirect built from the request's Host header: every route takes both forms, and
    # anything else (an empty segment: /api/image//) is a 404.
    app.router.redirect_slashes = False
    app.state.listener = listener
    app.state.waiter = waiter
    return app
