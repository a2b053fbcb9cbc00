"""End-to-end fixtures: the system started by its own commands, in both modes.

``system`` runs each test of a module against the embedded mode (``imagesvc serve``) and the
distributed mode (every service its own process on RabbitMQ + PostgreSQL). Systems are shared
by the tests of a module, so tests use fresh image names (the ``name`` fixture).
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, func, select

from shared.db.models import SubmittedCommand
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


def submitted_commands(system: System) -> int:
    """How many commands the gateway has published (its journal row precedes every publish)."""
    engine = create_engine(database_url(system))
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(SubmittedCommand.__table__)).scalar_one()
    finally:
        engine.dispose()
