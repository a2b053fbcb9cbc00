"""Plain records of the write model, as ``shared.db.catalogue`` reads and writes them.

Data only: the rules that apply to them live in ``domain``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Mapping


@dataclass(frozen=True)
class ImageRecord:
    """An image as the write side knows it. ``dc_bound`` and ``dcs`` are datacenter names."""

    uuid: str
    name: str
    alias: str
    version: str
    desc: str
    owner: str
    access: int
    size: int
    ostype: int
    deploy: bool
    resize: bool
    status: int
    tags: list[str]
    created: datetime
    changed: datetime
    dc_bound: str | None = None
    dcs: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    manifest_active: dict[str, Any] = field(default_factory=dict)
    #: The task holding the image's lease lock when the record was read, if any.
    lock_owner: str | None = None
    #: The version of the image's event stream this record reflects (its last event's version).
    stream_version: int = 0

    def with_changes(self, **changes: Any) -> "ImageRecord":
        return replace(self, **changes)


@dataclass(frozen=True)
class UserRecord:
    id: int
    username: str
    is_superadmin: bool
    api_access: bool = True
    is_active: bool = True
    #: The user's current datacenter (always visible to them).
    default_dc_id: int | None = None


@dataclass(frozen=True)
class DatacenterRecord:
    id: int
    name: str
    is_default: bool = False
    image_limit: int | None = None
    owner_id: int | None = None
    #: 1 public, 3 private.
    access: int = 3


@dataclass(frozen=True)
class Grants:
    """What a user holds through datacenter ownership and roles: for every datacenter a role of
    theirs is attached to, the union of those roles' permissions (possibly empty), and the
    datacenters they own."""

    permissions: Mapping[str, frozenset[str]] = field(default_factory=dict)
    owned: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RepositoryRecord:
    """A remote image repository's last refresh: when, how many images, the error of the last
    attempt (None when it succeeded), and the listed manifests newest first (None when not loaded)."""

    name: str
    url: str
    last_update: datetime | None
    image_count: int
    error: str | None
    images: list[dict[str, Any]] | None = None
