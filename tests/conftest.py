"""Fixtures for every test level.

Rules: unit tests need nothing outside the process; tests that need RabbitMQ or PostgreSQL take
the ``rabbitmq_url`` / ``postgres_admin_url`` fixtures, which skip locally when the service is
unreachable and fail under CI=true. Nothing sleeps and hopes: waits poll to a deadline
(``tests.support.polling.eventually``). Names are random, so tests never collide. Tests marked
``nightly`` run only with ``IMAGESVC_TIER=nightly`` (``./scripts/nightly``; sizes:
``tests.support.tier.scaled``).
"""

from __future__ import annotations

import uuid

import pytest

from tests.support.ceph import s3_endpoint  # noqa: F401  (the test S3 server, session-wide)
from tests.support.origin import Origin
from tests.support.services import check_postgres, check_rabbitmq
from tests.support.tier import is_nightly, tier


def pytest_report_header(config) -> str:
    return f"imagesvc test tier: {tier()}"


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``nightly`` run in the nightly tier only (``./scripts/nightly``)."""
    if is_nightly():
        return
    skip = pytest.mark.skip(reason="nightly tier only (IMAGESVC_TIER=nightly, ./scripts/nightly)")
    for item in items:
        if item.get_closest_marker("nightly"):
            item.add_marker(skip)


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
