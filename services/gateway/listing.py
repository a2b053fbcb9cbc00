"""Paging and filtering of the list endpoints: the query parameters, their checks, the ``Link``.

A list answered without ``limit`` is the whole list, exactly as before (the ``es`` client relies
on it). With ``limit`` it is one page: the rows strictly after ``marker`` (the identifying field
of the last row of the previous page: an image's name, a VM's hostname, a repository's name, a
repository image's uuid) in the list's order, and a ``Link: <...>; rel="next"`` header when more
may follow (a relative reference: right behind any proxy). An image list sorted by ``created``
also carries ``marker_created`` (the marker's sort key) in its ``Link``, so the next page never
needs the marker's row: a walk survives the removal of the image it stopped at. Every bad value
is a 400 with a field error in the gateway's usual shape (the task envelope of
``ValidationFailed``), collected for all the parameters at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

from starlette.datastructures import QueryParams
from starlette.requests import Request

from imagesvc.domain import fields, images
from imagesvc.domain.manifest import OSTYPE_LINUX, OSTYPE_LINUX_ZONE

MAX_LIMIT = 1000
#: The longest name prefix worth looking for (an image name has at most 64 characters).
NAME_MAX = 64
DC_NAME_MAX = 16
#: The longest VM hostname (the inventory's column).
HOSTNAME_MAX = 255

ONCE = "Give this parameter once."
BLANK = "This field may not be blank."
TOO_SMALL = "Ensure this value is greater than or equal to 1."
TOO_LARGE = f"Ensure this value is less than or equal to {MAX_LIMIT}."
UNKNOWN_MARKER = "Unknown marker: it names nothing in this list."
BAD_TIMESTAMP = "Enter a valid date/time."
WITHOUT_MARKER = "Give it only with marker."
TWO_NAMES = "Give attached_to or dc, not both."

#: ``status`` by number or by name (reference §6.2: OK=1, PENDING=2).
STATUS_CHOICES = {"1": images.STATUS_OK, "2": images.STATUS_PENDING, "ok": images.STATUS_OK,
                  "pending": images.STATUS_PENDING}
#: ``access`` by number or by name: the values the API sets (public, private, deleted).
ACCESS_CHOICES = {"1": fields.ACCESS_PUBLIC, "3": fields.ACCESS_PRIVATE, "4": fields.ACCESS_DELETED,
                  "public": fields.ACCESS_PUBLIC, "private": fields.ACCESS_PRIVATE, "deleted": fields.ACCESS_DELETED}
OSTYPES = range(OSTYPE_LINUX, OSTYPE_LINUX_ZONE + 1)

#: The image list's filter parameters, in the order their errors are listed. ``dc`` is read as
#: ``attached_to`` in a paged request only (see ``parse_image_filters``).
IMAGE_FILTERS = ("status", "name", "ostype", "owner", "tag", "attached_to", "dc", "access")


def not_a_choice(value: str) -> str:
    return f"Select a valid choice. {value} is not one of the available choices."


@dataclass(frozen=True)
class Paging:
    """``limit`` None: the whole list (``marker`` is then None too). ``marker_created``: the
    marker image's ``created`` as the previous page's ``Link`` gave it (None: look it up)."""

    limit: int | None = None
    marker: str | None = None
    marker_created: datetime | None = None

    @property
    def paged(self) -> bool:
        return self.limit is not None


@dataclass(frozen=True)
class ImageFilters:
    """What an image list is narrowed to (within what the caller may see). ``name``: a prefix,
    compared without regard to case; ``tags``: the image has every one of them."""

    status: int | None = None
    name: str | None = None
    ostype: int | None = None
    owner: str | None = None
    tags: tuple[str, ...] = ()
    attached_to: str | None = None
    access: int | None = None

    @property
    def any(self) -> bool:
        return any(getattr(self, f) for f in ("status", "name", "ostype", "owner", "tags", "attached_to", "access"))


def _single(params: QueryParams, name: str, errors: dict[str, list[str]]) -> str | None:
    values = params.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        errors[name] = [ONCE]
        return None
    if values[0] == "":
        errors[name] = [BLANK]
        return None
    return values[0]


def is_paged(params: QueryParams) -> bool:
    """A paged request: ``limit`` or ``marker`` given (valid or not)."""
    return "limit" in params or "marker" in params


def parse_timestamp(raw: str) -> datetime:
    """An ISO 8601 timestamp (UTC when it names no offset). ValueError if it is none."""
    if len(raw) > 40 or fields.has_control_characters(raw):
        raise ValueError(raw)
    found = datetime.fromisoformat(raw)
    return found.replace(tzinfo=timezone.utc) if found.tzinfo is None else found.astimezone(timezone.utc)


def parse_paging(params: QueryParams, errors: dict[str, list[str]], *, marker_max: int = NAME_MAX,
                 keyed: bool = False) -> Paging:
    """``limit`` (1..1000) and ``marker``; with ``keyed`` (the image lists) also
    ``marker_created``, an ISO 8601 timestamp (400 if it is none, or given without ``marker``).
    A ``marker`` without ``limit`` is a page of the largest size (a client following a page's
    marker may leave the limit out)."""
    raw_limit = _single(params, "limit", errors)
    limit = None
    if raw_limit is not None:
        try:
            limit = fields.integer(raw_limit)
        except fields.FieldError as exc:
            errors["limit"] = exc.messages
        else:
            if limit < 1:
                errors["limit"] = [TOO_SMALL]
            elif limit > MAX_LIMIT:
                errors["limit"] = [TOO_LARGE]
    marker = _single(params, "marker", errors)
    if marker is not None and (len(marker) > marker_max or fields.has_control_characters(marker)):
        errors["marker"] = [UNKNOWN_MARKER]  # it cannot name anything: no look-up needed
    marker_created = None
    raw_created = _single(params, "marker_created", errors) if keyed else None
    if raw_created is not None:
        if "marker" not in params:
            errors["marker_created"] = [WITHOUT_MARKER]
        else:
            try:
                marker_created = parse_timestamp(raw_created)
            except ValueError:
                errors["marker_created"] = [BAD_TIMESTAMP]
    if "limit" in errors or "marker" in errors or "marker_created" in errors:
        return Paging()
    if marker is not None and limit is None:
        limit = MAX_LIMIT
    return Paging(limit, marker, marker_created)


def _choice(params: QueryParams, name: str, choices: Mapping[str, int], errors: dict[str, list[str]]) -> int | None:
    raw = _single(params, name, errors)
    if raw is None:
        return None
    found = choices.get(raw.strip().lower())
    if found is None:
        errors[name] = [not_a_choice(raw)]
    return found


def parse_image_filters(params: QueryParams, errors: dict[str, list[str]]) -> ImageFilters:
    """The filters of an image list; bad values go to ``errors`` (field -> messages).

    ``dc`` is Danube Cloud's general request parameter (the datacenter a request acts in), which
    the original's image lists ignore: ``es get /image -dc X`` answers the whole list. So an
    unpaged request ignores it still; only a paged one (``limit`` or ``marker``: new in
    imagesvc, no old client sends them) reads it as ``attached_to``."""
    status = _choice(params, "status", STATUS_CHOICES, errors)
    name = _single(params, "name", errors)
    if name is not None and (len(name) > NAME_MAX or fields.has_control_characters(name)):
        errors["name"] = [fields.too_long(NAME_MAX, len(name))] if len(name) > NAME_MAX else [fields.INVALID]
        name = None
    ostype = None
    raw_ostype = _single(params, "ostype", errors)
    if raw_ostype is not None:
        try:
            ostype = fields.integer(raw_ostype)
        except fields.FieldError as exc:
            errors["ostype"] = exc.messages
        else:
            if ostype not in OSTYPES:
                errors["ostype"] = [not_a_choice(str(ostype))]
                ostype = None
    owner = _single(params, "owner", errors)
    if owner is not None:
        try:
            owner = fields.username(owner)
        except fields.FieldError as exc:
            errors["owner"] = exc.messages
            owner = None
    tags: tuple[str, ...] = ()
    raw_tags = params.getlist("tag")
    if raw_tags:
        if "" in raw_tags:
            errors["tag"] = [BLANK]
        else:
            try:
                # Each value is one tag (a comma or a space in it is refused by the tag rule).
                tags = tuple(dict.fromkeys(fields.tags(list(raw_tags))))
            except fields.FieldError as exc:
                errors["tag"] = exc.messages
    attached_to = _datacenter_name(params, "attached_to", errors)
    if is_paged(params) and "dc" in params:
        if "attached_to" in params:
            errors["dc"] = [TWO_NAMES]
        else:
            attached_to = _datacenter_name(params, "dc", errors)
    access = _choice(params, "access", ACCESS_CHOICES, errors)
    return ImageFilters(status=status, name=name, ostype=ostype, owner=owner, tags=tags, attached_to=attached_to,
                        access=access)


def _datacenter_name(params: QueryParams, name: str, errors: dict[str, list[str]]) -> str | None:
    dc = _single(params, name, errors)
    if dc is not None and (len(dc) > DC_NAME_MAX or fields.has_control_characters(dc)):
        errors[name] = [fields.too_long(DC_NAME_MAX, len(dc))] if len(dc) > DC_NAME_MAX else [fields.INVALID]
        return None
    return dc


def ordered_errors(errors: Mapping[str, list[str]], order: Sequence[str]) -> dict[str, list[str]]:
    """``errors`` with the paging fields first, then the filters in ``order``."""
    keys = ["limit", "marker", "marker_created", *order]
    return {key: errors[key] for key in sorted(errors, key=lambda k: keys.index(k) if k in keys else len(keys))}


def next_link(request: Request, marker: str, marker_created: datetime | None = None) -> str:
    """The ``Link`` header value of the next page: this request's path and query with ``marker``
    (and ``marker_created`` when given) replaced (``limit``, ``order_by``, ``full``/``extended``
    and the filters carried as they were). A path-absolute reference (RFC 8288 takes any
    URI-reference, resolved against the request's URL): the host and scheme the gateway sees
    are not those of a client behind a TLS proxy."""
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("marker", "marker_created")]
    extra = [("marker_created", marker_created.isoformat())] if marker_created is not None else []
    query = QueryParams([*kept, ("marker", marker), *extra])
    return f'<{request.url.path}?{query}>; rel="next"'


def page_after(items: Sequence[Any], key: Callable[[Any], str], paging: Paging
               ) -> tuple[list[Any], bool] | None:
    """One page of a list held in memory (already in its order): the items after the one whose
    ``key`` is ``paging.marker``, at most ``paging.limit``, and whether more follow. None: no item
    has the marker's key."""
    start = 0
    if paging.marker is not None:
        for index, item in enumerate(items):
            if key(item) == paging.marker:
                start = index + 1
                break
        else:
            return None
    assert paging.limit is not None
    page = list(items[start:start + paging.limit])
    return page, start + paging.limit < len(items)
