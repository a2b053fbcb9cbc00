"""``INSERT ... ON CONFLICT`` for the two dialects we run on (identical SQL, different constructs)."""

from __future__ import annotations

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


def insert_for(conn: Connection, table: Table):
    """An INSERT construct that supports ``on_conflict_do_nothing/do_update`` on this connection."""
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    return module.insert(table)


def insert_ignore(conn: Connection, table: Table, values: dict) -> bool:
    """Insert a row unless its key exists. True when this call inserted it.

    Concurrent callers with the same key: exactly one gets True (the others wait for its
    transaction and then see the conflict), which is what makes inbox rows a dedupe guard.
    """
    # RETURNING rather than rowcount: drivers disagree on rowcount for ON CONFLICT DO NOTHING.
    key = list(table.primary_key.columns)[0]
    stmt = insert_for(conn, table).values(**values).on_conflict_do_nothing().returning(key)
    return conn.execute(stmt).first() is not None
