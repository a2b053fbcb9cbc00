"""The HTTP client: ``Client`` (blocking) and ``AsyncClient`` (asyncio), one protocol.

The protocol is written once, without I/O: each API method of ``_Operations`` is a generator that
*yields effects* (``Send`` an HTTP request, ``Sleep``, ``Notify`` a progress callback) and is sent
their outcomes back. Request building, retries and backoff, answer parsing and task following
live there. ``Client`` and ``AsyncClient`` are thin shells that perform the effects with
``httpx.Client`` / ``httpx.AsyncClient``; the ``operation`` descriptor turns each generator into a
plain method on one and a coroutine method on the other.

Retries (``retries`` times after the first attempt, exponential backoff with jitter, at least
``Retry-After`` on 429/503) happen only where a repeat cannot do anything twice:

- GETs, always;
- commands (the POST/PUT/DELETE that make tasks), which always carry an ``Idempotency-Key`` (the
  caller's or a fresh one per call, the same on every attempt of that call): the API answers a
  repeat with the first request's task and never acts twice;
- ``login`` and ``logout`` only when the request cannot have left (the connection was never made).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from enum import Enum
from importlib import metadata
from types import TracebackType
from typing import (Any, AsyncIterator, Awaitable, Callable, Concatenate, Generator, Generic, Iterator, Mapping,
                    ParamSpec, Self, TypeVar, overload)
from urllib.parse import quote

import httpx

from imagesvc.client import errors
from imagesvc.client.models import FAILURE, SUCCESS, Image, Page, Repository, Task

__all__ = ["Client", "AsyncClient", "USER_AGENT"]

try:
    _VERSION = metadata.version("imagesvc")
except metadata.PackageNotFoundError:  # run from a checkout that is not installed
    _VERSION = "0"
USER_AGENT = f"imagesvc-client/{_VERSION}"

#: Answers worth asking again after a pause: throttled, or the service (or a proxy before it) is
#: unavailable for now. Never a 500: the same request would fail the same way.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: The longest pause between attempts; a ``Retry-After`` beyond it is not waited for (the error is
#: raised at once, carrying ``retry_after``).
MAX_DELAY = 60.0
_KEY_CHARACTERS = frozenset(chr(c) for c in range(0x21, 0x7F))

T = TypeVar("T")
P = ParamSpec("P")


# --- effects: what an operation asks its shell to do -----------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send ``request``; the reply is the ``httpx.Response``, or its ``httpx.TransportError`` thrown in."""

    request: httpx.Request


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Notify:
    """Call ``callback(task)`` (awaited by the async shell if it returns an awaitable)."""

    callback: Callable[[Task], Any]
    task: Task


Effect = Send | Sleep | Notify
Op = Generator[Effect, Any, T]


class Retry(Enum):
    """When a request may be sent again."""

    #: Safe to repeat (a GET).
    SAFE = "safe"
    #: A command with an Idempotency-Key: a repeat is answered with the first one's task.
    KEYED = "keyed"
    #: Not idempotent: repeated only if it cannot have been sent (no connection was made).
    UNSENT = "unsent"

    def after(self, exc: httpx.TransportError) -> bool:
        if self is Retry.UNSENT:
            return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
        return isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError))


@dataclass(frozen=True)
class Call:
    """One logical request; rebuilt identically for every attempt."""

    method: str
    path: tuple[str, ...]
    params: Mapping[str, str] = field(default_factory=dict)
    json: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    retry: Retry = Retry.SAFE
    authenticated: bool = True


# --- helpers ---------------------------------------------------------------------------------------


def normalise_base_url(base_url: str) -> str:
    """``http://host:8000``, ``.../``, ``.../api`` and ``.../api/`` all give ``http://host:8000/api``."""
    url = httpx.URL(base_url.strip())
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
    if url.query or url.fragment:
        raise ValueError(f"base_url must not have a query or fragment: {base_url!r}")
    path = url.path.rstrip("/")
    if not path.endswith("/api"):
        path += "/api"
    return str(url.copy_with(path=path))


def _segment(value: str) -> str:
    """A path segment, percent-encoded. Empty and dot segments are refused: they would address
    another resource (``/api/image/../`` is ``/api/``)."""
    if not isinstance(value, str) or value in ("", ".", ".."):
        raise ValueError(f"invalid path segment: {value!r}")
    return quote(value, safe="")


def _checked_key(key: str | None) -> str:
    """The caller's Idempotency-Key (1 to 255 visible ASCII characters), or a fresh one."""
    if key is None:
        return str(uuid.uuid4())
    if not isinstance(key, str) or not 1 <= len(key) <= 255 or not set(key) <= _KEY_CHARACTERS:
        raise ValueError("idempotency_key must be 1 to 255 visible ASCII characters")
    return key


def _present(**values: Any) -> dict[str, Any]:
    """The named values that are not None (optional request fields are left out, not sent as null)."""
    return {key: value for key, value in values.items() if value is not None}


#: The filters of ``images``/``iter_images`` (``GET /api/image/``), as the API names them.
IMAGE_FILTERS = ("status", "name", "ostype", "owner", "tag", "attached_to", "access")


def _filter_params(filters: Mapping[str, Any]) -> dict[str, Any]:
    """Query parameters of image filters (None left out; ``tag`` may be a list: every tag)."""
    unknown = sorted(set(filters) - set(IMAGE_FILTERS))
    if unknown:
        raise TypeError(f"unknown image filter(s): {', '.join(unknown)}; known: {', '.join(IMAGE_FILTERS)}")
    params: dict[str, Any] = {}
    for key, value in filters.items():
        if value is None:
            continue
        if key == "tag" and isinstance(value, (list, tuple)):
            params[key] = [str(tag) for tag in value]
        else:
            params[key] = str(value)
    return params


def _page_params(limit: int, marker: str | None, marker_created: str | None = None) -> dict[str, str]:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ValueError("limit must be a whole number from 1 to 1000")
    if marker_created is not None and marker is None:
        raise ValueError("marker_created goes with a marker")
    return {"limit": str(limit), **_present(marker=marker, marker_created=marker_created)}


def _page(items: list[Any], response: httpx.Response) -> Page:
    """A page, with the next one's URL and marker from its ``Link: <...>; rel="next"``: a
    reference resolved against the request's URL (the gateway sends a path-absolute one)."""
    url = response.links.get("next", {}).get("url")
    if not url:
        return Page(items)
    resolved = response.request.url.join(url)
    return Page(items, next=str(resolved), next_marker=resolved.params.get("marker"),
                next_marker_created=resolved.params.get("marker_created"))


def _decode(response: httpx.Response) -> Any:
    """The answer's JSON; its text if it is not JSON (a proxy's error page)."""
    try:
        return response.json()
    except ValueError:
        return response.text


def _is_envelope(body: Any) -> bool:
    return (isinstance(body, dict) and isinstance(body.get("task_id"), str) and isinstance(body.get("status"), str)
            and "result" in body)


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from ``Retry-After`` (delta-seconds or an HTTP date); None if absent or unreadable."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _refusal(response: httpx.Response) -> errors.ApiError:
    return errors.api_error(response.status_code, _decode(response), retry_after=retry_after(response))


def _unexpected(response: httpx.Response, body: Any) -> errors.ApiError:
    """A success status with a body that is not what the API answers (a proxy in the way?)."""
    return errors.ApiError(response.status_code, "Unexpected answer from the API", body=body)


# --- the operation descriptor ----------------------------------------------------------------------


class operation(Generic[P, T]):  # noqa: N801 - used as a decorator
    """Makes an operation generator a method of both shells: on a ``Client`` it returns ``T``, on
    an ``AsyncClient`` an awaitable of ``T`` (each shell's ``_bind`` drives the generator)."""

    def __init__(self, fn: Callable[Concatenate[Any, P], Op[T]]) -> None:
        self._fn = fn
        functools.update_wrapper(self, fn)
        # What callers see: the shell's own return type rather than the generator's.
        signature = inspect.signature(fn).replace(return_annotation=inspect.Signature.empty)
        self.__signature__ = signature
        self._bound_signature = signature.replace(parameters=list(signature.parameters.values())[1:])

    @overload
    def __get__(self, obj: None, owner: type) -> operation[P, T]: ...
    @overload
    def __get__(self, obj: Client, owner: type) -> Callable[P, T]: ...
    @overload
    def __get__(self, obj: AsyncClient, owner: type) -> Callable[P, Awaitable[T]]: ...

    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            return self
        bound = obj._bind(self._fn)
        functools.update_wrapper(bound, self._fn)
        bound.__signature__ = self._bound_signature
        return bound

    def __call__(self, client: Client | AsyncClient, /, *args: Any, **kwargs: Any) -> Any:
        """``Client.get_image(client, ...)``: called through the class, as a function is."""
        return self.__get__(client, type(client))(*args, **kwargs)


# --- the protocol ----------------------------------------------------------------------------------


class _Operations:
    """The imagesvc HTTP API, written once for both shells (see the module's docstring)."""

    def __init__(self, base_url: str, *, api_key: str | None, token: str | None, timeout: float | None,
                 retries: int, backoff: float, clock: Callable[[], float]) -> None:
        if api_key and token:
            raise ValueError("give api_key or token, not both")
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must not be negative")
        #: The API's root, ``http(s)://host[:port][/prefix]/api``.
        self.base_url = normalise_base_url(base_url)
        self._api_key = api_key
        self._token = token
        self._timeout = httpx.Timeout(timeout).as_dict()
        self._retries = retries
        self._backoff = backoff
        self._clock = clock
        self._random = random.Random()

    @property
    def token(self) -> str | None:
        """The login token in use (``login``'s, or the one given), None when none is."""
        return self._token

    def _bind(self, fn: Callable[..., Op[Any]]) -> Callable[..., Any]:
        raise NotImplementedError  # each shell drives the generators its own way

    # --- requests and retries --------------------------------------------------------------------

    def _build(self, call: Call) -> httpx.Request:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **call.headers}
        if call.authenticated:
            # The token of a login wins over the API key the client was made with.
            if self._token:
                headers["Authorization"] = f"Token {self._token}"
            elif self._api_key:
                headers["ES-API-KEY"] = self._api_key
        url = self.base_url + "/" + "".join(_segment(part) + "/" for part in call.path)
        return httpx.Request(call.method, url, params=dict(call.params), json=call.json, headers=headers,
                             extensions={"timeout": self._timeout})

    def _delay(self, attempt: int, wait_at_least: float | None) -> float | None:
        """The pause before attempt ``attempt + 1``: ``backoff * 2**attempt``, jittered down by up
        to half (so that clients that failed together do not retry together), at least
        ``wait_at_least`` (Retry-After). None: the server asks for longer than ``MAX_DELAY``."""
        if wait_at_least is not None and wait_at_least > MAX_DELAY:
            return None
        ceiling = min(self._backoff * 2 ** attempt, MAX_DELAY)
        delay = ceiling / 2 + self._random.uniform(0, ceiling / 2)
        return max(delay, wait_at_least or 0.0)

    def _exchange(self, call: Call) -> Op[httpx.Response]:
        """Send ``call`` until it gets an answer worth returning, retrying as its ``retry`` allows.
        Raises errors.TransportError when no answer came."""
        for attempt in itertools.count():
            request = self._build(call)
            try:
                response = yield Send(request)
            except httpx.TransportError as exc:
                if attempt >= self._retries or not call.retry.after(exc):
                    raise errors.TransportError(
                        f"{call.method} {request.url} failed after {attempt + 1} attempt(s): "
                        f"{type(exc).__name__}: {exc}") from exc
                delay = self._delay(attempt, None)
            else:
                # UNSENT: an answer proves the request arrived; a 503 may still have acted.
                if (response.status_code not in RETRY_STATUSES or call.retry is Retry.UNSENT
                        or attempt >= self._retries):
                    return response
                delay = self._delay(attempt, retry_after(response))
                if delay is None:
                    return response
            yield Sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _result(self, call: Call) -> Op[tuple[Any, httpx.Response]]:
        """A query: the ``result`` of its SUCCESS envelope, and the response."""
        response = yield from self._exchange(call)
        body = _decode(response)
        if not response.is_success:
            raise _refusal(response)
        if not _is_envelope(body) or body["status"] != SUCCESS:
            raise _unexpected(response, body)
        return body["result"], response

    def _command(self, method: str, path: tuple[str, ...], body: Mapping[str, Any] | None,
                 key: str | None, headers: Mapping[str, str] | None = None) -> Op[Task]:
        """A command: its task (SUCCESS when it finished within the gateway's answer window,
        PENDING/STARTED otherwise). A refusal raises the ApiError subclass of its status."""
        call = Call(method, path, json=body or None, retry=Retry.KEYED,
                    headers={**(headers or {}), "Idempotency-Key": _checked_key(key)})
        response = yield from self._exchange(call)
        data = _decode(response)
        if not response.is_success:
            raise _refusal(response)
        if not _is_envelope(data) or data["status"] == FAILURE:
            raise _unexpected(response, data)
        return Task.from_envelope(data, response.status_code)

    def _get_task(self, task_id: str) -> Op[Task]:
        """The task's state. A failed task is a Task (its answer's status is the task's code);
        only an unknown or forbidden task raises."""
        response = yield from self._exchange(Call("GET", ("task", task_id, "status")))
        data = _decode(response)
        if _is_envelope(data) and (response.is_success or data["status"] == FAILURE):
            return Task.from_envelope(data, response.status_code)
        if response.is_success:
            raise _unexpected(response, data)
        raise _refusal(response)

    # --- accounts --------------------------------------------------------------------------------

    @operation
    def login(self, username: str, password: str) -> Op[str]:
        """Log in (``POST /api/accounts/login/``) and use the token from now on instead of any API
        key (``Authorization: Token ...``); returns the token. Never retried once the request may
        have been sent (each login makes a token). Wrong credentials: BadRequest."""
        call = Call("POST", ("accounts", "login"), json={"username": username, "password": password},
                    retry=Retry.UNSENT, authenticated=False)
        response = yield from self._exchange(call)
        body = _decode(response)
        if not response.is_success:
            raise _refusal(response)
        if not isinstance(body, dict) or not isinstance(body.get("token"), str):
            raise _unexpected(response, body)
        self._token = body["token"]
        return self._token

    @operation
    def logout(self) -> Op[None]:
        """End the login token (``GET /api/accounts/logout/``) and forget it, also when the request
        fails; the client then uses the API key it was made with, if any. Without a token it does
        nothing. Not retried once sent (a repeat would be refused: the token is gone)."""
        if not self._token:
            return
        try:
            response = yield from self._exchange(Call("GET", ("accounts", "logout"), retry=Retry.UNSENT))
        finally:
            self._token = None
        if not response.is_success:
            raise _refusal(response)

    # --- images ----------------------------------------------------------------------------------

    @operation
    def list_images(self, *, dc: str | None = None, full: bool = True, extended: bool = False,
                    order_by: str | None = None, **filters: Any) -> Op[list[Image] | list[str]]:
        """The images (``GET /api/image/``), or those attached to datacenter ``dc``
        (``GET /api/dc/<dc>/image/``), all in one answer. ``full``: Image objects, else names;
        ``extended``: objects with ``dcs``; ``order_by``: ``name`` or ``created`` (``-`` for
        descending; a datacenter's list sorts by name only); ``filters``: those of ``images``
        (here ``dc`` is the list's datacenter; ``attached_to=`` filters by attachment)."""
        path = ("dc", dc, "image") if dc is not None else ("image",)
        params = {**_present(full="true" if full else None, extended="true" if extended else None,
                             order_by=order_by), **_filter_params(filters)}
        result, _ = yield from self._result(Call("GET", path, params=params))
        if full or extended:
            return [Image.from_json(item) for item in result]
        return [str(item) for item in result]

    @operation
    def images(self, *, limit: int = 100, marker: str | None = None, full: bool = True, extended: bool = False,
               order_by: str | None = None, datacenter: str | None = None, marker_created: str | None = None,
               **filters: Any) -> Op[Page]:
        """One page of ``GET /api/image/`` (of ``GET /api/dc/<datacenter>/image/`` with
        ``datacenter``): at most ``limit`` (1..1000) images after the one named ``marker`` (the
        previous page's ``next_marker``; None: the first page), in ``order_by``.
        ``marker_created``: the previous page's ``next_marker_created`` (an order by ``created``
        then needs no look-up of the marker, which may have been removed since; without it the
        marker must name an image the caller sees). ``filters``: ``status`` (1/2 or
        ok/pending), ``name`` (a prefix, any case), ``ostype``, ``owner`` (a username), ``tag``
        (one, or a list: images with every one), ``attached_to`` (attached to that datacenter),
        ``access`` (1/3/4 or public/private/deleted). Items as ``list_images`` gives them (Image
        objects, or names without ``full``)."""
        params = {**_present(full="true" if full else None, extended="true" if extended else None,
                             order_by=order_by), **_page_params(limit, marker, marker_created),
                  **_filter_params(filters)}
        path = ("dc", datacenter, "image") if datacenter is not None else ("image",)
        result, response = yield from self._result(Call("GET", path, params=params))
        items = [Image.from_json(item) for item in result] if full or extended else [str(item) for item in result]
        return _page(items, response)

    @operation
    def get_image(self, name: str, *, dc: str | None = None, extended: bool = False) -> Op[Image]:
        """One image (``GET /api/image/<name>/``), or as attached to datacenter ``dc``
        (``GET /api/dc/<dc>/image/<name>/``: NotFound unless attached there). ``extended`` adds
        ``dcs``. The image's ``etag`` (not with ``dc``) is for ``if_match``."""
        path = ("dc", dc, "image", name) if dc is not None else ("image", name)
        params = _present(extended="true" if extended else None)
        result, response = yield from self._result(Call("GET", path, params=params))
        return Image.from_json(result, etag=response.headers.get("etag"))

    @operation
    def image_vms(self, name: str) -> Op[list[dict[str, Any]]]:
        """The VMs using the image in the datacenters it is attached to
        (``GET /api/image/<name>/vm/?full=true``): ``{hostname, uuid, dc, node, status, ostype, disks}``."""
        result, _ = yield from self._result(Call("GET", ("image", name, "vm"), params={"full": "true"}))
        return list(result)

    @operation
    def image_vms_page(self, name: str, *, limit: int = 100, marker: str | None = None) -> Op[Page]:
        """One page of ``image_vms``: at most ``limit`` VMs after the one whose hostname is ``marker``."""
        params = {"full": "true", **_page_params(limit, marker)}
        result, response = yield from self._result(Call("GET", ("image", name, "vm"), params=params))
        return _page(list(result), response)

    @operation
    def import_image(self, name: str, manifest_url: str, *, file_url: str | None = None, dc: str | None = None,
                     idempotency_key: str | None = None, **fields: Any) -> Op[Task]:
        """Import an image from an IMGAPI manifest (``POST /api/image/<name>/``). ``file_url``: where
        the file is, if not at ``<manifest_url>/file``; ``dc``: the datacenter it is bound to;
        ``fields``: ``alias``, ``version``, ``desc``, ``access``, ``owner``, ``resize``,
        ``deploy``, ``tags``, ``dc_bound``. Returns the task (follow it with ``wait``)."""
        body = {"manifest_url": manifest_url, **_present(file_url=file_url, dc=dc), **fields}
        return (yield from self._command("POST", ("image", name), body, idempotency_key))

    @operation
    def update_image(self, name: str, *, dc: str | None = None, idempotency_key: str | None = None,
                     if_match: str | None = None, **fields: Any) -> Op[Task]:
        """Change the given ``fields`` of an image (``PUT /api/image/<name>/``). ``if_match``: an
        ``Image.etag``; the change is made only if the image still has that version, else
        PreconditionFailed. ``dc`` is sent as the request's datacenter."""
        body = {**_present(dc=dc), **fields}
        headers = _present(**{"If-Match": if_match})
        return (yield from self._command("PUT", ("image", name), body, idempotency_key, headers))

    @operation
    def delete_image(self, name: str, *, dc: str | None = None, idempotency_key: str | None = None,
                     if_match: str | None = None) -> Op[Task]:
        """Delete an image (``DELETE /api/image/<name>/``); ``if_match`` as for ``update_image``."""
        headers = _present(**{"If-Match": if_match})
        return (yield from self._command("DELETE", ("image", name), _present(dc=dc), idempotency_key, headers))

    @operation
    def attach_image(self, dc: str, name: str, *, idempotency_key: str | None = None) -> Op[Task]:
        """Attach an image to a datacenter (``POST /api/dc/<dc>/image/<name>/``; SuperAdmins).
        Already attached: NotAcceptable."""
        return (yield from self._command("POST", ("dc", dc, "image", name), None, idempotency_key))

    @operation
    def detach_image(self, dc: str, name: str, *, idempotency_key: str | None = None) -> Op[Task]:
        """Detach an image from a datacenter (``DELETE /api/dc/<dc>/image/<name>/``; SuperAdmins).
        Used by a VM there: PreconditionRequired."""
        return (yield from self._command("DELETE", ("dc", dc, "image", name), None, idempotency_key))

    @operation
    def snapshot_image(self, vm: str, snapname: str, name: str, *, dc: str | None = None,
                       idempotency_key: str | None = None, **fields: Any) -> Op[Task]:
        """Make image ``name`` from a VM disk snapshot
        (``POST /api/vm/<vm>/snapshot/<snapname>/image/<name>/``). ``vm``: hostname or uuid;
        ``fields``: ``disk_id`` (default 1) and the image fields of ``import_image``."""
        body = {**_present(dc=dc), **fields}
        return (yield from self._command("POST", ("vm", vm, "snapshot", snapname, "image", name), body,
                                         idempotency_key))

    # --- remote repositories (image store) -------------------------------------------------------

    @operation
    def list_repositories(self) -> Op[list[Repository]]:
        """The remote image repositories (``GET /api/imagestore/?full=true``)."""
        result, _ = yield from self._result(Call("GET", ("imagestore",), params={"full": "true"}))
        return [Repository.from_json(item) for item in result]

    @operation
    def repositories_page(self, *, limit: int = 100, marker: str | None = None) -> Op[Page]:
        """One page of ``list_repositories``: after the repository named ``marker``."""
        params = {"full": "true", **_page_params(limit, marker)}
        result, response = yield from self._result(Call("GET", ("imagestore",), params=params))
        return _page([Repository.from_json(item) for item in result], response)

    @operation
    def get_repository(self, name: str) -> Op[Repository]:
        """One repository (``GET /api/imagestore/<name>/``)."""
        result, _ = yield from self._result(Call("GET", ("imagestore", name)))
        return Repository.from_json(result)

    @operation
    def refresh_repositories(self, *, idempotency_key: str | None = None) -> Op[Task]:
        """Download every repository's image list (``PUT /api/imagestore/``). Any one failing:
        BadRequest; another refresh running: Locked."""
        return (yield from self._command("PUT", ("imagestore",), None, idempotency_key))

    @operation
    def refresh_repository(self, name: str, *, idempotency_key: str | None = None) -> Op[Task]:
        """Download one repository's image list (``PUT /api/imagestore/<name>/``)."""
        return (yield from self._command("PUT", ("imagestore", name), None, idempotency_key))

    @operation
    def list_repository_images(self, name: str) -> Op[list[dict[str, Any]]]:
        """The images of the repository's last refresh, newest first
        (``GET /api/imagestore/<name>/image/?full=true``)."""
        result, _ = yield from self._result(Call("GET", ("imagestore", name, "image"), params={"full": "true"}))
        return list(result)

    @operation
    def repository_images_page(self, name: str, *, limit: int = 100, marker: str | None = None) -> Op[Page]:
        """One page of ``list_repository_images``: after the image whose uuid is ``marker``."""
        params = {"full": "true", **_page_params(limit, marker)}
        result, response = yield from self._result(Call("GET", ("imagestore", name, "image"), params=params))
        return _page(list(result), response)

    @operation
    def get_repository_image(self, name: str, uuid: str) -> Op[dict[str, Any]]:
        """One image of the repository's last refresh (``GET /api/imagestore/<name>/image/<uuid>/``)."""
        result, _ = yield from self._result(Call("GET", ("imagestore", name, "image", uuid)))
        return dict(result)

    @operation
    def import_repository_image(self, repository: str, uuid: str, *, dc: str | None = None,
                                idempotency_key: str | None = None, **fields: Any) -> Op[Task]:
        """Import a repository image (``POST /api/imagestore/<repository>/image/<uuid>/``); ``fields``:
        ``name`` (default: the manifest's) and the image fields of ``import_image``."""
        body = {**_present(dc=dc), **fields}
        return (yield from self._command("POST", ("imagestore", repository, "image", uuid), body, idempotency_key))

    # --- tasks -----------------------------------------------------------------------------------

    @operation
    def task(self, task_id: str) -> Op[Task]:
        """A task's state (``GET /api/task/<task_id>/status/``). A failed task is returned (status
        ``FAILURE``), not raised; an unknown one raises NotFound."""
        return (yield from self._get_task(task_id))

    @operation
    def wait(self, task_or_id: Task | str, *, timeout: float | None = None, poll_interval: float = 0.5,
             on_progress: Callable[[Task], Any] | None = None) -> Op[Task]:
        """Follow a task until it ends, polling its status every ``poll_interval`` seconds.

        Returns the finished Task on SUCCESS; raises TaskFailed (also an instance of the ApiError
        subclass of its status code) on FAILURE; raises TimeoutError when it has not ended
        ``timeout`` seconds after the call. ``on_progress(task)`` is called with each polled task
        whose ``progress`` differs from the last one seen (an AsyncClient awaits it if it is a
        coroutine function). A finished Task given in returns (or raises) without a request."""
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        task = task_or_id if isinstance(task_or_id, Task) else None
        task_id = task.task_id if task is not None else task_or_id
        deadline = None if timeout is None else self._clock() + timeout
        seen = task.progress if task is not None else None
        while task is None or not task.done:
            if task is not None:  # asked already and still running: pause first
                pause = poll_interval
                if deadline is not None:
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        raise TimeoutError(f"task {task_id} has not ended after {timeout} s (it is {task.status})")
                    pause = min(pause, remaining)
                yield Sleep(pause)
            task = yield from self._get_task(task_id)
            if on_progress is not None and task.progress is not None and task.progress != seen:
                seen = task.progress
                yield Notify(on_progress, task)
        if task.status == SUCCESS:
            return task
        raise errors.task_failed(task)


# --- the shells ------------------------------------------------------------------------------------


class _Run:
    """Steps an operation generator: the part of driving it that does no I/O."""

    def __init__(self, op: Op[Any]) -> None:
        self._op = op
        self._reply: Any = None
        self._failure: BaseException | None = None
        self.value: Any = None

    def next(self) -> Effect | None:
        """The next effect to perform, or None when the operation has returned (``value``)."""
        reply, failure = self._reply, self._failure
        self._reply = self._failure = None
        try:
            return self._op.throw(failure) if failure is not None else self._op.send(reply)
        except StopIteration as stop:
            self.value = stop.value
            return None

    def reply(self, value: Any) -> None:
        self._reply = value

    def fail(self, exc: BaseException) -> None:
        self._failure = exc

    def close(self) -> None:
        self._op.close()


class Client(_Operations):
    """A blocking client of the imagesvc HTTP API.

    ``base_url``: the server, with or without the trailing ``/api``. Credentials: ``api_key``
    (sent as ``ES-API-KEY``) or ``token`` (``Authorization: Token``), or none and ``login()``.
    ``timeout``: seconds for each request (connect, read, write, pool; None: none). ``retries``:
    attempts after the first for the requests that may be repeated; ``backoff``: the first pause
    in seconds (doubled each time, jittered). ``transport``: an ``httpx`` transport (tests use
    ``httpx.MockTransport``); ``verify``: TLS verification as ``httpx`` takes it. ``sleep`` and
    ``clock`` replace ``time.sleep`` and ``time.monotonic`` (for tests).
    Use it as a context manager, or ``close()`` it.
    """

    def __init__(self, base_url: str, api_key: str | None = None, token: str | None = None,
                 timeout: float | None = 30.0, retries: int = 3, backoff: float = 0.5,
                 transport: httpx.BaseTransport | None = None, verify: Any = True, *,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(base_url, api_key=api_key, token=token, timeout=timeout, retries=retries,
                         backoff=backoff, clock=clock)
        self._http = httpx.Client(transport=transport, verify=verify, follow_redirects=False)
        self._sleep = sleep

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _bind(self, fn: Callable[..., Op[Any]]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._drive(fn(self, *args, **kwargs))
        return call

    def iter_images(self, *, page_size: int = 100, marker: str | None = None, **kwargs: Any) -> Iterator[Any]:
        """Every image of ``GET /api/image/`` (after ``marker``), read ``page_size`` at a time
        (``images`` for the other arguments). Each page is one request, made as it is reached;
        pages are keyset pages, so images added or removed meanwhile neither repeat nor shift
        the others (an image added before the current position is not seen), and the removal
        of the image a page ended with does not break the walk (the next request carries its
        sort key, ``next_marker_created``, not only its name)."""
        created = kwargs.pop("marker_created", None)
        while True:
            page = self.images(limit=page_size, marker=marker, marker_created=created, **kwargs)
            yield from page.items
            if page.next_marker is None:
                return
            marker, created = page.next_marker, page.next_marker_created

    def _drive(self, op: Op[T]) -> T:
        run = _Run(op)
        try:
            while (effect := run.next()) is not None:
                if isinstance(effect, Send):
                    try:
                        run.reply(self._http.send(effect.request))
                    except httpx.TransportError as exc:
                        run.fail(exc)
                elif isinstance(effect, Sleep):
                    self._sleep(effect.seconds)
                else:
                    effect.callback(effect.task)
            return run.value
        finally:
            run.close()


class AsyncClient(_Operations):
    """The asyncio twin of ``Client``: the same constructor (``transport`` an async one, ``sleep``
    a coroutine function) and methods, as coroutines. ``async with AsyncClient(...) as c``, or
    ``await c.close()``."""

    def __init__(self, base_url: str, api_key: str | None = None, token: str | None = None,
                 timeout: float | None = 30.0, retries: int = 3, backoff: float = 0.5,
                 transport: httpx.AsyncBaseTransport | None = None, verify: Any = True, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(base_url, api_key=api_key, token=token, timeout=timeout, retries=retries,
                         backoff=backoff, clock=clock)
        self._http = httpx.AsyncClient(transport=transport, verify=verify, follow_redirects=False)
        self._sleep = sleep

    async def close(self) -> None:
        await self._http.aclose()

    aclose = close

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def _bind(self, fn: Callable[..., Op[Any]]) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._drive(fn(self, *args, **kwargs))
        return call

    async def iter_images(self, *, page_size: int = 100, marker: str | None = None,
                          **kwargs: Any) -> AsyncIterator[Any]:
        """``Client.iter_images`` as an async iterator: ``async for image in c.iter_images()``."""
        created = kwargs.pop("marker_created", None)
        while True:
            page = await self.images(limit=page_size, marker=marker, marker_created=created, **kwargs)
            for item in page.items:
                yield item
            if page.next_marker is None:
                return
            marker, created = page.next_marker, page.next_marker_created

    async def _drive(self, op: Op[T]) -> T:
        run = _Run(op)
        try:
            while (effect := run.next()) is not None:
                if isinstance(effect, Send):
                    try:
                        run.reply(await self._http.send(effect.request))
                    except httpx.TransportError as exc:
                        run.fail(exc)
                elif isinstance(effect, Sleep):
                    await self._sleep(effect.seconds)
                else:
                    outcome = effect.callback(effect.task)
                    if inspect.isawaitable(outcome):
                        await outcome
            return run.value
        finally:
            run.close()
