"""HTTP plumbing of the gateway: JSON rendering, the error table, request parsing, middleware.

Every response body is JSON (deviations #14). Errors travel as ``ApiError`` (or a
``CommandFailed`` decided by a consumer) and are rendered in one place with the original's
shapes: ``{"detail": ...}`` for refusals, the task envelope for validation failures.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, AsyncIterator, Mapping

import orjson
import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagesvc.domain import tasks
from imagesvc.shared import metrics
from imagesvc.shared.errors import CommandFailed, Transient
from imagesvc.shared.logging import get_logger

log = get_logger("gateway.http")

API_VERSION = "4.6.0-imagesvc"
#: The status ``request.handled`` logs for a request whose client hung up before it was answered
#: (nginx's convention; never sent).
CLIENT_GONE = 499
_INDENT = re.compile(r"indent=([0-9]+)")


class ApiError(Exception):
    """An answer decided by the gateway: ``status`` with ``{"detail": message}``."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})


class ValidationFailed(Exception):
    """400 with the task envelope: ``{"task_id", "status": "FAILURE", "result": {field: [...]}}``."""

    def __init__(self, errors: Mapping[str, list[str]]):
        super().__init__(dict(errors))
        self.errors = dict(errors)


def json_bytes(request: Request | None, data: Any) -> bytes:
    """Encode ``data``, honouring ``Accept: application/json; indent=N`` (N clamped to 0..8)."""
    indent = _requested_indent(request)
    if indent:
        import json

        return json.dumps(data, indent=indent, ensure_ascii=False).encode()
    return orjson.dumps(data)


def _requested_indent(request: Request | None) -> int:
    if request is None:
        return 0
    match = _INDENT.search(request.headers.get("accept", ""))
    if match is None:
        return 0
    digits = match.group(1).lstrip("0")
    # Clamped before int(), which refuses numbers of more than 4300 digits.
    return 8 if len(digits) > 1 else min(int(digits or 0), 8)


class JSONBytes(Response):
    media_type = "application/json"


def json_response(request: Request, data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return JSONBytes(json_bytes(request, data), status_code=status, headers=dict(headers or {}))


def raw_json_response(request: Request, body: bytes, status: int = 200,
                      headers: Mapping[str, str] | None = None) -> Response:
    """A response from pre-encoded JSON (re-encoded only when the client asked for indentation)."""
    if _requested_indent(request):
        body = json_bytes(request, orjson.loads(body))
    return JSONBytes(body, status_code=status, headers=dict(headers or {}))


def wants_indentation(request: Request) -> bool:
    """Whether the client asked for indented JSON (which is re-encoded whole, never streamed)."""
    return _requested_indent(request) > 0


def streamed_json_response(chunks: AsyncIterator[bytes], status: int = 200,
                           headers: Mapping[str, str] | None = None) -> Response:
    """A JSON answer sent as its chunks come (``Transfer-Encoding: chunked``, no
    ``Content-Length``), so the gateway never holds it whole. Once the first chunk is sent the
    status is decided: a failure after it can only cut the answer short."""
    return StreamingResponse(chunks, status_code=status, media_type="application/json", headers=dict(headers or {}))


def envelope(task_id: str, status: str, result: Any) -> dict[str, Any]:
    return {"task_id": task_id, "status": status, "result": result}


def error_response(request: Request, status: int, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    return json_response(request, {"detail": detail}, status, headers)


# --- request bodies ----------------------------------------------------------------------------


async def read_json_body(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request's JSON object. An empty body is ``{}``.

    415 for a non-JSON content type, 400 ``JSON parse error - ...`` for malformed JSON or a
    non-object, 413 for a body over ``max_bytes``.
    """
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > max_bytes:
            raise ApiError(413, f"Request body is larger than {max_bytes} bytes.")
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if not body.strip():
        return {}
    if media != "application/json" and not media.endswith("+json"):
        raise ApiError(415, f'Unsupported media type "{content_type}" in request.')
    try:
        data = orjson.loads(bytes(body))
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"JSON parse error - {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "JSON parse error - Expected a JSON object")
    return data


# --- middleware --------------------------------------------------------------------------------


class GatewayMiddleware:
    """Per request: a request id and a bound log context, one log line, the ``es_*`` headers,
    and the last line of defence (no stack trace ever reaches a client)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        request_id = _header(scope, b"x-request-id") or uuid.uuid4().hex[:16]
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status_holder = {"status": 500, "sent": False}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["sent"] = True
                headers = list(message.get("headers", []))
                headers.append((b"es_version", API_VERSION.encode()))
                headers.append((b"es_username", str(state.get("username", "")).encode()))
                headers.append((b"es_dc", str(state.get("dc", "main")).encode()))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        metrics.request_started()
        try:
            await self.app(scope, receive, send_with_headers)
        except ClientDisconnect:
            # The client hung up before its body was read: nobody to answer (the server logs it).
            status_holder["status"] = CLIENT_GONE
        except Exception as exc:  # noqa: BLE001 - turn anything unexpected into a JSON 500/503
            if status_holder["sent"]:
                raise
            if isinstance(exc, Transient):
                status, detail = 503, "Service temporarily unavailable, try again later."
                log.warning("request.unavailable", error=str(exc))
            else:
                status, detail = 500, "Internal server error."
                log.exception("request.error", error=repr(exc))
            body = orjson.dumps({"detail": detail})
            extra = [(b"retry-after", b"5")] if status == 503 else []
            await send_with_headers({
                "type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra],
            })
            await send_with_headers({"type": "http.response.body", "body": body})
        finally:
            accepted = state.get("accepted_at")  # when the broker confirmed the command, if one was sent
            duration = time.perf_counter() - started
            metrics.request_finished(metrics.route_label(scope), scope.get("method"), status_holder["status"], duration)
            log.info(
                "request.handled", method=scope.get("method"), path=scope.get("path"),
                status=status_holder["status"], duration_ms=round(duration * 1000, 2),
                user=state.get("username"), task_id=state.get("task_id"), message_id=state.get("message_id"),
                accepted_ms=round((accepted - started) * 1000, 2) if accepted else None,
            )
            structlog.contextvars.clear_contextvars()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")[:64]
    return None


def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request, exc.status, exc.detail, exc.headers)


def dummy_task_id_for(request: Request) -> str:
    """The dummy task id of a synchronous answer to this request's user."""
    state = request.state
    return tasks.dummy_task_id(user_id=getattr(state, "user_id", 0), dc_id=getattr(state, "dc_id", 1))


def handle_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationFailed)
    return json_response(request, envelope(dummy_task_id_for(request), "FAILURE", exc.errors), 400)


def handle_command_failed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CommandFailed)
    if exc.http_code == 400:
        return json_response(request, envelope(dummy_task_id_for(request), "FAILURE", exc.result), 400)
    detail = exc.result.get("detail") if isinstance(exc.result, dict) else exc.result
    return error_response(request, exc.http_code, str(detail))
