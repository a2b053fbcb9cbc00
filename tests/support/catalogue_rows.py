"""Many images in the read model at once, for the list tests: rows as the projector writes them
(the document built by ``domain.images.public_view_of_state``), with repeated ``created`` times
so that the name tie-breaker decides, and a spread of statuses, owners, tags, ostypes, access
values, bound and attached datacenters. Filtering the unpaged list in Python (``matches``) is the
reference the paged and filtered answers are compared with."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

import orjson
from sqlalchemy import insert

from imagesvc.domain import images
from imagesvc.shared.db.models import ReadImage

TAGS = ("linux", "web", "db_x", "100%", "a b")
BASE = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def image_state(index: int, *, prefix: str, owners: tuple[str, ...], dcs: tuple[str, ...]) -> dict[str, Any]:
    """The ``index``-th seeded image: every 7 images share a creation time."""
    # Mixed case and characters LIKE treats specially are in the names, as they may be.
    name = f"{prefix}{'AB'[index % 2]}{index % 3}_{index:04d}"
    tags = [tag for n, tag in enumerate(TAGS) if (index >> n) & 1 and "%" not in tag and " " not in tag]
    return {
        "dc_bound": [None, dcs[0], dcs[-1]][index % 3],
        "name": name,
        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{prefix}/{index}")),
        "alias": f"alias-{index}",
        "version": "1.0",
        "owner": owners[index % len(owners)],
        "access": (1, 3, 4, 3)[index % 4],
        "desc": 'quoted "ostype":3, and "tags":["linux"] in a description',
        "ostype": 1 + index % 6,
        "size": 1024,
        "resize": False,
        "deploy": False,
        "tags": tags,
        "status": images.STATUS_PENDING if index % 5 == 0 else images.STATUS_OK,
        "created": images.format_time(BASE + timedelta(seconds=index // 7)),
        "dcs": sorted({dcs[index % len(dcs)], *([dcs[0]] if index % 4 == 0 else [])}),
    }


def seed(conn, count: int, *, prefix: str, owners: tuple[str, ...], dcs: tuple[str, ...]) -> list[dict[str, Any]]:
    """Insert ``count`` images into ``rm_images``; returns their states."""
    states = [image_state(i, prefix=prefix, owners=owners, dcs=dcs) for i in range(count)]
    conn.execute(insert(ReadImage.__table__), [{
        "uuid": s["uuid"], "name": s["name"], "created": images.parse_time(s["created"]), "owner": s["owner"],
        "dc_bound": s["dc_bound"], "access": s["access"], "status": s["status"],
        "doc": orjson.dumps(images.public_view_of_state(s)).decode(), "dcs": orjson.dumps(s["dcs"]).decode(),
        "version": 1,
    } for s in states])
    return states


def matches(item: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """Whether an ``extended`` list object passes the query parameters ``filters`` (the documented
    meaning of each: ``name`` a prefix without regard to case, every ``tag`` present)."""
    for key, value in filters.items():
        values = value if isinstance(value, list) else [value]
        if key == "name" and not item["name"].lower().startswith(value.lower()):
            return False
        if key == "status" and item["status"] != _choice(value, {"ok": 1, "pending": 2}):
            return False
        if key == "access" and item["access"] != _choice(value, {"public": 1, "private": 3, "deleted": 4}):
            return False
        if key == "ostype" and item["ostype"] != int(value):
            return False
        if key == "owner" and item["owner"] != value:
            return False
        if key == "tag" and not set(values) <= set(item["tags"]):
            return False
        if key in ("dc", "attached_to") and value not in item["dcs"]:
            return False
    return True


def _choice(value: Any, names: Mapping[str, int]) -> int:
    text = str(value).lower()
    return names[text] if text in names else int(text)
