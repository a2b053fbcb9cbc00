"""The read model as comparable data: what a replay must reproduce exactly."""

from __future__ import annotations

from sqlalchemy import Connection, select

from imagesvc.shared.db.models import ReadImage, ReadStream, ReadTask

#: Written with the wall clock when a row is projected: a replay cannot reproduce it.
_PROJECTION_TIME = ("updated_at",)


def read_model(conn: Connection) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """(images, stream positions, tasks), each sorted by key, without projection timestamps."""
    def rows(table) -> list[tuple]:
        columns = [c for c in table.c if c.name not in _PROJECTION_TIME]
        return sorted(tuple(r) for r in conn.execute(select(*columns)))

    return rows(ReadImage.__table__), rows(ReadStream.__table__), rows(ReadTask.__table__)
