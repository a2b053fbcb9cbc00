"""Liveness and readiness, in both modes: the gateway (and serve) answer ``/healthz`` and
``/readyz`` without credentials; readiness checks the database (at the migrations' head), the
broker and the image store, and says only which one fails (the reasons go to the log); a worker
serves the same on ``IMAGESVC_HEALTH_PORT``, with the reasons; ``imagesvc health`` asks them."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import httpx
import pytest

from tests.support.polling import eventually
from tests.support.systems import start_embedded

pytestmark = pytest.mark.e2e


def root(system) -> str:
    return system.url.removesuffix("/api")


def health(system, target: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagesvc", "health", target], cwd=system.workdir, env=system.env,
                          capture_output=True, text=True, timeout=60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_ready(system) -> None:
    answer = httpx.get(root(system) + "/readyz", timeout=10)
    assert answer.status_code == 200, answer.text


def test_the_gateway_is_alive_and_ready_without_credentials(system):
    alive = httpx.get(root(system) + "/healthz", timeout=10)
    assert (alive.status_code, alive.json()) == (200, {"status": "alive"})
    ready = httpx.get(root(system) + "/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert ready.json()["status"] == "ready" and set(checks) >= {"database", "broker"}
    assert set(checks.values()) == {"ok"}
    done = health(system, root(system))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "ready"


def test_readiness_fails_while_the_store_is_gone_and_names_only_the_check(tmp_path):
    """One embedded instance with an image store of its own (the shared ones run without)."""
    store = tmp_path / "store"
    (tmp_path / "serve").mkdir()
    system = start_embedded(tmp_path / "serve", {"IMAGESVC_IMAGE_STORE": str(store)})
    try:
        eventually(lambda: assert_ready(system), timeout=10)
        aside = store.with_name("store-aside")
        store.rename(aside)
        store.write_text("not a directory")
        try:
            def failing():
                answer = httpx.get(root(system) + "/readyz", timeout=10)
                assert answer.status_code == 503, answer.text
                return answer.json()

            body = eventually(failing, timeout=10)
            assert body["status"] == "not ready" and body["checks"]["store"] == "failing"
            assert str(store) not in json.dumps(body)  # the reason (a server path) goes to the log only
            assert health(system, root(system) + "/readyz").returncode == 1
            assert httpx.get(root(system) + "/healthz", timeout=10).status_code == 200  # still alive
        finally:
            store.unlink()
            aside.rename(store)
        eventually(lambda: assert_ready(system), timeout=10)
    finally:
        system.stop()


def test_a_worker_serves_its_probes_on_its_health_port(system):
    if system.mode != "distributed":
        pytest.skip("the embedded workers are threads of serve, which answers on its own port")
    port = free_port()
    shared = system.env
    system.env = {**shared, "IMAGESVC_HEALTH_PORT": str(port)}
    try:
        system.start_worker("updater", "updater-probed")
    finally:
        system.env = shared
    try:
        def ready():
            answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
            assert answer.status_code == 200, answer.text
            return answer.json()

        body = eventually(ready, timeout=20)
        assert body == {"status": "ready", "checks": {"database": "ok", "broker": "ok", "consumer": "ok"}}
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json() == {"status": "alive"}
        done = subprocess.run([sys.executable, "-m", "imagesvc", "health", "local"], cwd=system.workdir,
                              env={**system.env, "IMAGESVC_HEALTH_PORT": str(port)}, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
    finally:
        system.kill("updater-probed")
    refused = health(system, f"http://127.0.0.1:{port}")
    assert refused.returncode == 1 and f"127.0.0.1:{port}" in refused.stderr
