"""The exceptions of the imagesvc client.

Everything the client raises on purpose is an ``ImagesvcError``:

- ``TransportError``: no usable HTTP answer (connection refused or reset, timeout), after the
  retries that were safe;
- ``ApiError``: the API answered with a refusal; one subclass per status code the API uses, so
  callers catch what they can handle (``except NotFound``);
- ``TaskFailed``: ``wait()`` saw the task end in ``FAILURE``. It is also an instance of the class
  of the task's status code (a task that failed with 417 is a ``TaskFailed`` *and* an
  ``ExpectationFailed``): whether a consumer's refusal arrives as the command's answer or later as
  the task's outcome depends only on timing (the gateway's answer window), and one ``except``
  clause catches both.
"""

from __future__ import annotations

import http
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from imagesvc.client.models import Task

__all__ = [
    "ImagesvcError", "TransportError", "ApiError", "BadRequest", "Forbidden", "NotFound", "NotAcceptable",
    "PreconditionFailed", "ExpectationFailed", "Locked", "PreconditionRequired", "TooManyRequests",
    "Unavailable", "ServerError", "TaskFailed", "api_error", "error_class", "task_failed",
]


class ImagesvcError(Exception):
    """The base class of every error the client raises on purpose."""


class TransportError(ImagesvcError):
    """No HTTP answer: the connection failed or timed out (after the retries that were safe).

    The underlying ``httpx`` exception is the ``__cause__``. For a command the outcome is unknown:
    send it again with the same ``idempotency_key`` to learn it without a second effect."""


class ApiError(ImagesvcError):
    """The API refused the request (or a task failed: ``TaskFailed``).

    ``status``: the HTTP status code. ``detail``: the API's message, if it gave one.
    ``field_errors``: the validation errors by field (``{"owner": ["..."]}``) of a 400 answer,
    empty otherwise. ``code``: the stable machine-readable failure code where the answer carries
    one (e.g. ``"checksum_mismatch"`` of a failed import), else None. ``task_id``: the task the
    answer names, if any. ``body``: the decoded JSON answer (the text if it was not JSON).
    ``retry_after``: seconds from the ``Retry-After`` header (429, 503), if any.
    """

    def __init__(self, status: int, detail: str | None = None, *, field_errors: Mapping[str, list[str]] | None = None,
                 code: str | None = None, task_id: str | None = None, body: Any = None,
                 retry_after: float | None = None) -> None:
        self.status = status
        self.detail = detail
        self.field_errors: dict[str, list[str]] = {k: list(v) for k, v in (field_errors or {}).items()}
        self.code = code
        self.task_id = task_id
        self.body = body
        self.retry_after = retry_after
        super().__init__(self._message())

    def _message(self) -> str:
        try:
            phrase = http.HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Error"
        explanation = self.detail or "; ".join(f"{field}: {' '.join(messages)}"
                                               for field, messages in self.field_errors.items())
        message = f"{self.status} {phrase}" + (f": {explanation}" if explanation else "")
        return message + (f" [{self.code}]" if self.code else "")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields survive pickling (a process pool hands errors back this way).
        return _rebuild, (type(self), self.__dict__)


def _rebuild(cls: type[ApiError], state: dict[str, Any]) -> ApiError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    Exception.__init__(error, error._message())
    return error


class BadRequest(ApiError):
    """400: field errors (``field_errors``), a malformed request, a failed import step."""


class Forbidden(ApiError):
    """403 (and 401): missing or invalid credentials, or no permission."""


class NotFound(ApiError):
    """404: no such image, datacenter, task, repository, VM or snapshot."""


class NotAcceptable(ApiError):
    """406: the object already exists (``Image already exists``)."""


class PreconditionFailed(ApiError):
    """412: an ``If-Match`` that no longer holds, or an invalid ``order_by`` / ``disk_id``."""


class ExpectationFailed(ApiError):
    """417: the image (or VM snapshot) is busy with another task (``Image status is not OK``)."""


class Locked(ApiError):
    """423: a node or VM is not operational, or the same refresh is already running."""


class PreconditionRequired(ApiError):
    """428: the image is used by VMs, or the image server is not available."""


class TooManyRequests(ApiError):
    """429: throttled; ``retry_after`` says when to try again."""


class Unavailable(ApiError):
    """503: the broker or the database is unavailable for now; ``retry_after`` says when to retry."""


class ServerError(ApiError):
    """Any other 5xx: the server failed."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Forbidden, 403: Forbidden, 404: NotFound, 406: NotAcceptable, 412: PreconditionFailed,
    417: ExpectationFailed, 423: Locked, 428: PreconditionRequired, 429: TooManyRequests, 503: Unavailable,
}


def error_class(status: int) -> type[ApiError]:
    """The ``ApiError`` subclass for an HTTP status (``ApiError`` itself for a status without one)."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else ApiError


class TaskFailed(ApiError):
    """``wait()``: the task ended in ``FAILURE``. ``task`` is the failed ``Task``; ``status`` its
    HTTP code; ``detail``, ``field_errors`` and ``code`` are read from its result. Every instance
    is also an instance of ``error_class(status)``."""

    task: Task


#: TaskFailed combined with each status class (module attributes, so that they pickle by name).
_FAILED: dict[type[ApiError], type[TaskFailed]] = {}
for _base in (ApiError, *dict.fromkeys(_BY_STATUS.values()), ServerError):
    _name = "TaskFailed" if _base is ApiError else f"_TaskFailed{_base.__name__}"
    _FAILED[_base] = TaskFailed if _base is ApiError else type(_name, (TaskFailed, _base), {"__module__": __name__})
    globals()[_name] = _FAILED[_base]
del _base, _name


def _is_field_map(value: Any) -> bool:
    """``{"field": ["message", ...], ...}``: the API's validation errors."""
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and isinstance(v, list) for k, v in value.items()))


def _explain(body: Any) -> tuple[str | None, dict[str, list[str]], str | None, str | None]:
    """(detail, field errors, code, task id) of an answer body: ``{"detail": ...}`` (a string, or
    the login's field map), or a task envelope whose ``result`` is a field map, a failed import's
    ``{"returncode", "message", "detail", "code"}``, a ``{"detail"}``, or a string."""
    if not isinstance(body, dict):
        return (body.strip()[:500] or None) if isinstance(body, str) else None, {}, None, None
    task_id = body.get("task_id") if isinstance(body.get("task_id"), str) else None
    payload = body["result"] if "result" in body and "status" in body else body
    if _is_field_map(payload):
        return None, {k: [str(m) for m in v] for k, v in payload.items()}, None, task_id
    if isinstance(payload, str):
        return payload, {}, None, task_id
    if not isinstance(payload, dict):
        return None, {}, None, task_id
    detail = payload.get("detail")
    if _is_field_map(detail):
        return None, {k: [str(m) for m in v] for k, v in detail.items()}, None, task_id
    if not isinstance(detail, str):
        detail = payload.get("message") if isinstance(payload.get("message"), str) else None
    code = payload.get("code") if isinstance(payload.get("code"), str) else None
    return detail, {}, code, task_id


def api_error(status: int, body: Any, *, retry_after: float | None = None) -> ApiError:
    """The exception for a refusal answered with ``status`` and the decoded ``body``."""
    detail, field_errors, code, task_id = _explain(body)
    return error_class(status)(status, detail, field_errors=field_errors, code=code, task_id=task_id, body=body,
                               retry_after=retry_after)


def task_failed(task: Task) -> TaskFailed:
    """The exception for a task that ended in ``FAILURE`` (``task.http_code``, 500 if unknown)."""
    status = task.http_code if task.http_code and task.http_code >= 400 else 500
    detail, field_errors, code, _ = _explain({"task_id": task.task_id, "status": task.status, "result": task.result})
    error = _FAILED[error_class(status)](status, detail, field_errors=field_errors, code=code, task_id=task.task_id,
                                         body=task.raw)
    error.task = task
    return error
