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

from imagesvc.services.gateway.app import create_app
from imagesvc.shared.broker.topology import build_topology
from imagesvc.shared.config import Settings
from imagesvc.shared.db import accounts
from imagesvc.shared.db.engine import make_engine, read_transaction, write_transaction
from imagesvc.shared.db.models import SubmittedCommand
from imagesvc.shared.errors import PublishFailed
from imagesvc.shared.logging import configure_logging

KEY = "unit-test-key"


class FakePublisher:
    def __init__(self, fail: bool = False):
        self.fail = fail
        self.published: list[dict] = []

    def publish(self, **message):
        if self.fail:
            raise PublishFailed("broker down")
        self.published.append(message)


def client_for(engine, publisher, *, address: str = "testclient", **settings):
    """A client of a gateway with ``settings``, connecting from ``address``."""
    app = create_app(Settings(broker_url="memory://", answer_window=settings.pop("answer_window", 0.05),
                              fetch_allow=("127.0.0.1",), **settings),
                     engine=engine, publisher=publisher, topology=build_topology("gw.", quorum=False),
                     connect=lambda: Connection("memory://"))
    return TestClient(app, base_url="http://testserver/api", headers={"ES-API-KEY": KEY}, client=(address, 50000))


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
    from imagesvc.services.gateway.throttle import Throttle

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


def test_the_throttle_counts_a_request_under_every_key_or_under_none_and_takes_one_back():
    from imagesvc.services.gateway.throttle import Throttle

    throttle = Throttle(2, 60, clock=lambda: 0.0)
    assert throttle.wait("user", "address") is None
    assert throttle.wait("user", "address") is None
    assert throttle.wait("other user", "address") == 60  # the address is full: counted nowhere
    assert throttle.wait("other user") is None
    throttle.give_back("user", "address")
    assert throttle.wait("user", "address") is None


def _with_password(engine, username: str, password: str) -> None:
    from imagesvc.shared.keys import hash_password

    with write_transaction(engine) as conn:
        accounts.create_user(conn, username, api_key=None, is_superadmin=False, password_hash=hash_password(password))


def _login(client, username: str, password: str):
    return client.post("/accounts/login/", json={"username": username, "password": password}, headers={})


def test_failed_logins_are_throttled_by_default_per_user_name_and_per_client_address(engine, publisher):
    _with_password(engine, "jane", "right")
    with client_for(engine, publisher, address="10.0.0.1") as first:
        second = TestClient(first.app, base_url="http://testserver/api", client=("10.0.0.2", 50000))  # same gateway
        assert [_login(first, "jane", f"wrong{i}").status_code for i in range(10)] == [400] * 10
        throttled = _login(first, "jane", "wrong")
        seconds = int(throttled.headers["retry-after"])  # until the first failure leaves the window
        assert throttled.status_code == 429 and 50 <= seconds <= 60
        assert throttled.json() == {"detail": f"Request was throttled. Expected available in {seconds} seconds."}
        assert _login(second, "jane", "right").status_code == 429  # the user name is throttled everywhere
        assert _login(second, "bob", "wrong").status_code == 400  # the other address is not
        assert _login(first, "bob", "wrong").status_code == 429  # this one is, for every user name


def test_a_successful_login_is_not_counted_and_the_throttle_can_be_switched_off(engine, publisher):
    _with_password(engine, "jane", "right")
    with client_for(engine, publisher, login_throttle="2/minute") as client:
        assert [_login(client, "jane", "right").status_code for _ in range(4)] == [200] * 4
        assert [_login(client, "jane", "wrong").status_code for _ in range(3)] == [400, 400, 429]
    with client_for(engine, publisher, login_throttle="off") as client:
        assert {_login(client, "jane", "wrong").status_code for _ in range(12)} == {400}


def test_the_hashing_pool_runs_its_threads_queues_its_waiting_and_refuses_the_rest_at_once():
    import asyncio
    import threading

    from imagesvc.services.gateway.blocking import BoundedPool, Busy

    release = threading.Event()

    async def scenario():
        pool = BoundedPool(threads=1, waiting=1, name="test-hashing")
        admitted = [asyncio.ensure_future(pool.run(release.wait, 10)) for _ in range(2)]
        await asyncio.sleep(0)  # both are in: one running, one waiting for the thread
        with pytest.raises(Busy):
            await pool.run(release.wait, 10)
        release.set()
        assert await asyncio.gather(*admitted) == [True, True]
        assert await pool.run(lambda: "room again") == "room again"

    asyncio.run(scenario())


def test_a_login_beyond_the_hashing_pool_is_429_at_once_and_does_not_count_as_a_failure(engine, publisher):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from imagesvc.services.gateway import routes

    _with_password(engine, "jane", "right")
    entered, release = threading.Event(), threading.Event()
    check = routes.AccountRoutes._check_credentials

    def held(self, username, password):
        entered.set()
        release.wait(10)
        return check(self, username, password)

    routes.AccountRoutes._check_credentials = held
    try:
        with client_for(engine, publisher, login_throttle="1/minute", password_hash_threads=1,
                        password_hash_queue=0) as client, ThreadPoolExecutor(1) as pool:
            elsewhere = TestClient(client.app, base_url="http://testserver/api", client=("10.0.0.2", 50000))
            admitted = pool.submit(_login, client, "jane", "right")
            assert entered.wait(10)
            refused = _login(elsewhere, "bob", "wrong")
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert refused.json() == {"detail": "Request was throttled. Expected available in 1 seconds."}
            release.set()
            assert admitted.result().status_code == 200
            assert _login(elsewhere, "bob", "wrong").status_code == 400  # the refused one was not counted
    finally:
        routes.AccountRoutes._check_credentials = check


def test_a_pending_answer_says_where_its_task_is_without_the_host_header(api):
    created = api.post("http://evil.example/api/image/located/",
                       json={"manifest_url": "http://example.com/x", "dc": "main"})
    assert created.status_code == 201
    assert created.headers["location"] == f"/api/task/{created.json()['task_id']}/status/"


@pytest.mark.parametrize("path", ["/api//image/", "/api/image//", "/api//image", "/api/openapi.json/", "/api/x//"])
def test_a_path_with_an_empty_segment_is_a_json_404_never_a_redirect_to_the_host_header(api, path):
    response = api.get("http://evil.example" + path, follow_redirects=False)
    assert response.status_code == 404 and response.json() == {"detail": "Not found."}
    assert "location" not in response.headers


def test_over_long_numbers_in_headers_and_fields_are_answered_at_once(api, publisher):
    digits = "9" * 5000
    # Indentation is presentation: clamped to 8 as any large N.
    indented = api.get("/image/", headers={"Accept": f"application/json; indent={digits}"})
    assert indented.status_code == 200 and indented.text.startswith('{\n        "task_id"')
    created = api.post("/image/numbers/", json={"manifest_url": "http://example.com/x", "dc": "main",
                                                "access": digits})
    assert created.status_code == 400
    assert created.json()["result"] == {"access": ["Enter a whole number."]}
    huge_literal = api.post("/image/numbers/", content=b'{"access": ' + digits.encode() + b"}",
                            headers={"Content-Type": "application/json"})
    assert huge_literal.status_code == 400 and huge_literal.json()["detail"].startswith("JSON parse error")
    flag = api.get("/image/", params={"full": digits})
    assert flag.status_code == 400 and flag.json()["result"] == {"full": ["Must be a valid boolean."]}
    task = api.get(f"/task/{digits}d1u1-00000000-0000-0000-0000/status/")
    assert task.status_code == 403
    assert publisher.published == []
