"""The image namespace lock on PostgreSQL: writers that check and then claim names and aliases
take turns, so a check never sees a state that changes before its claim commits (without it,
READ COMMITTED lets another import commit between one import's name check and its alias check,
which answered 400 "alias exists" where the reference answers 406 "Image already exists")."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from imagesvc.shared.db.catalogue import SqlCatalogue
from imagesvc.shared.db.engine import write_transaction
from imagesvc.shared.errors import Transient
from tests.support.services import migrated_engine

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def engine(postgres_admin_url: str):
    with migrated_engine(postgres_admin_url, pool_size=4) as engine:
        yield engine


def try_lock(engine, timeout_ms: int) -> str:
    """Take the namespace lock in a transaction of its own, waiting at most ``timeout_ms``."""
    try:
        with write_transaction(engine) as conn:
            conn.execute(text(f"SET LOCAL lock_timeout = '{timeout_ms}ms'"))
            SqlCatalogue(conn).lock_namespace()
        return "taken"
    except Transient as exc:  # how the engine reports an operational error
        assert "lock timeout" in str(exc)
        return "timed out"


def in_thread(function, *args):
    result: list = []
    thread = threading.Thread(target=lambda: result.append(function(*args)))
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    return result[0]


def test_a_second_writer_waits_until_the_first_commits(engine):
    with write_transaction(engine) as conn:
        SqlCatalogue(conn).lock_namespace()
        assert in_thread(try_lock, engine, 200) == "timed out"
    # Released at commit: the next writer gets it at once.
    assert in_thread(try_lock, engine, 5000) == "taken"


def test_the_lock_is_released_by_a_rollback(engine):
    with pytest.raises(RuntimeError):
        with write_transaction(engine) as conn:
            SqlCatalogue(conn).lock_namespace()
            raise RuntimeError("the handler refused")
    assert in_thread(try_lock, engine, 5000) == "taken"


def test_the_same_transaction_may_take_it_twice(engine):
    with write_transaction(engine) as conn:
        catalogue = SqlCatalogue(conn)
        catalogue.lock_namespace()
        catalogue.lock_namespace()
        assert in_thread(try_lock, engine, 200) == "timed out"
