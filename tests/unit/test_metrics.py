"""Prometheus metrics (shared/metrics.py): bounded labels, what each observation seam counts, the
scrape-time gauges from the database, the exposition (gateway, health port) and the multiprocess
sum over gateway workers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from types import SimpleNamespace
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from kombu import Connection
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route
from starlette.testclient import TestClient

from imagesvc.domain import tasks
from imagesvc.services.gateway.app import create_app
from imagesvc.shared import contracts, health, metrics
from imagesvc.shared.broker.consumer import Delivery, Outcome
from imagesvc.shared.broker.topology import build_topology
from imagesvc.shared.config import ConfigError, Settings
from imagesvc.shared.contracts import Actor, DeleteImage
from imagesvc.shared.db import accounts
from imagesvc.shared.db.engine import write_transaction
from imagesvc.shared.db.models import Lock, StoredEvent
from imagesvc.shared.errors import Refused
from imagesvc.shared.handling import CommandConsumer, EventConsumer

KEY = "metrics-key"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(text: str | bytes) -> dict[tuple[str, tuple], float]:
    """The samples of an exposition, by (name, sorted labels)."""
    if isinstance(text, bytes):
        text = text.decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(autouse=True)
def metrics_on():
    metrics.configure(enabled=True)
    yield
    metrics.configure(enabled=True)


# --- labels ---------------------------------------------------------------------------------------


def test_a_route_label_is_its_template_whatever_the_path_or_slash():
    with_slash = {"route": SimpleNamespace(path="/api/image/{name:imagename}/")}
    without = {"route": SimpleNamespace(path="/api/image/{name:imagename}")}
    assert metrics.route_label(with_slash) == metrics.route_label(without) == "/api/image/{name}"
    assert metrics.route_label({"route": Route("/api/task/{task_id}/status", lambda r: None)}) == \
        "/api/task/{task_id}/status"
    assert metrics.route_label({"path": "/api/nothing/here/12345"}) == "unmatched"


def test_a_request_is_counted_by_route_method_and_status_and_429_as_throttled():
    route = f"/test/{uuid.uuid4().hex}"
    metrics.observe_request(route, "GET", 200, 0.02)
    metrics.observe_request(route, "GET", 429, 0.001)
    metrics.observe_request(route, "BREW", 200, 0.5)
    assert value("imagesvc_http_requests_total", route=route, method="GET", status="200") == 1
    assert value("imagesvc_http_requests_total", route=route, method="GET", status="429") == 1
    assert value("imagesvc_http_requests_total", route=route, method="other", status="200") == 1
    assert value("imagesvc_http_throttled_total", route=route) == 1
    assert value("imagesvc_http_request_duration_seconds_count", route=route, method="GET") == 2
    assert value("imagesvc_http_request_duration_seconds_bucket", route=route, method="GET", le="0.005") == 1
    assert value("imagesvc_http_request_duration_seconds_sum", route=route, method="other") == pytest.approx(0.5)


def test_nothing_is_observed_when_metrics_are_off():
    route = f"/test/{uuid.uuid4().hex}"
    before = value("imagesvc_commands_published_total", command="image.delete")
    metrics.configure(enabled=False)
    metrics.observe_request(route, "GET", 200, 0.02)
    metrics.command_published("image.delete")
    metrics.configure(enabled=True)
    assert value("imagesvc_http_requests_total", route=route, method="GET", status="200") == 0
    assert value("imagesvc_commands_published_total", command="image.delete") == before


def test_command_outcomes_are_classified_by_code_and_unknown_types_bounded():
    def count(command, outcome, code):
        return value("imagesvc_commands_handled_total", command=command, outcome=outcome, code=code)

    before = {key: count(*key) for key in [("image.update", "succeeded", "200"), ("image.update", "refused", "423"),
                                           ("image.update", "failed", "500"), ("other", "refused", "400")]}
    metrics.command_outcome("image.update", 200, 0.1)
    metrics.command_outcome("image.update", 423, 0.1)
    metrics.command_outcome("image.update", 500)
    metrics.command_outcome("made.up.by.a.client", 400)
    assert {key: count(*key) - before[key] for key in before} == {key: 1 for key in before}
    assert metrics.outcome_of(201) == "succeeded" and metrics.outcome_of(404) == "refused"


def test_settings_accept_only_on_or_off():
    assert Settings.from_env({}).metrics == "on"
    assert Settings.from_env({"IMAGESVC_METRICS": "off"}).metrics == "off"
    with pytest.raises(ConfigError, match="IMAGESVC_METRICS"):
        Settings.from_env({"IMAGESVC_METRICS": "maybe"})


# --- the command consumer's outcomes and the projector's lag --------------------------------------


class RecordingRelay:
    def publish(self, rows):
        return True


def _delivery(envelope) -> Delivery:
    return Delivery(body=contracts.encode(envelope), queue="deleter.commands", headers={}, message_id=envelope.id,
                    correlation_id=envelope.correlation_id, message_type=envelope.type, user_id=None,
                    redelivered=False, attempt=1)


def _envelope(name: str):
    return contracts.wrap(DeleteImage(name=name), correlation_id=tasks.new_task_id(user_id=1, owner_id=1, dc_id=1),
                          actor=Actor(user="root", dc="main"))


def test_the_command_consumer_counts_each_outcome_once_with_its_handling_time(engine):
    with write_transaction(engine) as conn:
        accounts.create_user(conn, "root", api_key=None, is_superadmin=True)

    def handler(command, ctx):
        if command.name == "refused":
            raise Refused(404, "Not found")
        with ctx.writing() as tx:
            tx.finish([], result={"ok": True}, owner=None, dc="main", http_code=200)

    consumer = CommandConsumer(name="deleter", engine=engine, relay=RecordingRelay(),
                               routes={"image.delete": handler})

    def count(outcome, code):
        return value("imagesvc_commands_handled_total", command="image.delete", outcome=outcome, code=code)

    succeeded, refused, failed = count("succeeded", "200"), count("refused", "404"), count("failed", "500")
    timed = value("imagesvc_command_handling_seconds_count", command="image.delete", outcome="succeeded")
    done = _envelope("fine")
    assert consumer(_delivery(done)).outcome is Outcome.ACK
    assert consumer(_delivery(done)).outcome is Outcome.ACK  # a duplicate: no second outcome
    assert consumer(_delivery(_envelope("refused"))).outcome is Outcome.ACK
    consumer.on_give_up(_delivery(_envelope("crashing")), "gave up after 5 attempts")
    assert (count("succeeded", "200") - succeeded, count("refused", "404") - refused,
            count("failed", "500") - failed) == (1, 1, 1)
    assert value("imagesvc_command_handling_seconds_count", command="image.delete", outcome="succeeded") == timed + 1


def test_the_projector_observes_the_lag_from_event_creation_to_its_commit(engine):
    event = contracts.wrap(contracts.NodeRemoved(hostname="cn1", changed_at="2026-01-01T00:00:00+00:00"),
                           correlation_id="node:cn1")
    aged = contracts.Envelope(**{**event.__dict__, "time": (datetime.now(timezone.utc) - timedelta(seconds=42))
                                 .isoformat()})
    consumer = EventConsumer(name="projector", engine=engine, apply=lambda conn, envelope, event, scratch: None,
                             notify=lambda note: None)
    labels = {"event": "node.removed"}
    count = value("imagesvc_projector_lag_seconds_count", **labels)
    total = value("imagesvc_projector_lag_seconds_sum", **labels)
    below_30 = value("imagesvc_projector_lag_seconds_bucket", le="30.0", **labels)
    delivery = Delivery(body=contracts.encode(aged), queue="projector.events", headers={}, message_id=aged.id,
                        correlation_id=aged.correlation_id, message_type=aged.type, user_id=None, redelivered=False,
                        attempt=1, routing_key="node.removed")
    assert consumer(delivery).outcome is Outcome.ACK
    assert value("imagesvc_projector_lag_seconds_count", **labels) == count + 1
    assert 42 <= value("imagesvc_projector_lag_seconds_sum", **labels) - total < 60
    assert value("imagesvc_projector_lag_seconds_bucket", le="30.0", **labels) == below_30


# --- scrape-time gauges ----------------------------------------------------------------------------


def _event(conn, *, age: float, published: bool) -> None:
    now = datetime.now(timezone.utc)
    conn.execute(StoredEvent.__table__.insert().values(
        message_id=str(uuid.uuid4()), type="task.started", correlation_id="t", body="{}",
        created_at=now - timedelta(seconds=age), published_at=now if published else None))


def test_outbox_lag_and_leases_are_computed_from_the_database_at_scrape_time(engine):
    system = metrics.SystemMetrics(engine=engine)

    def gauges():
        found = scraped(metrics.exposition(system))
        return (found[("imagesvc_outbox_oldest_unpublished_age_seconds", ())],
                found[("imagesvc_leases", (("state", "active"),))],
                found[("imagesvc_leases", (("state", "expired"),))])

    assert gauges() == (0.0, 0, 0)
    now = datetime.now(timezone.utc)
    with write_transaction(engine) as conn:
        _event(conn, age=300, published=True)  # published: does not count, however old
        _event(conn, age=30, published=False)
        _event(conn, age=5, published=False)
        locks = Lock.__table__
        conn.execute(locks.insert(), [
            {"name": "image:a", "owner": "t1", "acquired_at": now, "expires_at": now + timedelta(minutes=5)},
            {"name": "image:b", "owner": "t2", "acquired_at": now, "expires_at": now + timedelta(minutes=5)},
            {"name": "image:c", "owner": "t3", "acquired_at": now, "expires_at": now - timedelta(seconds=1)},
        ])
    lag, active, expired = gauges()
    assert 30 <= lag < 60 and (active, expired) == (2, 1)


def test_a_failing_source_leaves_its_gauges_out_and_the_rest_answers(engine):
    class Broken:
        def depths(self):
            raise ConnectionError("broker away")

    found = scraped(metrics.exposition(metrics.SystemMetrics(engine=engine, dead_letters=Broken())))
    assert ("imagesvc_outbox_oldest_unpublished_age_seconds", ()) in found
    assert not [key for key in found if key[0] == "imagesvc_dead_letter_queue_depth"]


def test_dead_letter_depths_are_cached_between_scrapes():
    asked = []

    class Channel:
        def queue_declare(self, queue, passive):
            assert passive
            asked.append(queue)
            if queue == "gone.dlq":
                from amqp.exceptions import NotFound
                raise NotFound("no queue")
            return type("Ok", (), {"message_count": 3})()

    class FakeConnection:
        def ensure_connection(self, **_kwargs):
            return self

        def channel(self):
            return Channel()

    depths = metrics.DeadLetterDepths(FakeConnection, lambda: ["importer.commands.dlq", "gone.dlq"],
                                      cache_seconds=60)
    system = metrics.SystemMetrics(dead_letters=depths)
    def depths():
        return {key: found for key, found in scraped(metrics.exposition(system)).items()
                if key[0] == "imagesvc_dead_letter_queue_depth"}

    first, second = depths(), depths()
    assert first[("imagesvc_dead_letter_queue_depth", (("queue", "importer.commands.dlq"),))] == 3
    assert ("imagesvc_dead_letter_queue_depth", (("queue", "gone.dlq"),)) not in first
    assert first == second and asked == ["importer.commands.dlq", "gone.dlq"]  # the second scrape asked nobody


# --- exposition --------------------------------------------------------------------------------------


@pytest.fixture
def gateway(engine):
    def make(**settings):
        app = create_app(Settings(broker_url="memory://", answer_window=0.05, **settings), engine=engine,
                         publisher=None, topology=build_topology("gw.", quorum=False),
                         connect=lambda: Connection("memory://"), system_metrics=metrics.SystemMetrics(engine=engine))
        return TestClient(app, base_url="http://testserver")
    with write_transaction(engine) as conn:
        accounts.create_user(conn, "root", api_key=KEY, is_superadmin=True)
    return make


def test_the_gateway_serves_metrics_without_credentials_counting_by_route_template(gateway):
    with gateway() as client:
        before = scraped(client.get("/metrics").text)
        key = ("imagesvc_http_requests_total", (("method", "GET"), ("route", "/api/image/{name}"), ("status", "404")))
        for name in ("one", "two", "three/"):
            assert client.get(f"/api/image/{name}", headers={"ES-API-KEY": KEY}).status_code == 404
        answer = client.get("/metrics")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
        after = scraped(answer.text)
        assert after[key] - before.get(key, 0) == 3
        assert not [k for k in after if k[0] == "imagesvc_http_requests_total" and "one" in str(k)]  # no raw paths
        assert ("imagesvc_outbox_oldest_unpublished_age_seconds", ()) in after
        # An open path: a wrong method is refused 405 without asking who calls.
        assert client.post("/metrics").status_code == 405


def test_the_gateway_does_not_serve_metrics_when_they_are_off(gateway):
    with gateway(metrics="off") as client:
        assert client.get("/metrics").status_code == 404


def test_a_worker_serves_its_metrics_on_its_health_port():
    server = health.serve_in_thread(health.Readiness({}), "127.0.0.1", 0,
                                    metrics=lambda: (metrics.exposition(), metrics.CONTENT_TYPE))
    try:
        metrics.bytes_imported(1234)
        port = server.server_address[1]
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert answer.status_code == 200
        assert scraped(answer.text)[("imagesvc_imported_bytes_total", ())] == value("imagesvc_imported_bytes_total")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        server.shutdown()
    bare = health.serve_in_thread(health.Readiness({}), "127.0.0.1", 0)
    try:
        assert httpx.get(f"http://127.0.0.1:{bare.server_address[1]}/metrics", timeout=10).status_code == 404
    finally:
        bare.shutdown()


def test_in_multiprocess_mode_any_process_answers_the_sum_of_all(tmp_path):
    """Two processes write into one directory (as gateway workers do); a third's exposition sums
    their counters and histograms, and its scrape-time gauges are its own only."""
    directory = tmp_path / "prom"
    directory.mkdir()
    env = {**os.environ, metrics.MULTIPROC_ENV: str(directory)}
    count = textwrap.dedent("""
        import sys
        from imagesvc.shared import metrics
        for _ in range(int(sys.argv[1])):
            metrics.observe_request("/api/image/{name}", "GET", 200, 0.01)
        metrics.command_published("image.import")
    """)
    for times in (3, 4):
        subprocess.run([sys.executable, "-c", count, str(times)], env=env, check=True, timeout=60)
    answer = textwrap.dedent("""
        import sys
        from imagesvc.shared import metrics
        class Fixed:
            def depths(self):
                return {"importer.commands.dlq": 2}
        sys.stdout.write(metrics.exposition(metrics.SystemMetrics(dead_letters=Fixed())).decode())
    """)
    done = subprocess.run([sys.executable, "-c", answer], env=env, check=True, timeout=60, capture_output=True,
                          text=True)
    found = scraped(done.stdout)
    assert found[("imagesvc_http_requests_total",
                  (("method", "GET"), ("route", "/api/image/{name}"), ("status", "200")))] == 7
    assert found[("imagesvc_http_request_duration_seconds_count",
                  (("method", "GET"), ("route", "/api/image/{name}")))] == 7
    assert found[("imagesvc_commands_published_total", (("command", "image.import"),))] == 2
    assert found[("imagesvc_dead_letter_queue_depth", (("queue", "importer.commands.dlq"),))] == 2


def test_the_multiprocess_directory_is_fresh_named_and_removed():
    previous = os.environ.get(metrics.MULTIPROC_ENV)
    with metrics.multiprocess_directory() as directory:
        assert os.environ[metrics.MULTIPROC_ENV] == directory and os.listdir(directory) == []
    assert not os.path.exists(directory)
    assert os.environ.get(metrics.MULTIPROC_ENV) == previous


def test_the_docs_and_the_dashboard_name_only_metrics_that_exist(engine):
    """docs/metrics.md lists every metric, and it and the Grafana dashboard name no other."""
    import re
    from pathlib import Path

    class Depths:
        def depths(self):
            return {"x.dlq": 0}

    families = [f for f in REGISTRY.collect() if f.name.startswith("imagesvc_")]
    families += list(metrics.SystemMetrics(engine=engine, dead_letters=Depths()).collect())
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {f.name + suffix for f in families for suffix in suffixes[f.type]}
    exported |= {f.name for f in families if f.type == "histogram"}
    documented = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    root = Path(__file__).resolve().parents[2]
    listed = set(re.findall(r"^\| `(imagesvc_\w+)`", (root / "docs" / "metrics.md").read_text(), re.M))
    assert listed == documented
    for text in ((root / "docs" / "metrics.md").read_text(),
                 (root / "docs" / "grafana" / "imagesvc-dashboard.json").read_text()):
        named = set(re.findall(r"\b(imagesvc_[a-z_]+)\b", text))
        assert named <= exported, named - exported


def test_dead_letter_depths_are_not_reported_stale_after_the_broker_failed():
    calls = []

    class Channel:
        def queue_declare(self, queue, passive):
            calls.append(queue)
            if len(calls) > 1:
                raise ConnectionResetError("broker gone")
            return type("Ok", (), {"message_count": 7})()

    class FakeConnection:
        def ensure_connection(self, **_kwargs):
            return self

        def channel(self):
            return Channel()

        def collect(self):
            pass

    depths = metrics.DeadLetterDepths(FakeConnection, lambda: ["a.dlq"], cache_seconds=0)
    assert depths.depths() == {"a.dlq": 7}
    with pytest.raises(ConnectionResetError):
        depths.depths()
    depths._cache_seconds = 60  # within the cache time after the failure: nothing, not the old 7
    assert depths.depths() == {}
