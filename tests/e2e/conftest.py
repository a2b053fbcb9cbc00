"""End-to-end fixtures: the system started by its own commands, in both modes.

``system`` runs each test of a module against the embedded mode (``imagesvc serve``) and the
distributed mode (every service its own process on RabbitMQ + PostgreSQL). Systems are shared
by the tests of a module, so tests use fresh image names (the ``name`` fixture).
"""

from __future__ import annotations

import pytest
from datetime import datetime, timedelta, timezone

from sqlalchemy import create_engine, func, select, update

from imagesvc.shared.db.models import AuthToken, StoredEvent, SubmittedCommand
from imagesvc.shared.keys import key_digest
from tests.support.systems import System, start_distributed, start_embedded


def launch(mode: str, request, tmp_path_factory, **extra_env: str) -> System:
    workdir = tmp_path_factory.mktemp(mode)
    if mode == "embedded":
        return start_embedded(workdir, extra_env)
    return start_distributed(workdir, broker_url=request.getfixturevalue("rabbitmq_url"),
                             postgres_admin_url=request.getfixturevalue("postgres_admin_url"), extra_env=extra_env)


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def system(request, tmp_path_factory):
    started = launch(request.param, request, tmp_path_factory)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def distributed(request, tmp_path_factory):
    started = launch("distributed", request, tmp_path_factory)
    yield started
    started.stop()


def database_url(system: System) -> str:
    if system.database_url:
        return system.database_url
    return "sqlite:///" + str(system.workdir / "var" / "imagesvc.db")


def expire_token(system: System, token: str) -> None:
    """Make a login token one that expired a second ago (the clock cannot be moved in a process)."""
    engine = create_engine(database_url(system))
    tokens = AuthToken.__table__
    try:
        with engine.begin() as conn:
            conn.execute(update(tokens).where(tokens.c.digest == key_digest(token)).values(
                expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
    finally:
        engine.dispose()


def submitted_commands(system: System) -> int:
    """A count that grows with every command the gateway ever published: every command ends in a
    terminal task event (stored before the answer it decides), and a command answered 201 before
    any consumer reported on it is journaled."""
    engine = create_engine(database_url(system))
    events = StoredEvent.__table__
    try:
        with engine.connect() as conn:
            journaled = conn.execute(select(func.count()).select_from(SubmittedCommand.__table__)).scalar_one()
            ended = conn.execute(select(func.count()).select_from(events).where(
                events.c.type.in_(["task.succeeded", "task.failed"]))).scalar_one()
        return journaled + ended
    finally:
        engine.dispose()
