"""Fixtures for every test level.

Rules: unit tests need nothing outside the process; tests that need RabbitMQ or PostgreSQL take
the ``rabbitmq_url`` / ``postgres_admin_url`` fixtures, which skip locally when the service is
unreachable and fail under CI=true. Nothing sleeps and hopes: waits poll to a deadline
(``tests.support.polling.eventually``). Names are random, so tests never collide.
"""

from __future__ import annotations

import uuid

import pytest

from tests.support.origin import Origin
from tests.support.services import check_postgres, check_rabbitmq


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    return check_rabbitmq()


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    return check_postgres()


@pytest.fixture(scope="session")
def origin():
    server = Origin()
    yield server
    server.close()


@pytest.fixture
def name() -> str:
    """A fresh, valid image name."""
    return "img-" + uuid.uuid4().hex[:12]
