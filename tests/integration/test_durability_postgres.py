"""Commits that do not wait for the WAL flush (PostgreSQL).

A delivery's claim commits with ``relax_durability`` (visible at once, flushed with the next
durable commit). What must hold: a relaxed commit is relaxed only for its own transaction; the
pooled connection goes back to durable commits for the handler's final transaction.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from imagesvc.shared.db import migrate, task_owners
from imagesvc.shared.db.engine import make_engine, write_transaction
from tests.support.services import create_database, drop_database

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def engine(postgres_admin_url: str):
    url = create_database(postgres_admin_url)
    engine = make_engine(url, pool_size=1)  # one connection: every transaction reuses it
    try:
        migrate.upgrade(url)
        yield engine
    finally:
        engine.dispose()
        drop_database(postgres_admin_url, url)


def _synchronous_commit(conn) -> str:
    return conn.execute(text("SHOW synchronous_commit")).scalar_one()


def test_a_relaxed_commit_relaxes_its_own_transaction_only(engine):
    with write_transaction(engine) as conn:
        task_owners.claim(conn, task_id=str(uuid.uuid4()), message_id=str(uuid.uuid4()), actor=None,
                          command="image.update", token=str(uuid.uuid4()), seconds=30)
        assert _synchronous_commit(conn) == "off"
    with write_transaction(engine) as conn:  # the same pooled connection
        assert _synchronous_commit(conn) == "on"
