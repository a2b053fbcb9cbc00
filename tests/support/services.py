"""Gating tests on RabbitMQ and PostgreSQL: skip locally when unreachable, fail under CI=true."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid

import pytest

CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
RABBITMQ_URL = os.environ.get("IMAGESVC_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRES_ADMIN_URL = os.environ.get("IMAGESVC_TEST_DATABASE_URL",
                                    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def unavailable(what: str, why: str) -> None:
    message = f"{what} is not reachable ({why})"
    if CI:
        pytest.fail(message + " and CI=true requires it", pytrace=False)
    pytest.skip(message)


def check_rabbitmq() -> str:
    from kombu import Connection

    try:
        with Connection(RABBITMQ_URL, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0.5, timeout=3)
    except Exception as exc:  # noqa: BLE001
        unavailable("RabbitMQ", repr(exc))
    return RABBITMQ_URL


def check_postgres() -> str:
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001
        unavailable("PostgreSQL", repr(exc))
    return POSTGRES_ADMIN_URL


def create_database(admin_url: str) -> str:
    """A new empty database next to ``admin_url``'s; returns its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = "imagesvc_test_" + uuid.uuid4().hex[:10]
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@contextlib.contextmanager
def migrated_engine(admin_url: str, *, pool_size: int, **options):
    """An engine on a new database next to ``admin_url``'s, migrated to head; the database is
    dropped afterwards. ``options``: more of ``make_engine``'s."""
    from imagesvc.shared.db import migrate
    from imagesvc.shared.db.engine import make_engine

    url = create_database(admin_url)
    try:
        migrate.upgrade(url)
        engine = make_engine(url, pool_size=pool_size, **options)
        try:
            yield engine
        finally:
            engine.dispose()
    finally:
        drop_database(admin_url, url)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def delete_queues(broker_url: str, prefix: str, nodes: tuple[str, ...] = ()) -> None:
    """Remove a test run's queues and exchanges (by its topology prefix), with the queues of the
    node agents of ``nodes``."""
    from kombu import Connection

    from imagesvc.shared.broker.topology import build_topology

    topology = build_topology(prefix)
    for hostname in nodes:
        topology = topology.for_node(hostname)
    with Connection(broker_url, connect_timeout=3) as conn:
        channel = conn.channel()
        for queue in topology.all_queues():
            try:
                channel.queue_delete(queue.name)
            except Exception:  # noqa: BLE001
                channel = conn.channel()
        for exchange in (topology.commands, topology.events, topology.dlx, topology.notifications, topology.inventory):
            try:
                channel.exchange_delete(exchange.name)
            except Exception:  # noqa: BLE001
                channel = conn.channel()
