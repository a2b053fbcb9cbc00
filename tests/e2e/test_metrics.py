"""Prometheus metrics, in both modes: the gateway (and serve) answer ``GET /metrics`` without
credentials; requests, commands, an import's bytes and the projector's lag move the counters by
exactly what was done; the scrape-time gauges (outbox lag, leases, dead-letter depths on RabbitMQ)
are there; a worker serves its own on its health port; a gateway with ``--workers 2`` answers the
sum over its workers whichever of them is asked."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import launch
from tests.support.origin import Origin
from tests.support.polling import eventually
from tests.support.systems import start_gateway

pytestmark = pytest.mark.e2e

SHOW = "/api/image/{name}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return samples(answer.text)


def total(found: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for (n, have), v in found.items() if n == name and set(labels.items()) <= set(have))


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def system(request, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    started = launch(request.param, request, tmp_path_factory, IMAGESVC_IMAGE_STORE=str(store))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def origin():
    served = Origin()
    yield served
    served.close()


def root(system) -> str:
    return system.url.removesuffix("/api")


@pytest.fixture(scope="module")
def consumers(system) -> dict[str, str]:
    """Where each consumer's metrics are scraped: serve's own port in the embedded mode; in the
    distributed mode the importer and the projector are replaced by copies with a health port."""
    if system.mode == "embedded":
        return {"importer": root(system) + "/metrics", "projector": root(system) + "/metrics"}
    urls = {}
    shared = system.env
    try:
        for service in ("importer", "projector"):
            port = free_port()
            system.env = {**shared, "IMAGESVC_HEALTH_PORT": str(port)}
            system.start_worker(service, f"{service}-metered")
            system.kill(service)  # its queue is now the metered copy's alone
            urls[service] = f"http://127.0.0.1:{port}/metrics"
    finally:
        system.env = shared
    return urls


def test_requests_commands_and_an_import_move_the_counters_by_what_was_done(system, origin, consumers, name):
    gateway = root(system) + "/metrics"
    content = os.urandom(300 * 1024 + 5)
    url, _manifest = origin.add_image(content)
    before = scrape(gateway)
    before_importer = scrape(consumers["importer"])
    before_projector = scrape(consumers["projector"])
    with system.client() as client:
        for missing in ("nothing-a", "nothing-b", "nothing-c"):
            assert client.get(f"/image/{missing}/").status_code == 404
        accepted = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"})
        assert accepted.status_code in (200, 201), accepted.text
        task_id = accepted.json()["task_id"]

        def finished():
            answer = client.get(f"/task/{task_id}/status/")
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "SUCCESS", answer.text

        eventually(finished, timeout=60, interval=0.2)

    after = scrape(gateway)

    def moved(name_, found, earlier, **labels):
        return total(found, name_, **labels) - total(earlier, name_, **labels)

    assert moved("imagesvc_http_requests_total", after, before, route=SHOW, method="GET", status="404") == 3
    assert moved("imagesvc_http_requests_total", after, before, route=SHOW, method="POST") == 1
    assert moved("imagesvc_http_request_duration_seconds_count", after, before, route=SHOW, method="GET") == 3
    assert moved("imagesvc_commands_published_total", after, before, command="image.import") == 1
    assert not [key for key in after if "nothing-a" in str(key)]  # route templates, never raw paths
    assert total(after, "imagesvc_outbox_oldest_unpublished_age_seconds") >= 0
    assert ("imagesvc_outbox_oldest_unpublished_age_seconds", ()) in after
    assert ("imagesvc_leases", (("state", "active"),)) in after
    dead_letters = {dict(labels)["queue"] for (n, labels) in after if n == "imagesvc_dead_letter_queue_depth"}
    if system.mode == "distributed":
        assert f"{system.prefix}importer.commands.dlq" in dead_letters
        assert total(after, "imagesvc_dead_letter_queue_depth", queue=f"{system.prefix}importer.commands.dlq") == 0
    else:
        assert dead_letters == set()  # memory://: the queues live inside serve, nothing to ask

    def consumers_counted():
        importer = scrape(consumers["importer"])
        projector = scrape(consumers["projector"])
        assert moved("imagesvc_commands_handled_total", importer, before_importer, command="image.import",
                     outcome="succeeded") == 1
        assert moved("imagesvc_command_handling_seconds_count", importer, before_importer, command="image.import",
                     outcome="succeeded") == 1
        assert moved("imagesvc_imported_bytes_total", importer, before_importer) == len(content)
        assert moved("imagesvc_projector_lag_seconds_count", projector, before_projector, event="task.succeeded") == 1

    eventually(consumers_counted, timeout=20, interval=0.2)


def test_throttled_logins_are_counted(system):
    gateway = root(system) + "/metrics"
    before = total(scrape(gateway), "imagesvc_http_throttled_total", route="/api/accounts/login")
    user = f"nobody-{uuid.uuid4().hex[:8]}"
    statuses = [httpx.post(f"{system.url}/accounts/login/", json={"username": user, "password": "wrong"},
                           timeout=30).status_code for _ in range(13)]
    assert 429 in statuses, statuses
    after = total(scrape(gateway), "imagesvc_http_throttled_total", route="/api/accounts/login")
    assert after - before == statuses.count(429)


def test_a_worker_serves_its_metrics_on_its_health_port(system, consumers):
    if system.mode != "distributed":
        pytest.skip("the embedded workers are threads of serve, which answers on its own port")
    answer = httpx.get(consumers["importer"], timeout=10)
    assert answer.status_code == 200
    families = {family.name for family in text_string_to_metric_families(answer.text)}
    assert {"imagesvc_commands_handled", "imagesvc_command_handling_seconds", "imagesvc_imported_bytes"} <= families
    # A worker's metrics are its own: the scrape-time gauges are the gateway's.
    assert "imagesvc_outbox_oldest_unpublished_age_seconds" not in families


def _per_worker(directory: Path, route: str) -> dict[str, float]:
    """The requests to ``route`` each gateway worker process counted, read from its own files."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        alone = directory.parent / f"alone-{path.stem}"
        shutil.rmtree(alone, ignore_errors=True)
        alone.mkdir()
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        counts[path.stem] = total(samples(generate_latest(registry).decode()), "imagesvc_http_requests_total",
                                  route=route)
        shutil.rmtree(alone)
    return counts


def test_a_gateway_with_two_workers_reports_the_sum_over_both(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    system = start_gateway(tmp_path, workers=2, extra_env={"TMPDIR": str(scratch)})
    route = "/api/openapi.json"
    try:
        directories = list(scratch.glob("imagesvc-metrics-*"))
        assert len(directories) == 1, directories
        directory = directories[0]

        def both_workers_answered():
            for _ in range(10):  # a new connection each: the kernel hands them to either worker
                assert httpx.get(system.url + "/openapi.json", timeout=10).status_code == 200
            counts = _per_worker(directory, route)
            assert len([c for c in counts.values() if c > 0]) >= 2, counts
            return counts

        counts = eventually(both_workers_answered, timeout=60, interval=0)
        expected = sum(counts.values())
        for _ in range(8):  # whichever worker answers the scrape: the sum over both
            assert total(scrape(root(system) + "/metrics"), "imagesvc_http_requests_total", route=route) == expected
    finally:
        system.stop()
    assert not directory.exists()  # removed when the gateway stopped
