"""Run the Alembic migrations programmatically (``imagesvc db upgrade``, ``serve``, tests)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config

def _script_location() -> Path:
    """The migrations: ``imagesvc/migrations`` in an installed distribution (the repository's
    ``alembic/`` mapped there), ``alembic/`` beside the sources in a checkout."""
    root = Path(__file__).resolve().parents[2]
    installed = root / "migrations"
    return installed if (installed / "env.py").is_file() else root / "alembic"


SCRIPT_LOCATION = _script_location()


def alembic_config(url: str) -> "Config":
    # Alembic (and Mako, which it loads) only when a migration or a revision is asked for: every
    # process imports this module, and most never migrate.
    from alembic.config import Config

    # Alembic's default stdout is whatever sys.stdout was when alembic.config was first imported.
    config = Config(stdout=sys.stdout)
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s")
    config.attributes["url"] = url
    return config


_REVISION = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*(?:['\"]([^'\"]+)['\"]|None)", re.MULTILINE)


def head_revision() -> str:
    """The revision the code's migrations end at (what ``upgrade`` brings a database to).

    Read from the migration scripts' ``revision``/``down_revision`` lines rather than through
    Alembic, which (with Mako) would add ~8 MiB to every process that reports its readiness;
    tests/unit/test_migrations.py checks that it agrees with Alembic's own answer."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (SCRIPT_LOCATION / "versions").glob("*.py"):
        for kind, value in _REVISION.findall(script.read_text(encoding="utf-8")):
            if value:
                (revisions if kind == "revision" else parents).add(value)
    heads = revisions - parents
    assert len(heads) == 1, f"the migrations have one head, not {sorted(heads)}"
    return heads.pop()


def schema_problem(engine, head: str) -> str | None:
    """None when the database behind ``engine`` answers and its schema is at revision ``head``;
    else a sentence with the revision it is at. Raises the driver's error when it cannot be reached."""
    from sqlalchemy import text

    with engine.connect() as conn:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    if revision != head:
        return f"the schema is at revision {revision}, the code needs {head}: run `imagesvc db upgrade`"
    return None


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (idempotent)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def create_database_if_missing(url: str) -> bool:
    """On PostgreSQL, create the database ``url`` names when the server has none of that name,
    connecting to its ``postgres`` maintenance database with the same credentials; True if it
    created one. (SQLite creates its file on first use.) Raises the driver's error, with its
    message, when the server cannot be reached or the user may not create databases."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool
    from sqlalchemy.engine import make_url

    target = make_url(url)
    if target.get_backend_name() != "postgresql" or not target.database:
        return False
    maintenance = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with maintenance.connect() as conn:
            if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"),
                            {"name": target.database}).first() is not None:
                return False
            quoted = conn.dialect.identifier_preparer.quote_identifier(target.database)
            conn.execute(text(f"CREATE DATABASE {quoted}"))
            return True
    finally:
        maintenance.dispose()
