"""The stored state of remote image repositories (table ``image_repositories``).

Written by the importer's refresh, read by the gateway. It is a cache of what the repositories
listed, not catalogue state: no events, no read-model copy. A refresh commits the state before
its task's outcome, so a client that sees the task finished reads the new state.
"""

from __future__ import annotations

from typing import Collection

from sqlalchemy import Connection, select, update

from imagesvc.shared.db.dialect import prepared
from imagesvc.shared.db.models import ImageRepository
from imagesvc.shared.db.records import RepositoryRecord

_repositories = ImageRepository.__table__
_SUMMARY = (_repositories.c.name, _repositories.c.url, _repositories.c.last_update, _repositories.c.image_count,
            _repositories.c.error)
_STATE_COLUMNS = ("url", "last_update", "image_count", "error", "images")


def load(conn: Connection, names: Collection[str], *, with_images: bool = False) -> dict[str, RepositoryRecord]:
    """The stored state of these repositories (those never refreshed are missing), name -> record."""
    if not names:
        return {}
    columns = (*_SUMMARY, _repositories.c.images) if with_images else _SUMMARY
    rows = conn.execute(select(*columns).where(_repositories.c.name.in_(sorted(names)))).all()
    return {row.name: RepositoryRecord(name=row.name, url=row.url, last_update=row.last_update,
                                       image_count=row.image_count or 0, error=row.error,
                                       images=row.images if with_images else None) for row in rows}


def _upsert(insert):
    return insert.on_conflict_do_update(index_elements=[_repositories.c.name],
                                        set_={c: insert.excluded[c] for c in _STATE_COLUMNS})


def save_refreshed(conn: Connection, record: RepositoryRecord) -> None:
    """Replace the repository's state with a successful refresh."""
    conn.execute(prepared(conn, _repositories, "upsert", _upsert), {
        "name": record.name, "url": record.url, "last_update": record.last_update,
        "image_count": record.image_count, "error": None, "images": record.images or [],
    })


def save_failure(conn: Connection, record: RepositoryRecord) -> None:
    """Record a failed refresh: only the error changes when the stored state is from the same URL;
    otherwise the state starts over with the error and no list."""
    kept = conn.execute(update(_repositories)
                        .where(_repositories.c.name == record.name, _repositories.c.url == record.url)
                        .values(error=record.error)).rowcount
    if kept != 1:
        conn.execute(prepared(conn, _repositories, "upsert", _upsert), {
            "name": record.name, "url": record.url, "last_update": None, "image_count": 0,
            "error": record.error, "images": None,
        })
