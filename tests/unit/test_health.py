"""``shared.health``: checks, their cache, their answers over HTTP, and the database check
against the migrations' head."""

from __future__ import annotations

import threading

import httpx
import pytest
from sqlalchemy import create_engine

from imagesvc.shared import health
from imagesvc.shared.db.migrate import head_revision, upgrade


def test_readiness_names_each_failing_check_and_caches_a_round():
    calls = []

    def flaky():
        calls.append(1)
        raise OSError("connection refused")

    readiness = health.Readiness({"good": lambda: None, "bad": flaky, "said": lambda: "no space"}, cache_seconds=60)
    ready, body = readiness.report()
    assert not ready
    assert body == {"status": "not ready",
                    "checks": {"good": "ok", "bad": "OSError: connection refused", "said": "no space"}}
    assert readiness.report() == (ready, body) and len(calls) == 1  # cached
    terse = health.Readiness({"good": lambda: None, "bad": flaky}, details=False)
    assert terse.report() == (False, {"status": "not ready", "checks": {"good": "ok", "bad": "failing"}})


def test_the_database_check_wants_the_migrations_head(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    upgrade(url, "0010")
    engine = create_engine(url)
    try:
        problem = health.database_check(engine, head_revision())()
        assert problem == f"the schema is at revision 0010, the code needs {head_revision()}: run `imagesvc db upgrade`"
        upgrade(url)
        assert health.database_check(engine, head_revision())() is None
    finally:
        engine.dispose()


@pytest.fixture
def probes():
    consuming = threading.Event()
    server = health.serve_in_thread(
        health.Readiness({"consumer": health.flag_check(consuming, "not consuming")}, cache_seconds=0),
        "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.server_address[1]}", consuming
    server.shutdown()


def test_probes_over_http(probes):
    base, consuming = probes
    assert httpx.get(base + "/healthz").json() == {"status": "alive"}
    answer = httpx.get(base + "/readyz")
    assert (answer.status_code, answer.json()) == (503, {"status": "not ready", "checks": {"consumer": "not consuming"}})
    consuming.set()
    assert httpx.get(base + "/readyz/").status_code == 200
    assert httpx.get(base + "/other").status_code == 404


def test_imagesvc_health_exit_codes(probes, capsys):
    from imagesvc.cli import main

    base, consuming = probes
    assert main(["health", base]) == 1  # not ready
    consuming.set()
    assert main(["health", base.removeprefix("http://")]) == 0
    assert '"status":"ready"' in capsys.readouterr().out
    assert main(["health", base + "/healthz"]) == 0
