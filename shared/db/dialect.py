"""``INSERT ... ON CONFLICT`` for the two dialects we run on (identical SQL, different constructs).

Statements are built once per dialect and table and executed with parameters: building them
on every call is a measurable share of a consumer's CPU.
"""

from __future__ import annotations

from typing import Callable

from sqlalchemy import Connection, Index, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

_built: dict[tuple[str, str, str], object] = {}


def insert_for(conn: Connection, table: Table):
    """An INSERT construct that supports ``on_conflict_do_nothing/do_update`` on this connection."""
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    return module.insert(table)


def prepared(conn: Connection, table: Table, purpose: str, build: Callable[[object], object]):
    """``build(insert_for(conn, table))``, built once per dialect, table and purpose."""
    key = (conn.dialect.name, table.name, purpose)
    stmt = _built.get(key)
    if stmt is None:
        stmt = _built[key] = build(insert_for(conn, table))
    return stmt


def insert_ignore(conn: Connection, table: Table, values: dict) -> bool:
    """Insert a row unless its key exists. True when this call inserted it.

    Concurrent callers with the same key: exactly one gets True (the others wait for its
    transaction and then see the conflict), which makes the row a guard against doing a thing twice.
    """
    # RETURNING rather than rowcount: drivers disagree on rowcount for ON CONFLICT DO NOTHING.
    key = list(table.primary_key.columns)[0]
    stmt = prepared(conn, table, "insert-ignore", lambda insert: insert.on_conflict_do_nothing().returning(key))
    return conn.execute(stmt, values).first() is not None


def violates(error: IntegrityError, index: Index) -> bool:
    """Whether ``error`` is a violation of the unique ``index`` (and not of another constraint)."""
    diag = getattr(error.orig, "diag", None)
    if diag is not None:  # psycopg: the server names the constraint
        return getattr(diag, "constraint_name", None) == index.name
    # SQLite names the columns: "UNIQUE constraint failed: events.causation_id"
    columns = ", ".join(f"{index.table.name}.{column.name}" for column in index.columns)
    return str(error.orig).endswith(f"constraint failed: {columns}")
