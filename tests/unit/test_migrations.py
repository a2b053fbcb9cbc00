"""Alembic migrations build exactly the schema the models describe (SQLite here, PostgreSQL in
tests/integration), and seed the default datacenter."""

from __future__ import annotations

import subprocess
import sys

from alembic import command
from sqlalchemy import create_engine, inspect, select, text

from imagesvc.shared.db import events
from imagesvc.shared.db.migrate import alembic_config, head_revision, upgrade
from imagesvc.shared.db.models import Datacenter


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


def test_0002_moves_the_inbox_and_stream_heads_into_the_event_store_and_back(tmp_path):
    """Upgrading keeps every image's stream head and every handled command handled; downgrading
    rebuilds the old tables from the event store."""
    url = f"sqlite:///{tmp_path / 'data.db'}"
    config = alembic_config(url)
    command.upgrade(config, "0001")
    engine = create_engine(url)
    now = "2026-11-27 10:00:00.000000"
    handled = '{"payload": {"command": "image.update", "task_id": "t1"}}'
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, username, is_superadmin, api_access, is_active, created_at) "
                          "VALUES (7, 'root', 1, 1, 1, :now)"), {"now": now})
        conn.execute(text("INSERT INTO images (uuid, name, alias, version, \"desc\", owner_id, access, size, ostype, "
                          "deploy, resize, status, tags, manifest, manifest_active, created, changed) VALUES "
                          "('u-1', 'one', 'one', '1.0', '', 7, 3, 1, 1, 0, 0, 1, '[]', '{}', '{}', :now, :now)"),
                     {"now": now})
        conn.execute(text("INSERT INTO streams (stream_id, version) VALUES ('image:u-1', 3), ('image:gone', 2)"))
        conn.execute(text("INSERT INTO processed_messages (consumer, message_id, processed_at) "
                          "VALUES ('updater', 'cmd-1', :now)"), {"now": now})
        for n, (type_, stream, version, cause, body) in enumerate([
            ("image.updated", "image:u-1", 3, "cmd-1", "{}"),
            ("task.succeeded", None, None, "cmd-1", handled),
            ("image.deleted", "image:gone", 2, "cmd-0", "{}"),
        ]):
            conn.execute(text("INSERT INTO events (message_id, type, stream_id, stream_version, correlation_id, "
                              "causation_id, body, created_at) VALUES (:m, :t, :s, :v, 't1', :c, :b, :now)"),
                         {"m": f"m-{n}", "t": type_, "s": stream, "v": version, "c": cause, "b": body, "now": now})

    command.upgrade(config, "head")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT stream_version FROM images WHERE uuid = 'u-1'")).scalar_one() == 3
        tables = set(inspect(conn).get_table_names())
        assert not {"streams", "processed_messages"} & tables
        assert events.was_handled(conn, "cmd-1") and not events.was_handled(conn, "cmd-0")
        assert events.stream_head(conn, "image:gone") == 2

    command.downgrade(config, "0001")
    with engine.connect() as conn:
        heads = dict(conn.execute(text("SELECT stream_id, version FROM streams")).all())
        inbox = conn.execute(text("SELECT consumer, message_id FROM processed_messages")).all()
    engine.dispose()
    assert heads == {"image:u-1": 3, "image:gone": 2}
    assert [tuple(r) for r in inbox] == [("updater", "cmd-1")]


def test_the_head_revision_is_alembics_and_is_found_without_loading_alembic():
    from alembic.script import ScriptDirectory

    assert head_revision() == ScriptDirectory.from_config(alembic_config("")).get_current_head()
    # A worker asks for it to report readiness; Alembic (with Mako) would cost it ~8 MiB.
    probe = "import sys; from imagesvc.shared.db.migrate import head_revision; head_revision(); " \
            "print(sorted(m for m in ('alembic', 'mako') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
