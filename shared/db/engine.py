"""Engines for PostgreSQL (psycopg 3) and SQLite, with the settings each needs under load.

SQLite: WAL, ``busy_timeout`` 5 s, and ``BEGIN IMMEDIATE`` for transactions opened through
``write_transaction`` (so two writers queue up instead of failing on lock upgrade), plain
``BEGIN`` for reads. PostgreSQL: no ping on every checkout (a round trip per transaction);
a connection that died with the server fails its statement, SQLAlchemy then invalidates the
pool, and the failure surfaces as ``Transient`` (the message is retried, the request answered
503), so the next attempt gets fresh connections.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from typing import Any, Iterator

import orjson
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import StaticPool

from imagesvc.shared.errors import InvalidData, Transient

_WRITE = "imagesvc_write"
_AUTOCOMMIT = "imagesvc_autocommit"


def _dump_json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # what orjson refuses (integers beyond 64 bits) the standard encoder may take
        return json.dumps(value)


#: JSON columns (manifests, tags, results) are (de)serialised on every consumer's hot path.
_JSON = {"json_serializer": _dump_json, "json_deserializer": orjson.loads}


def make_engine(url: str, *, pool_size: int = 10, relaxed_durability: bool = False,
                single_statements: bool = False) -> Engine:
    """Create an engine for ``url`` (no connection is opened until first use).

    ``relaxed_durability``: on PostgreSQL, commits do not wait for the WAL flush
    (``synchronous_commit=off``). Only for a process whose writes may be lost in a database
    crash without harm (the gateway: its journal rows); the consumers never use it.

    ``single_statements``: on PostgreSQL, every connection is in autocommit mode from the
    start, for a process whose every database access is one statement (the gateway):
    ``single_statement`` then needs no switching per checkout, and ``read_transaction`` runs
    its statement on its own. SQLite engines ignore it (they may be shared with consumers).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if not database or database == ":memory:":
            # One shared connection, or every checkout would see its own empty database.
            engine = create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool,
                                   **_JSON)
            _configure_sqlite(engine)
            return engine
        os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 5.0},
            pool_size=pool_size,
            max_overflow=pool_size,
            **_JSON,
        )
        _configure_sqlite(engine)
        return engine
    connect_args: dict = {"connect_timeout": 5}
    if relaxed_durability:
        connect_args["options"] = "-c synchronous_commit=off"
    if single_statements:
        # Nothing to roll back when a connection comes back (``write_transaction`` ends its own
        # transaction either way), so no reset round trip per checkout.
        engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800,
                               connect_args=connect_args, isolation_level="AUTOCOMMIT", pool_reset_on_return=None,
                               **_JSON)
        return engine.execution_options(**{_AUTOCOMMIT: True})
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800,
                         connect_args=connect_args, **_JSON)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: sqlite3.Connection, _record) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself instead of pysqlite's deferred one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a write transaction: committed if the block returns, rolled back otherwise.

    Connection-level failures surface as ``Transient`` so callers retry instead of failing.
    """
    with translate_db_errors():
        options: dict = {_WRITE: True}
        if engine.get_execution_options().get(_AUTOCOMMIT):
            options["isolation_level"] = "READ COMMITTED"  # a real transaction on an autocommit engine
        with engine.connect().execution_options(**options) as conn:
            with conn.begin():
                yield conn


@contextlib.contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    with translate_db_errors():
        with engine.connect() as conn:
            with conn.begin():
                yield conn


@contextlib.contextmanager
def single_statement(engine: Engine, *, write: bool = False) -> Iterator[Connection]:
    """A connection for exactly one statement: autocommit on PostgreSQL (no BEGIN/COMMIT round
    trips); on SQLite, where round trips are free, an ordinary transaction (a write one with
    ``write``), which keeps SQLite's locking discipline."""
    if engine.dialect.name == "sqlite":
        with (write_transaction(engine) if write else read_transaction(engine)) as conn:
            yield conn
        return
    with translate_db_errors():
        if engine.get_execution_options().get(_AUTOCOMMIT):
            with engine.connect() as conn:
                yield conn
            return
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            yield conn


@contextlib.contextmanager
def translate_db_errors() -> Iterator[None]:
    """Turn "the database is unreachable or busy" into ``Transient`` and "this value can never be
    stored" into ``InvalidData``; leave other errors alone."""
    try:
        yield
    except DataError as exc:
        # Deterministic: retrying the same value can only fail again.
        raise InvalidData(f"Invalid value: {type(exc.orig).__name__ if exc.orig else 'data error'}") from exc
    except OperationalError as exc:
        raise Transient(f"database unavailable: {exc.orig or exc}") from exc
    except PoolTimeout as exc:
        # Every pooled connection busy for the whole wait: overload, which passes.
        raise Transient(f"database busy: no free connection ({exc})") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise Transient(f"database connection lost: {exc.orig or exc}") from exc
        raise


def relax_durability(conn: Connection) -> None:
    """Let this transaction commit without waiting for its WAL flush (PostgreSQL only).

    Only for writes whose loss in a database *crash* is harmless: they stay atomic and are
    visible at once, they are just not guaranteed to survive a crash of the database server
    (e.g. "this outbox row was published": losing that mark means a harmless republish).
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")

