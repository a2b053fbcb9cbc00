"""The deployment's recorded settings (``deployment`` table; the rules are ``shared.deployment``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from sqlalchemy import Engine, delete, select

from imagesvc.shared.db.dialect import insert_ignore
from imagesvc.shared.db.engine import write_transaction
from imagesvc.shared.db.models import DeploymentSetting, utcnow


@dataclass(frozen=True)
class Recorded:
    name: str
    value: str
    recorded_by: str
    recorded_at: datetime


def recorded(engine: Engine) -> dict[str, Recorded]:
    """The record, by name."""
    with engine.connect() as conn:
        rows = conn.execute(select(DeploymentSetting)).all()
    return {row.name: Recorded(row.name, row.value, row.recorded_by, row.recorded_at) for row in rows}


def record_missing(engine: Engine, values: Iterable[tuple[str, str]], recorded_by: str) -> None:
    """Record each (name, value) whose name has no value yet (a concurrent recorder's value wins
    over ours; the caller compares afterwards)."""
    with write_transaction(engine) as conn:
        for name, value in values:
            insert_ignore(conn, DeploymentSetting.__table__,
                          {"name": name, "value": value, "recorded_by": recorded_by, "recorded_at": utcnow()})


def replace(engine: Engine, values: Iterable[tuple[str, str]], recorded_by: str) -> None:
    """Record each (name, value), replacing what was there, in one transaction."""
    rows = [{"name": name, "value": value, "recorded_by": recorded_by, "recorded_at": utcnow()}
            for name, value in values]
    with write_transaction(engine) as conn:
        conn.execute(delete(DeploymentSetting).where(DeploymentSetting.name.in_([row["name"] for row in rows])))
        if rows:
            conn.execute(DeploymentSetting.__table__.insert(), rows)
