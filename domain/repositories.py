"""Remote image repositories (the original's ``ImageStore``, reference §2.3, §3.8).

A repository is an IMGAPI server: ``GET <url>/images`` lists its manifests. Which repositories
exist is configuration (``IMAGESVC_IMAGE_REPOSITORIES``), plus, for SuperAdmins only, the local
repository: the image server itself. A refresh stores each repository's list; the API's
repository and image objects are derived from what was stored.

URLs are built with ``urljoin`` as the original built them, quirk included: a repository URL
without a trailing slash loses its last path segment (``https://host/repo`` lists
``https://host/images``, ``https://host/repo/`` lists ``https://host/repo/images``).
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timezone
from typing import Any, Mapping
from urllib.parse import urljoin, urlsplit

import orjson

from imagesvc.domain import manifest as manifests
from imagesvc.domain.images import format_time
from imagesvc.shared.db.records import RepositoryRecord

NOT_FOUND = "ImageStore not found"
ALREADY_RUNNING = "Task is already running"
#: The lease lock every refresh takes (the original's global ``imagestore-update``).
LOCK_NAME = "imagestore-update"
LOCK_SECONDS = 60.0
#: Limits of one repository's list download (the original's).
FETCH_TIMEOUT = 20.0
LIST_MAX_BYTES = 10 * 1024 * 1024
#: The stored state of a repository has room for names this long.
NAME_MAX_LENGTH = 64


class RepositoryError(ValueError):
    """A repository answered something that is not an image list; the message is the original's."""


def images_url(url: str) -> str:
    """Where a repository lists its images (``urljoin``, see the module docstring)."""
    return urljoin(url, "images")


def manifest_url(url: str, uuid: str) -> str:
    """Where a repository serves one image's manifest."""
    return urljoin(url, f"images/{uuid}")


def local_repository(image_server_url: str) -> tuple[str, str] | None:
    """(name, url) of the image server as a repository, or None when there is no image server.

    The original named it ``_`` + the image server VM's hostname. We have no VM, so the name is
    ``_`` + the short host name of ``image_server_url``, lower-cased: the first label of a DNS name
    (``http://Img01.example.com`` -> ``_img01``), an IPv4 address whole (``_10.0.0.5``), an IPv6
    address with ``-`` for ``:`` (a URL segment cannot hold colons).
    """
    if not image_server_url:
        return None
    host = (urlsplit(image_server_url).hostname or "").lower().rstrip(".")
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        short = host.split(".")[0]
    else:
        short = str(address).replace(":", "-")
    return "_" + short, image_server_url


def visible(configured: Mapping[str, str], local: tuple[str, str] | None, *,
            is_superadmin: bool) -> dict[str, str]:
    """The repositories a user may see and use, name -> URL, sorted by name: the configured ones,
    and the local one for SuperAdmins."""
    found = dict(configured)
    if local is not None and is_superadmin:
        found.setdefault(*local)
    return dict(sorted(found.items()))


def parse_image_list(raw: bytes) -> list[dict[str, Any]]:
    """A repository's answer to ``GET /images``: a JSON list. Raises RepositoryError with the
    original's messages. Entries that are not objects with a string ``uuid`` are dropped (no
    image could be shown or imported from them)."""
    try:
        listed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RepositoryError(f"Image server response could not be decoded ({exc})") from None
    if not isinstance(listed, list):
        raise RepositoryError(f"Unexpected output from image server ({type(listed)})")
    return [entry for entry in listed if isinstance(entry, dict) and isinstance(entry.get("uuid"), str)]


def _published(entry: Mapping[str, Any]) -> datetime | None:
    value = entry.get("published_at")
    if not isinstance(value, str) or not value:
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def newest_first(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Manifests ordered by ``published_at``, newest first; those without a readable date last,
    in the repository's order."""
    dated = [(stamp, entry) for entry in entries if (stamp := _published(entry)) is not None]
    undated = [entry for entry in entries if _published(entry) is None]
    dated.sort(key=lambda pair: pair[0], reverse=True)
    return [entry for _, entry in dated] + undated


def _text(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _ostype(entry: Mapping[str, Any]) -> int:
    """The ostype import would give the manifest (a repository's malformed keys read as absent)."""
    return manifests.ostype({"type": _text(entry.get("type")), "os": _text(entry.get("os"))})


def image_object(entry: Mapping[str, Any], repository_url: str) -> dict[str, Any]:
    """The API's object for one repository image (reference §3.8), keys in the original's order."""
    files = entry.get("files")
    first = files[0] if isinstance(files, list) and files and isinstance(files[0], dict) else {}
    published = _published(entry)
    size = entry.get("image_size", manifests.DEFAULT_SIZE_MB)
    return {
        "manifest": dict(entry),
        "manifest_url": manifest_url(repository_url, entry["uuid"]),
        "uuid": entry["uuid"],
        "name": _text(entry.get("name")),
        "version": _text(entry.get("version")),
        "created": format_time(published) if published else "",
        "ostype": _ostype(entry),
        "desc": _text(entry.get("description")),
        "homepage": entry.get("homepage"),
        "size": size,
        "state": _text(entry.get("state")),
        "download_size": first.get("size", 0),
    }


def repository_object(name: str, url: str, record: RepositoryRecord | None) -> dict[str, Any]:
    """The API's repository object. A stored state counts only for the URL it was fetched from: a
    repository whose URL changed in the configuration reads as never refreshed."""
    if record is None or record.url != url:
        return {"name": name, "url": url, "last_update": None, "image_count": 0, "error": None}
    return {
        "name": name,
        "url": url,
        "last_update": format_time(record.last_update) if record.last_update else None,
        "image_count": record.image_count or 0,
        "error": record.error,
    }


def current(record: RepositoryRecord | None, url: str) -> RepositoryRecord | None:
    """``record`` if it was fetched from ``url`` (see ``repository_object``), else None."""
    return record if record is not None and record.url == url else None


def refreshed(name: str, url: str, *, images: list[dict[str, Any]], now: datetime) -> RepositoryRecord:
    """The state after a successful refresh."""
    return RepositoryRecord(name=name, url=url, last_update=now, image_count=len(images), error=None,
                            images=newest_first(images))


def failed(name: str, url: str, previous: RepositoryRecord | None, error: str) -> RepositoryRecord:
    """The state after a failed refresh: the error, with the previous refresh's date, count and
    list kept (as the original did). ``images`` is None here: storing a failure leaves the stored
    list alone."""
    kept = current(previous, url)
    return RepositoryRecord(name=name, url=url, last_update=kept.last_update if kept else None,
                            image_count=kept.image_count if kept else 0, error=error, images=None)
