"""What the API answers, as frozen dataclasses.

Each model keeps the whole JSON object it was read from in ``raw``: a field the API adds later is
never lost, only not typed yet. Missing keys read as None. ``raw`` takes no part in equality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

__all__ = ["Image", "Page", "Progress", "Repository", "Task", "PENDING", "STARTED", "SUCCESS", "FAILURE"]

PENDING, STARTED, SUCCESS, FAILURE = "PENDING", "STARTED", "SUCCESS", "FAILURE"
_TERMINAL = frozenset({SUCCESS, FAILURE})


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _strings(value: Any) -> tuple[str, ...] | None:
    return tuple(str(item) for item in value) if isinstance(value, list) else None


def _time(value: str | None) -> datetime | None:
    """The API's ISO 8601 times end in ``Z`` (UTC)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class Image:
    """A server disk image (``GET /api/image/<name>/``).

    ``access``: 1 public, 3 private, 4 deleted; ``ostype``: 1 Linux, 2 SunOS, 3 BSD, 4 Windows,
    5 SunOS zone, 6 Linux zone; ``size`` in MiB; ``status``: 1 OK, 2 PENDING; ``created``: the
    API's ISO 8601 text (``created_at`` parses it); ``dcs``: the datacenters it is attached to
    (only when asked for ``extended``); ``etag``: the version tag of ``get_image``'s answer, for
    ``update_image(..., if_match=image.etag)`` (None elsewhere).
    """

    name: str
    uuid: str | None
    alias: str | None
    version: str | None
    owner: str | None
    access: int | None
    desc: str | None
    ostype: int | None
    size: int | None
    resize: bool | None
    deploy: bool | None
    tags: tuple[str, ...] | None
    status: int | None
    created: str | None
    dc_bound: bool | None
    dcs: tuple[str, ...] | None = None
    etag: str | None = field(default=None, compare=False)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, etag: str | None = None) -> Image:
        return cls(
            name=str(data.get("name", "")), uuid=_str(data.get("uuid")), alias=_str(data.get("alias")),
            version=_str(data.get("version")), owner=_str(data.get("owner")), access=_int(data.get("access")),
            desc=_str(data.get("desc")), ostype=_int(data.get("ostype")), size=_int(data.get("size")),
            resize=_bool(data.get("resize")), deploy=_bool(data.get("deploy")), tags=_strings(data.get("tags")),
            status=_int(data.get("status")), created=_str(data.get("created")), dc_bound=_bool(data.get("dc_bound")),
            dcs=_strings(data.get("dcs")), etag=etag, raw=dict(data),
        )

    @property
    def created_at(self) -> datetime | None:
        """``created`` as an aware datetime (UTC)."""
        return _time(self.created)


@dataclass(frozen=True)
class Progress:
    """How far a running task is: ``done`` of ``total`` (bytes, for an import or export)."""

    done: int
    total: int | None

    @classmethod
    def from_json(cls, data: Any) -> Progress | None:
        if not isinstance(data, dict) or _int(data.get("done")) is None:
            return None
        return cls(done=data["done"], total=_int(data.get("total")))

    @property
    def fraction(self) -> float | None:
        """``done / total`` (0..1), None when the total is unknown."""
        return min(self.done / self.total, 1.0) if self.total else None


@dataclass(frozen=True)
class Task:
    """A task: every command is one. ``status``: ``PENDING``, ``STARTED``, ``SUCCESS`` or
    ``FAILURE``; ``result``: what the task produced (the image for a database-level change,
    ``{"returncode", "message"}`` for an import through the image store, the failure's
    ``{"returncode", "message", "detail", "code"}`` or field errors, ...); ``http_code``: the HTTP
    status of the answer that carried this state; ``progress``: while it runs, if it reports any."""

    task_id: str
    status: str
    result: Any = field(default=None, hash=False)
    http_code: int | None = None
    progress: Progress | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_envelope(cls, data: Mapping[str, Any], http_code: int | None) -> Task:
        """From the API's ``{"task_id", "status", "result"[, "progress"]}``."""
        return cls(task_id=str(data.get("task_id", "")), status=str(data.get("status", "")), result=data.get("result"),
                   http_code=http_code, progress=Progress.from_json(data.get("progress")), raw=dict(data))

    @property
    def done(self) -> bool:
        """True once the task has ended (``SUCCESS`` or ``FAILURE``)."""
        return self.status in _TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCESS

    @property
    def failed(self) -> bool:
        return self.status == FAILURE


@dataclass(frozen=True)
class Repository:
    """A remote image repository (``GET /api/imagestore/<name>/``): its ``last_update`` (ISO 8601,
    None if never refreshed), the ``image_count`` and ``error`` of its last refresh."""

    name: str
    url: str | None
    last_update: str | None = None
    image_count: int | None = None
    error: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Repository:
        return cls(name=str(data.get("name", "")), url=_str(data.get("url")), last_update=_str(data.get("last_update")),
                   image_count=_int(data.get("image_count")), error=_str(data.get("error")), raw=dict(data))

    @property
    def last_update_at(self) -> datetime | None:
        return _time(self.last_update)


@dataclass(frozen=True)
class Page:
    """One page of a list (``limit``/``marker`` paging): its ``items`` (Image objects, names, or
    the list's own objects), and where the next page starts: ``next``, the absolute URL of the
    answer's ``Link: <...>; rel="next"`` (resolved against the request's URL), ``next_marker``,
    the marker in it, and ``next_marker_created``, the marker's sort key an image list sorted by
    ``created`` adds (else None). They are None on the last page. A page iterates, and has a
    length, as its items."""

    items: list[Any]
    next: str | None = None
    next_marker: str | None = None
    next_marker_created: str | None = None

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def last(self) -> bool:
        return self.next is None
