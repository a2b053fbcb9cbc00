"""IMGAPI v2 manifests: what an import accepts (reference §10.1) and what an image stores (§10.2)."""

from __future__ import annotations

import uuid as uuidlib
from datetime import datetime, timezone
from typing import Any, Mapping

import orjson

from imagesvc.domain.fields import ACCESS_INTERNAL, ACCESS_DISABLED, ACCESS_PUBLIC, FieldError, integer

#: Largest manifest the importer reads (the original's 8 KiB cap).
MANIFEST_MAX_BYTES = 8192
#: Seconds allowed for the manifest fetch and for the file probe, each (the original's; the
#: importer's is ``IMAGESVC_FETCH_TIMEOUT``).
FETCH_TIMEOUT = 5.0
#: Bytes read from the file URL to prove it answers.
PROBE_BYTES = 32
DEFAULT_SIZE_MB = 1024
#: Largest ``image_size`` (MiB) a manifest may give: what the image's size column holds (the
#: original's too: a Django IntegerField).
MAX_IMAGE_SIZE_MB = 2**31 - 1

OSTYPE_LINUX, OSTYPE_SUNOS, OSTYPE_BSD, OSTYPE_WINDOWS, OSTYPE_SUNOS_ZONE, OSTYPE_LINUX_ZONE = 1, 2, 3, 4, 5, 6
ZONE_OSTYPES = frozenset({OSTYPE_SUNOS_ZONE, OSTYPE_LINUX_ZONE})
_OS_TO_OSTYPE = {"linux": OSTYPE_LINUX, "illumos": OSTYPE_SUNOS, "bsd": OSTYPE_BSD, "windows": OSTYPE_WINDOWS}
_OSTYPE_TO_OS = {1: "linux", 2: "illumos", 3: "bsd", 4: "windows", 5: "smartos", 6: "linux"}
_NIL_OWNER = "00000000-0000-0000-0000-000000000000"

COULD_NOT_PARSE = "Could not parse image manifest."
INVALID_MANIFEST = "Invalid image manifest."
MULTIPLE_FILES = "Multiple files inside manifest are not supported."


class ManifestError(ValueError):
    """The manifest cannot be imported; the message is the original's text."""


def unreachable(error: str) -> str:
    return f"Image manifest URL is unreachable ({error})."


def file_unreachable(error: str) -> str:
    return f"Image file URL is unreachable ({error})."


def uuid_taken(name: str) -> str:
    return f'Image UUID is already registered by image "{name}".'


def default_file_url(manifest_url: str) -> str:
    """``https://repo/images/<uuid>`` -> ``https://repo/images/<uuid>/file``."""
    return manifest_url.strip("/") + "/file"


def file_url_of(values: Mapping[str, Any]) -> str:
    """The URL an import's file comes from: its ``file_url``, else the one beside its manifest."""
    return values.get("file_url") or default_file_url(values["manifest_url"])


def parse(raw: bytes) -> dict[str, Any]:
    """Parse and check a fetched manifest. Raises ManifestError with the original's message."""
    try:
        manifest = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ManifestError(COULD_NOT_PARSE) from None
    if not isinstance(manifest, dict):
        raise ManifestError(INVALID_MANIFEST)
    for key in ("uuid", "version", "type"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            raise ManifestError(INVALID_MANIFEST)
    try:
        manifest["uuid"] = str(uuidlib.UUID(manifest["uuid"]))
    except ValueError:
        raise ManifestError(INVALID_MANIFEST) from None
    if manifest["type"] not in ("zone-dataset", "lx-dataset") and not isinstance(manifest.get("os"), str):
        raise ManifestError(INVALID_MANIFEST)
    files = manifest.get("files")
    if not isinstance(files, list) or not files or not isinstance(files[0], dict):
        raise ManifestError(INVALID_MANIFEST)
    if len(files) > 1:
        raise ManifestError(MULTIPLE_FILES)
    size = manifest.get("image_size")
    if size is not None:
        if isinstance(size, str):
            try:
                manifest["image_size"] = size = integer(size)  # the original int()s it
            except FieldError:
                raise ManifestError(INVALID_MANIFEST) from None
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_IMAGE_SIZE_MB:
            raise ManifestError(INVALID_MANIFEST)
    for key, kind in (("description", str), ("tags", dict), ("requirements", dict)):
        if manifest.get(key) is not None and not isinstance(manifest[key], kind):
            raise ManifestError(INVALID_MANIFEST)
    return manifest


def ostype(manifest: Mapping[str, Any]) -> int:
    kind = manifest["type"]
    if kind == "zone-dataset":
        return OSTYPE_SUNOS_ZONE
    if kind == "lx-dataset":
        return OSTYPE_LINUX_ZONE
    os_name = manifest.get("os") or ""
    if os_name.lower() == "smartos":
        return OSTYPE_SUNOS
    return _OS_TO_OSTYPE.get(os_name, OSTYPE_LINUX)


def size_mb(manifest: Mapping[str, Any]) -> int:
    size = manifest.get("image_size")
    return size if isinstance(size, int) and not isinstance(size, bool) else DEFAULT_SIZE_MB


def import_defaults(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Values the manifest offers for fields the request left out (only truthy ones count)."""
    tags = manifest.get("tags") or {}
    defaults: dict[str, Any] = {}
    if manifest.get("version"):
        defaults["version"] = manifest["version"]
    if manifest.get("description"):
        defaults["desc"] = manifest["description"][:128]
    # The original reads tags.resize with "true for zones" as its fallback, then keeps it only if
    # truthy: an explicit false offers nothing, so the request default (false) applies. Manifest
    # values are the repository's, not the client's: they are taken by truthiness, not refused.
    resize = tags.get("resize", ostype(manifest) in ZONE_OSTYPES)
    if resize:
        defaults["resize"] = True
    if tags.get("deploy"):
        defaults["deploy"] = True
    if tags.get("erigones"):
        defaults["tags"] = tags["erigones"]
    return defaults


def build(source: Mapping[str, Any], *, uuid: str, alias: str, version: str, desc: str, access: int, ostype: int,
          size: int, tags: list[str], resize: bool, deploy: bool, now: datetime | None = None) -> dict[str, Any]:
    """The manifest an image stores and serves (reference §10.2), from the source manifest."""
    manifest: dict[str, Any] = {"v": 2, "owner": _NIL_OWNER, "state": "active", "disabled": False, "public": False}
    manifest.update({k: v for k, v in source.items() if k != "tags"})
    manifest.update(
        uuid=uuid,
        name=alias,
        version=version,
        state="active",
        disabled=access in (ACCESS_DISABLED, ACCESS_INTERNAL),
        public=access == ACCESS_PUBLIC,
        os=_OSTYPE_TO_OS[ostype],
        description=desc,
        tags={"erigones": list(tags), "resize": resize, "deploy": deploy, "internal": access == ACCESS_INTERNAL},
    )
    if ostype in ZONE_OSTYPES:
        for key in ("image_size", "nic_driver", "disk_driver", "cpu_type"):
            manifest.pop(key, None)
        manifest["type"] = "zone-dataset" if ostype == OSTYPE_SUNOS_ZONE else "lx-dataset"
    else:
        manifest["image_size"] = size
        manifest.setdefault("cpu_type", "qemu64")
        if manifest.get("type") != "other":
            manifest["type"] = "zvol"
    if not manifest.get("published_at"):
        stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        manifest["published_at"] = stamp
    return manifest


#: Image attributes that the served manifest reflects (a change to one rebuilds it).
MANIFEST_ATTRIBUTES = frozenset({"alias", "version", "desc", "access", "tags", "resize", "deploy"})


def for_image(image, *, source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest an image serves, rebuilt from its attributes over ``source`` (by default its
    active manifest, so keys such as ``files`` or ``published_at`` are kept)."""
    return build(source if source is not None else image.manifest_active, uuid=image.uuid, alias=image.alias,
                 version=image.version, desc=image.desc, access=image.access, ostype=image.ostype, size=image.size,
                 tags=list(image.tags), resize=image.resize, deploy=image.deploy)
