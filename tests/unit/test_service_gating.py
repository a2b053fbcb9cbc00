"""Tests that need RabbitMQ or PostgreSQL skip locally when those are unreachable and fail
under CI=true (the gate every such test goes through)."""

from __future__ import annotations

import pytest
from _pytest.outcomes import Failed, Skipped

from tests.support import services


@pytest.mark.parametrize("ci, outcome", [(False, Skipped), (True, Failed)])
def test_an_unreachable_service_skips_locally_and_fails_in_ci(monkeypatch, ci, outcome):
    monkeypatch.setattr(services, "CI", ci)
    with pytest.raises(outcome, match="RabbitMQ is not reachable"):
        services.unavailable("RabbitMQ", "connection refused")


@pytest.mark.parametrize("check, variable, what", [
    (services.check_rabbitmq, "RABBITMQ_URL", "RabbitMQ"),
    (services.check_postgres, "POSTGRES_ADMIN_URL", "PostgreSQL"),
])
def test_the_checks_report_a_dead_endpoint_through_the_gate(monkeypatch, check, variable, what):
    dead = {"RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:1//",
            "POSTGRES_ADMIN_URL": "postgresql+psycopg://postgres@127.0.0.1:1/postgres"}[variable]
    monkeypatch.setattr(services, variable, dead)
    monkeypatch.setattr(services, "CI", True)
    with pytest.raises(Failed, match=f"{what} is not reachable"):
        check()
