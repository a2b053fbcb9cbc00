"""The gateway in process, with a publisher that only records: what reaches the broker, what the
client is told when the broker or the database is down, and the answer rule when no consumer runs.
"""

from __future__ import annotations

import io

import orjson
import pytest
from kombu import Connection
from sqlalchemy import func, select
from starlette.testclient import TestClient

from services.gateway.app import create_app
from shared.broker.topology import build_topology
from shared.config import Settings
from shared.db import accounts
from shared.db.engine import make_engine, read_transaction, write_transaction
from shared.db.models import SubmittedCommand
from shared.errors import PublishFailed
from shared.logging import configure_logging

KEY = "unit-test-key"


class FakePublisher:
    def __init__(self, fail: bool = False):
        self.fail = fail
        self.published: list[dict] = []

    def publish(self, **message):
        if self.fail:
            raise PublishFailed("broker down")
        self.published.append(message)


def client_for(engine, publisher, **settings):
    app = create_app(Settings(broker_url="memory://", answer_window=settings.pop("answer_window", 0.05),
                              fetch_allow=("127.0.0.1",), **settings),
                     engine=engine, publisher=publisher, topology=build_topology("gw.", quorum=False),
                     connect=lambda: Connection("memory://"))
    return TestClient(app, base_url="http://testserver/api", headers={"ES-API-KEY": KEY})


@pytest.fixture
def publisher():
    return FakePublisher()


@pytest.fixture
def api(engine, publisher):
    with write_transaction(engine) as conn:
        accounts.create_user(conn, "root", api_key=KEY, is_superadmin=True)
        accounts.create_user(conn, "viewer", api_key="viewer-key", is_superadmin=False)
    with client_for(engine, publisher) as client:
        yield client


def journal_size(engine) -> int:
    with read_transaction(engine) as conn:
        return conn.execute(select(func.count()).select_from(SubmittedCommand.__table__)).scalar_one()


@pytest.mark.parametrize("method, path, kwargs, status", [
    ("POST", "/image/x/", {"content": b"{oops", "headers": {"Content-Type": "application/json"}}, 400),
    ("POST", "/image/x/", {"content": b"a=b", "headers": {"Content-Type": "text/plain"}}, 415),
    ("POST", "/image/x/", {"json": {"order_by": "size"}}, 412),
    ("POST", "/image/x/", {"json": {"manifest_url": "http://example.com/x", "dc": "mars"}}, 404),
    ("POST", "/image/x/", {"json": {"manifest_url": "nope", "dc": "main"}}, 400),
    ("POST", "/image/x/", {"json": {"manifest_url": "http://169.254.169.254/latest", "dc": "main"}}, 400),
    ("POST", "/image/-x/", {"json": {"manifest_url": "http://example.com/x", "dc": "main"}}, 400),
    ("PUT", "/image/ghost/", {"json": {"alias": "x"}}, 404),
    ("DELETE", "/image/ghost/", {}, 404),
    ("GET", "/image/", {"params": {"extended": "perhaps"}}, 400),
])
def test_refused_requests_never_reach_the_broker(api, engine, publisher, method, path, kwargs, status):
    response = api.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert publisher.published == [] and journal_size(engine) == 0


def test_a_user_without_image_rights_is_refused(api, publisher):
    response = api.post("/image/x/", json={"manifest_url": "http://example.com/x", "dc": "main"},
                        headers={"ES-API-KEY": "viewer-key"})
    assert (response.status_code, response.json()) == (403, {"detail": "Permission denied"})
    assert publisher.published == []


def test_an_accepted_command_is_published_once_with_its_task_as_correlation(api, engine, publisher):
    response = api.post("/image/new/", json={"manifest_url": "http://example.com/images/x", "dc": "main",
                                             "access": "1", "unknown": "dropped"})
    assert response.status_code == 201  # no consumer runs here: nothing decided within the window
    task_id = response.json()["task_id"]
    assert response.json() == {"task_id": task_id, "status": "PENDING", "result": None}
    [message] = publisher.published
    envelope = orjson.loads(message["body"])
    assert (message["routing_key"], message["correlation_id"], message["message_id"]) == (
        "image.import", task_id, envelope["id"])
    assert message["exchange"] == "gw.imagesvc.commands"
    assert envelope["payload"] == {"name": "new", "manifest_url": "http://example.com/images/x", "dc": "main",
                                   "access": 1}
    assert envelope["actor"] == {"user": "root", "dc": "main"}
    # Accepted means readable at once: the task is known before any consumer has seen it.
    status = api.get(f"/task/{task_id}/status/")
    assert (status.status_code, status.json()) == (201, {"task_id": task_id, "status": "PENDING", "result": None})
    assert journal_size(engine) == 1


def test_when_the_broker_does_not_confirm_the_client_gets_503_and_nothing_is_recorded(engine):
    with write_transaction(engine) as conn:
        accounts.create_user(conn, "root", api_key=KEY, is_superadmin=True)
    with client_for(engine, FakePublisher(fail=True)) as client:
        response = client.post("/image/new/", json={"manifest_url": "http://example.com/x", "dc": "main"})
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert response.json() == {"detail": "Service temporarily unavailable, try again later."}
    assert journal_size(engine) == 0


def test_when_the_database_is_down_the_client_gets_503_not_500(publisher):
    down = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", pool_size=1)
    with client_for(down, publisher) as client:
        response = client.get("/image/")
    assert response.status_code == 503 and "detail" in response.json()
    assert publisher.published == []


def test_one_log_line_per_request_with_request_and_task_ids(api, publisher):
    stream = io.StringIO()
    configure_logging("gateway", fmt="json", stream=stream)
    try:
        response = api.put("/image/ghost/", json={}, headers={"X-Request-ID": "req-123"})
        assert response.headers["x-request-id"] == "req-123"
        created = api.post("/image/logged/", json={"manifest_url": "http://example.com/x", "dc": "main"})
    finally:
        configure_logging("gateway", fmt="console")
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    handled = [line for line in lines if line["event"] == "request.handled"]
    assert len(handled) == 2
    assert (handled[0]["request_id"], handled[0]["status"], handled[0]["method"]) == ("req-123", 404, "PUT")
    assert handled[1]["task_id"] == created.json()["task_id"] and handled[1]["status"] == 201
    assert handled[1]["message_id"] == publisher.published[-1]["message_id"]
    # When the broker confirmed the command, within the request; a refused request sent none.
    assert handled[0]["accepted_ms"] is None
    assert 0 < handled[1]["accepted_ms"] <= handled[1]["duration_ms"]
    assert all(line["level"] and line["timestamp"] for line in lines)


def test_throttling_is_off_by_default_and_answers_429_with_the_original_message_when_on(engine, publisher):
    with write_transaction(engine) as conn:
        accounts.create_user(conn, "root", api_key=KEY, is_superadmin=True)
        accounts.create_user(conn, "viewer", api_key="viewer-key", is_superadmin=False)
    with client_for(engine, publisher) as client:
        assert all(client.get("/image/").status_code == 200 for _ in range(5))
    with client_for(engine, publisher, throttle="2/minute") as client:
        assert [client.get("/image/").status_code for _ in range(2)] == [200, 200]
        throttled = client.get("/image/")
        assert throttled.status_code == 429
        assert throttled.json() == {"detail": "Request was throttled. Expected available in 60 seconds."}
        assert throttled.headers["retry-after"] == "60"
        assert client.put("/image/any/", json={}).status_code == 429 and publisher.published == []
    # Throttling comes right after authentication, before the endpoint's own permissions.
    with client_for(engine, publisher, throttle="1/minute") as client:
        viewer = {"ES-API-KEY": "viewer-key"}
        assert client.get("/image/", headers=viewer).json() == {"detail": "Permission denied"}
        assert client.get("/image/", headers=viewer).status_code == 429


def test_the_throttle_window_slides():
    from services.gateway.throttle import Throttle

    now = [0.0]
    throttle = Throttle(2, 60, clock=lambda: now[0])
    assert throttle.wait("u") is None
    now[0] = 10
    assert throttle.wait("u") is None
    assert throttle.wait("u") == 50 and throttle.wait("other") is None
    now[0] = 30
    assert throttle.wait("u") == 30  # refused requests do not count
    now[0] = 60.5  # the first request left the window, the second has 9.5 s to go
    assert throttle.wait("u") is None and throttle.wait("u") == pytest.approx(9.5)
