"""``imagesvc db upgrade`` on a PostgreSQL server that has no database of the configured name
creates it first (with the same credentials, through the server's ``postgres`` database), then
migrates it; a second run changes nothing."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url

from imagesvc.cli import main
from tests.support.services import drop_database

pytestmark = pytest.mark.postgres


def test_db_upgrade_creates_a_missing_postgres_database(postgres_admin_url, monkeypatch, capsys):
    url = make_url(postgres_admin_url).set(database="imagesvc_new_" + uuid.uuid4().hex[:10])
    rendered = url.render_as_string(hide_password=False)
    monkeypatch.setenv("IMAGESVC_DATABASE_URL", rendered)
    try:
        assert main(["db", "upgrade"]) == 0
        said = capsys.readouterr().out
        assert "created the database" in said and "database at head" in said, said
        engine = create_engine(rendered)
        try:
            assert {"images", "events", "task_owners", "vms"} <= set(inspect(engine).get_table_names())
        finally:
            engine.dispose()
        assert main(["db", "upgrade"]) == 0
        assert "created the database" not in capsys.readouterr().out
    finally:
        drop_database(postgres_admin_url, rendered)


def test_db_upgrade_says_what_to_do_when_it_may_not_create_the_database(postgres_admin_url, monkeypatch, capsys):
    """A user without CREATEDB gets one sentence naming the fix, exit code 1, not a traceback."""
    from sqlalchemy import text

    role = "imagesvc_nocreate_" + uuid.uuid4().hex[:8]
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN NOCREATEDB'))
    try:
        url = make_url(postgres_admin_url).set(username=role, password=None,
                                               database="imagesvc_new_" + uuid.uuid4().hex[:10])
        monkeypatch.setenv("IMAGESVC_DATABASE_URL", url.render_as_string(hide_password=False))
        assert main(["db", "upgrade"]) == 1
        said = capsys.readouterr().err
        assert "could not make sure the database exists" in said and "CREATEDB" in said, said
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()
