"""Alembic environment: migrations for PostgreSQL and SQLite from ``shared.db.models.metadata``.

The URL comes from ``config.attributes["url"]`` (set by ``shared.db.migrate``), else
``sqlalchemy.url``, else ``IMAGESVC_DATABASE_URL``. A connection may be injected through
``config.attributes["connection"]`` (tests do).
"""

from __future__ import annotations

import os

from alembic import context

from imagesvc.shared.config import Settings
from imagesvc.shared.db.engine import make_engine
from imagesvc.shared.db.models import metadata

config = context.config


def _url() -> str:
    return (
        config.attributes.get("url")
        or config.get_main_option("sqlalchemy.url")
        or Settings.from_env(os.environ).database_url
    )


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    injected = config.attributes.get("connection")
    if injected is not None:
        _run(injected)
        return
    engine = make_engine(_url(), pool_size=1)
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
