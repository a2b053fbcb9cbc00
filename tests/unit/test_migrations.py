"""Alembic migrations build exactly the schema the models describe (SQLite here, PostgreSQL in
tests/integration), and seed the default datacenter."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, select

from shared.db.migrate import alembic_config, upgrade
from shared.db.models import Datacenter


def test_upgrade_to_head_matches_the_models_and_seeds_main(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    command.check(alembic_config(url))  # raises if models and migrations drift apart
    upgrade(url)  # idempotent
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(Datacenter.__table__.c.id, Datacenter.__table__.c.name,
                                   Datacenter.__table__.c.is_default)).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [(1, "main", True)]


def test_downgrade_to_base_and_back(tmp_path):
    url = f"sqlite:///{tmp_path / 'd.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    upgrade(url)
    command.check(alembic_config(url))
