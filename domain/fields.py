"""Per-field validation of image parameters, with the original API's messages.

Each validator takes a raw value as a client sent it (JSON types, or strings as the ``es`` client
sends them) and returns the normalised value or raises ``FieldError`` with the messages for that
field. ``validate`` runs a set of them and collects errors per field, in the order the original
serializer declares its fields. Checks that need the catalogue (owner exists, alias taken, ...)
live in ``domain.images``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

REQUIRED = "This field is required."
NOT_NULL = "This field may not be null."
INVALID = "Invalid value."
INVALID_URL = "Enter a valid URL."
NOT_INTEGER = "Enter a whole number."
NOT_BOOLEAN = "Must be a valid boolean."
NOT_STRING = "Not a valid string."

ACCESS_PUBLIC, ACCESS_DISABLED, ACCESS_PRIVATE, ACCESS_DELETED, ACCESS_INTERNAL = 1, 2, 3, 4, 9
ACCESS_CHOICES = (ACCESS_PUBLIC, ACCESS_PRIVATE, ACCESS_DELETED)

#: Field order of the original ImageSerializer / ImportImageSerializer (errors are listed in it).
FIELD_ORDER = (
    "manifest_url", "file_url", "dc_bound", "dc", "name", "alias", "version", "owner", "access", "desc",
    "resize", "deploy", "tags",
)

# NUL cannot be stored in PostgreSQL text; control characters have no place in these values.
_CONTROL = frozenset(chr(c) for c in range(32)) - {"\t"}
_UNSAFE_CHARS = set("<>%$&;'\"") | _CONTROL
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_TAG_RE = re.compile(r"^[ :/A-Za-z0-9_-]+\Z")
#: A whole number as a string: at most 18 digits (no field takes a larger number, and int()
#: refuses strings of more than 4300 digits).
_INT_RE = re.compile(r"^\s*[-+]?\d{1,18}\s*\Z")
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})
_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)\Z", re.IGNORECASE)
_TLD = re.compile(r"^(?:[a-z]{2,63}|xn--[a-z0-9]{1,59})\Z", re.IGNORECASE)


class FieldError(ValueError):
    def __init__(self, *messages: str):
        super().__init__(messages[0] if messages else "")
        self.messages = list(messages)


def too_long(limit: int, length: int) -> str:
    return f"Ensure this value has at most {limit} characters (it has {length})."


def _string(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise FieldError(NOT_STRING)
    return value if isinstance(value, str) else str(value)


def has_control_characters(text: str) -> bool:
    return not _CONTROL.isdisjoint(text)


def safe_string(max_length: int, *, blank: bool = False) -> Callable[[Any], str]:
    """A string of at most ``max_length`` characters without any of ``< > % $ & ; ' "``."""

    def check(value: Any) -> str:
        if value is None:
            if blank:
                return ""
            raise FieldError(NOT_NULL)
        text = _string(value)
        if not text and not blank:
            raise FieldError(REQUIRED)
        messages = []
        if len(text) > max_length:
            messages.append(too_long(max_length, len(text)))
        if _UNSAFE_CHARS.intersection(text):
            messages.append(INVALID)
        if messages:
            raise FieldError(*messages)
        return text

    return check


def image_name(value: Any) -> str:
    """The image name of ``POST /image/<name>/``: ``^[A-Za-z0-9][A-Za-z0-9._-]*$``, at most 32."""
    text = _string(value)
    messages = []
    if len(text) > 32:
        messages.append(too_long(32, len(text)))
    if not _NAME_RE.match(text):
        messages.append(INVALID)
    if messages:
        raise FieldError(*messages)
    return text


def boolean(value: Any) -> bool:
    """Strict booleans (deviations #1): true/false, or true/false/1/0 as strings or ints, any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise FieldError(NOT_BOOLEAN)


def integer(value: Any) -> int:
    if isinstance(value, bool):
        raise FieldError(NOT_INTEGER)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT_RE.match(value):
        return int(value)
    raise FieldError(NOT_INTEGER)


def access(value: Any) -> int:
    number = integer(value)
    if number not in ACCESS_CHOICES:
        raise FieldError(f"Select a valid choice. {number} is not one of the available choices.")
    return number


#: At most this many tags per image, each of at most ``TAG_MAX_LENGTH`` characters (the original
#: has no limit; an image row, its events and every list answer carry all of them).
TAGS_MAX = 64
TAG_MAX_LENGTH = 64


def tags(value: Any) -> list[str]:
    """A list of tags, or one string: comma-separated when it has a comma (a tag may then hold
    spaces), else space-separated. Duplicates in a string are dropped. At most ``TAGS_MAX`` tags of
    at most ``TAG_MAX_LENGTH`` characters."""
    if isinstance(value, str):
        parts = value.split(",") if "," in value else value.split()
        items: list[Any] = list(dict.fromkeys(part.strip() for part in parts if part.strip()))
    elif isinstance(value, list):
        items = value
    elif value is None:
        return []
    else:
        raise FieldError(INVALID)
    if len(items) > TAGS_MAX:
        raise FieldError(f"Ensure this field has no more than {TAGS_MAX} elements.")
    result = []
    for item in items:
        if not isinstance(item, str) or not _TAG_RE.match(item):
            raise FieldError(INVALID)
        if len(item) > TAG_MAX_LENGTH:
            raise FieldError(too_long(TAG_MAX_LENGTH, len(item)))
        result.append(item)
    return result


def username(value: Any) -> str:
    if value is None:
        raise FieldError(NOT_NULL)
    text = _string(value)
    if not text:
        raise FieldError(REQUIRED)
    if len(text) > 150:
        raise FieldError(too_long(150, len(text)))
    if has_control_characters(text):
        raise FieldError(INVALID)
    return text


def url(max_length: int) -> Callable[[Any], str]:
    """An absolute http(s) URL of at most ``max_length`` characters (Django URLValidator's rules)."""

    def check(value: Any) -> str:
        if value is None or value == "":
            raise FieldError(REQUIRED)
        text = _string(value)
        messages = []
        if len(text) > max_length:
            messages.append(too_long(max_length, len(text)))
        if not is_valid_url(text):
            messages.append(INVALID_URL)
        if messages:
            raise FieldError(*messages)
        return text

    return check


def is_valid_url(text: str) -> bool:
    if any(ch.isspace() for ch in text) or any(ord(ch) < 32 for ch in text):
        return False
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or port == 0:
        return False
    host = parts.hostname or ""
    if parts.netloc.count("@") > 1 or parts.netloc.endswith("@"):
        return False
    return _valid_host(host, bracketed="[" in parts.netloc)


def _valid_host(host: str, *, bracketed: bool) -> bool:
    if not host:
        return False
    if bracketed:
        try:
            ipaddress.IPv6Address(host)
            return True
        except ValueError:
            return False
    if re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", host):
        try:
            ipaddress.IPv4Address(host)
            return True
        except ValueError:
            return False
    if host.lower() == "localhost":
        return True
    labels = host.rstrip(".").split(".")
    if len(labels) < 2 or not all(_DOMAIN_LABEL.match(label) for label in labels):
        return False
    return bool(_TLD.match(labels[-1]))


def datacenter_name(value: Any) -> str:
    if value is None:
        raise FieldError(NOT_NULL)
    return _string(value)



#: Validators by field name, shared by import (POST) and update (PUT).
VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "manifest_url": url(1024),
    "file_url": url(1024),
    "dc_bound": boolean,
    "dc": datacenter_name,
    "name": image_name,
    "alias": safe_string(32),
    "version": safe_string(16),
    "owner": username,
    "access": access,
    "desc": safe_string(128, blank=True),
    "resize": boolean,
    "deploy": boolean,
    "tags": tags,
}

IMPORT_FIELDS = ("manifest_url", "file_url", "dc_bound", "dc", "alias", "version", "owner", "access", "desc",
                 "resize", "deploy", "tags")
UPDATE_FIELDS = ("dc_bound", "alias", "version", "owner", "access", "desc", "resize", "deploy", "tags")


def validate(data: Mapping[str, Any], fields: Iterable[str]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Validate the supplied ``fields`` of ``data`` (absent keys are skipped).

    Returns ``(normalised values, errors by field)``; errors are ordered as ``FIELD_ORDER``.
    """
    values: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for name in fields:
        if name not in data:
            continue
        try:
            values[name] = VALIDATORS[name](data[name])
        except FieldError as exc:
            errors[name] = exc.messages
    return values, order_errors(errors)


def order_errors(errors: Mapping[str, list[str]]) -> dict[str, list[str]]:
    rank = {name: i for i, name in enumerate(FIELD_ORDER)}
    return {k: list(errors[k]) for k in sorted(errors, key=lambda k: (rank.get(k, len(rank)), k))}
