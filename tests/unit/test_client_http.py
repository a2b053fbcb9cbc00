"""The SDK's HTTP half (``imagesvc.client``) against scripted answers (``httpx.MockTransport``):
requests built, answers parsed, refusals raised by class, retries only where a repeat is safe,
``wait`` following a task. Nothing sleeps: pauses are recorded, the clock is a counter."""

from __future__ import annotations

import asyncio
import inspect
import json
import pickle
import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import pytest

import imagesvc.client as sdk
from imagesvc.client import AsyncClient, Client, Image, Repository, Task, errors
from imagesvc.client.http import MAX_DELAY, retry_after
from imagesvc.client.models import Progress

BASE = "http://api.test:8000"
IMAGE = {"dc_bound": True, "name": "tiny", "uuid": "2f0c7c3e-1111-4222-8333-444455556666", "alias": "tiny",
         "version": "1.0", "owner": "admin", "access": 3, "desc": "a disk", "ostype": 1, "size": 1024,
         "resize": False, "deploy": False, "tags": ["linux"], "status": 1, "created": "2026-01-02T03:04:05Z",
         "future_field": {"kept": True}}


def envelope(status: str = "SUCCESS", result: Any = None, task_id: str = "1e1u1-aaaaaaaa-bbbb-cccc-dddd",
             **more: Any) -> dict[str, Any]:
    return {"task_id": task_id, "status": status, "result": result, **more}


Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


@dataclass
class Script:
    """Answers requests in order (the last one repeats); an exception is raised as the
    transport's. Records every request."""

    answers: list[Answer]
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer

    def body(self, index: int = -1) -> Any:
        content = self.requests[index].content
        return json.loads(content) if content else None


@dataclass
class FakeTime:
    """``sleep`` records the pause and moves ``clock`` on by it."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


def client(*answers: Answer, time: FakeTime | None = None, **kwargs: Any) -> tuple[Client, Script]:
    script = Script(list(answers))
    time = time or FakeTime()
    options = {"api_key": "secret-key", "backoff": 0, **kwargs}
    return Client(BASE, transport=httpx.MockTransport(script), sleep=time.sleep, clock=time.clock, **options), script


def async_client(*answers: Answer, time: FakeTime | None = None, **kwargs: Any) -> tuple[AsyncClient, Script]:
    script = Script(list(answers))
    time = time or FakeTime()
    options = {"api_key": "secret-key", "backoff": 0, **kwargs}
    return (AsyncClient(BASE, transport=httpx.MockTransport(script), sleep=time.async_sleep, clock=time.clock,
                        **options), script)


def ok(result: Any = None, **headers: str) -> httpx.Response:
    return httpx.Response(200, json=envelope(result=result), headers=headers)


def refused(status: int, detail: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"detail": detail}, headers=headers)


# --- the client itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["http://h:8000", "http://h:8000/", "http://h:8000/api", "http://h:8000/api/",
                                   " http://h:8000/api// "])
def test_the_base_url_is_the_api_root_with_or_without_api(given):
    assert Client(given).base_url == "http://h:8000/api"


def test_a_base_url_under_a_prefix_keeps_it():
    assert Client("https://example.com/imagesvc").base_url == "https://example.com/imagesvc/api"


@pytest.mark.parametrize("given", ["ftp://h/", "h:8000", "http:///api", "http://h/api?x=1"])
def test_a_base_url_that_is_not_an_http_root_is_refused(given):
    with pytest.raises(ValueError):
        Client(given)


def test_requests_carry_the_user_agent_and_the_api_key_and_ask_for_json():
    c, script = client(ok(IMAGE))
    c.get_image("tiny")
    request = script.requests[0]
    assert str(request.url) == f"{BASE}/api/image/tiny/"
    assert request.headers["user-agent"] == sdk.USER_AGENT and sdk.USER_AGENT.startswith("imagesvc-client/")
    assert request.headers["es-api-key"] == "secret-key" and "authorization" not in request.headers
    assert request.headers["accept"] == "application/json"


def test_a_token_is_sent_as_authorization_and_not_both_credentials_at_once():
    c, script = client(ok(IMAGE), api_key=None, token="tok")
    c.get_image("tiny")
    assert script.requests[0].headers["authorization"] == "Token tok"
    with pytest.raises(ValueError):
        Client(BASE, api_key="k", token="t")


def test_path_segments_are_encoded_and_empty_or_dot_segments_refused():
    c, script = client(ok([]))
    c.image_vms("a b/c")
    assert script.requests[0].url.raw_path == b"/api/image/a%20b%2Fc/vm/?full=true"
    for bad in ("", ".", ".."):
        with pytest.raises(ValueError):
            c.delete_image(bad)
    assert len(script.requests) == 1


def test_methods_show_their_own_signature_and_the_async_ones_are_coroutines():
    assert list(inspect.signature(Client(BASE).import_image).parameters) == [
        "name", "manifest_url", "file_url", "dc", "idempotency_key", "fields"]
    assert not inspect.iscoroutinefunction(Client(BASE).get_image)
    assert inspect.iscoroutinefunction(AsyncClient(BASE).get_image)
    assert "One image" in (Client.get_image.__doc__ or "")


# --- answers -------------------------------------------------------------------------------------


def test_a_shown_image_is_parsed_with_its_etag_and_nothing_is_lost():
    c, _ = client(ok({**IMAGE, "dcs": ["main"]}, ETag='"v7"'))
    image = c.get_image("tiny", extended=True)
    assert isinstance(image, Image)
    assert (image.name, image.uuid, image.access, image.ostype, image.size, image.tags, image.dc_bound) == (
        "tiny", IMAGE["uuid"], 3, 1, 1024, ("linux",), True)
    assert (image.resize, image.deploy, image.status, image.created) == (False, False, 1, "2026-01-02T03:04:05Z")
    assert image.created_at is not None and image.created_at.utcoffset().total_seconds() == 0
    assert image.dcs == ("main",) and image.etag == '"v7"'
    assert image.raw["future_field"] == {"kept": True}


def test_lists_are_images_or_names_and_take_their_parameters():
    c, script = client(ok([IMAGE]), ok(["a", "b"]))
    images = c.list_images(extended=True, order_by="-created")
    names = c.list_images(dc="dc2", full=False)
    assert [i.name for i in images] == ["tiny"] and names == ["a", "b"]
    assert dict(script.requests[0].url.params) == {"full": "true", "extended": "true", "order_by": "-created"}
    assert script.requests[1].url.path == "/api/dc/dc2/image/" and not script.requests[1].url.params


def test_an_image_of_a_datacenter_is_read_there():
    c, script = client(ok(IMAGE))
    assert c.get_image("tiny", dc="dc2").etag is None
    assert script.requests[0].url.path == "/api/dc/dc2/image/tiny/"


def test_repositories_and_their_images():
    repo = {"name": "good", "url": "http://r/", "last_update": "2026-01-01T00:00:00Z", "image_count": 2,
            "error": None}
    c, script = client(ok([repo]), ok(repo), ok([{"uuid": "u1"}]), ok({"uuid": "u1", "name": "x"}))
    assert c.list_repositories() == [Repository("good", "http://r/", "2026-01-01T00:00:00Z", 2, None)]
    assert c.get_repository("good").last_update_at.year == 2026
    assert c.list_repository_images("good") == [{"uuid": "u1"}]
    assert c.get_repository_image("good", "u1")["name"] == "x"
    assert [r.url.raw_path for r in script.requests] == [
        b"/api/imagestore/?full=true", b"/api/imagestore/good/", b"/api/imagestore/good/image/?full=true",
        b"/api/imagestore/good/image/u1/"]


def test_a_command_answered_201_pending_is_a_running_task():
    c, script = client(httpx.Response(201, json=envelope("PENDING"), headers={"Location": "/api/task/x/status/"}))
    task = c.import_image("tiny", "https://repo/images/u", file_url="https://repo/f", dc="main", desc="d")
    assert (task.status, task.http_code, task.done, task.succeeded, task.result) == ("PENDING", 201, False, False, None)
    assert task.task_id == "1e1u1-aaaaaaaa-bbbb-cccc-dddd"
    request = script.requests[0]
    assert (request.method, request.url.path) == ("POST", "/api/image/tiny/")
    assert script.body() == {"manifest_url": "https://repo/images/u", "file_url": "https://repo/f", "dc": "main",
                             "desc": "d"}


def test_a_command_answered_200_success_is_a_finished_task_with_its_result():
    c, _ = client(ok(IMAGE))
    task = c.update_image("tiny", desc="new")
    assert (task.status, task.http_code, task.done, task.succeeded) == ("SUCCESS", 200, True, True)
    assert task.result["name"] == "tiny"


@pytest.mark.parametrize("call, method, path, body", [
    (lambda c: c.update_image("i", dc="main", if_match='"v3"', access=1), "PUT", "/api/image/i/",
     {"dc": "main", "access": 1}),
    (lambda c: c.delete_image("i"), "DELETE", "/api/image/i/", None),
    (lambda c: c.attach_image("dc2", "i"), "POST", "/api/dc/dc2/image/i/", None),
    (lambda c: c.detach_image("dc2", "i"), "DELETE", "/api/dc/dc2/image/i/", None),
    (lambda c: c.snapshot_image("vm1", "daily", "i", disk_id=1), "POST", "/api/vm/vm1/snapshot/daily/image/i/",
     {"disk_id": 1}),
    (lambda c: c.refresh_repositories(), "PUT", "/api/imagestore/", None),
    (lambda c: c.refresh_repository("good"), "PUT", "/api/imagestore/good/", None),
    (lambda c: c.import_repository_image("good", "u1", dc="main", name="n"), "POST",
     "/api/imagestore/good/image/u1/", {"dc": "main", "name": "n"}),
])
def test_every_command_goes_to_its_route_with_a_key(call, method, path, body):
    c, script = client(httpx.Response(201, json=envelope("PENDING")))
    assert call(c).status == "PENDING"
    request = script.requests[0]
    assert (request.method, request.url.path, script.body()) == (method, path, body)
    assert len(request.headers["idempotency-key"]) == 36  # a fresh uuid4
    if method == "PUT" and path == "/api/image/i/":
        assert request.headers["if-match"] == '"v3"'


def test_a_400_with_field_errors_raises_bad_request_with_them():
    c, _ = client(httpx.Response(400, json=envelope("FAILURE", {"owner": ["Object with username=x does not exist."],
                                                                 "access": ["Invalid."]})))
    with pytest.raises(errors.BadRequest) as raised:
        c.update_image("tiny", owner="x", access=9)
    error = raised.value
    assert (error.status, error.detail, error.code, error.task_id) == (400, None, None, "1e1u1-aaaaaaaa-bbbb-cccc-dddd")
    assert error.field_errors == {"owner": ["Object with username=x does not exist."], "access": ["Invalid."]}
    assert "owner: Object with username=x does not exist." in str(error)


def test_a_failed_import_step_carries_its_code():
    result = {"returncode": 8, "message": "ERROR: Image file checksum mismatch (a != b)",
              "detail": "Got bad return code (8). Error: ERROR: Image file checksum mismatch (a != b)",
              "code": "checksum_mismatch"}
    c, _ = client(httpx.Response(400, json=envelope("FAILURE", result)))
    with pytest.raises(errors.BadRequest) as raised:
        c.import_image("tiny", "https://repo/images/u")
    assert (raised.value.code, raised.value.detail, raised.value.field_errors) == (
        "checksum_mismatch", result["detail"], {})
    assert str(raised.value).endswith("[checksum_mismatch]")


@pytest.mark.parametrize("status, cls", [
    (403, errors.Forbidden), (404, errors.NotFound), (406, errors.NotAcceptable), (412, errors.PreconditionFailed),
    (417, errors.ExpectationFailed), (423, errors.Locked), (428, errors.PreconditionRequired),
    (429, errors.TooManyRequests), (503, errors.Unavailable), (500, errors.ServerError), (502, errors.ServerError),
    (409, errors.ApiError),
])
def test_each_refusal_raises_its_class_with_the_detail(status, cls):
    c, script = client(refused(status, f"refused with {status}", **{"Retry-After": "1"}), retries=0)
    with pytest.raises(cls) as raised:
        c.delete_image("tiny")
    assert type(raised.value) is cls
    assert (raised.value.status, raised.value.detail, raised.value.body) == (
        status, f"refused with {status}", {"detail": f"refused with {status}"})
    assert raised.value.retry_after == 1.0
    assert len(script.requests) == 1


def test_a_non_json_answer_is_an_error_with_its_text():
    c, _ = client(httpx.Response(502, text="<html>Bad gateway</html>"), retries=0)
    with pytest.raises(errors.ServerError) as raised:
        c.get_image("tiny")
    assert raised.value.body == "<html>Bad gateway</html>" and raised.value.detail == "<html>Bad gateway</html>"


def test_a_success_status_with_an_unexpected_body_is_not_taken_for_an_answer():
    c, _ = client(httpx.Response(200, json={"hello": "proxy"}))
    with pytest.raises(errors.ApiError, match="Unexpected answer"):
        c.get_image("tiny")


def test_errors_survive_pickling():
    error = errors.api_error(400, envelope("FAILURE", {"name": ["Bad."]}))
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.field_errors, copy.task_id, str(copy)) == (
        errors.BadRequest, {"name": ["Bad."]}, error.task_id, str(error))
    failed = errors.task_failed(Task("t", "FAILURE", {"detail": "Image not found"}, 404))
    copy = pickle.loads(pickle.dumps(failed))
    assert isinstance(copy, errors.TaskFailed) and isinstance(copy, errors.NotFound) and copy.task.task_id == "t"


# --- accounts ------------------------------------------------------------------------------------


def test_login_returns_the_token_and_uses_it_instead_of_the_key_until_logout():
    c, script = client(httpx.Response(200, json={"token": "tok123", "expires": "x", "detail": "Welcome"}),
                       ok(["tiny"]), ok({"detail": "Bye."}), ok(["tiny"]))
    assert c.login("jane", "pw") == "tok123" and c.token == "tok123"
    login = script.requests[0]
    assert (login.method, login.url.path, script.body(0)) == ("POST", "/api/accounts/login/",
                                                              {"username": "jane", "password": "pw"})
    assert "es-api-key" not in login.headers and "idempotency-key" not in login.headers
    c.list_images(full=False)
    assert script.requests[1].headers["authorization"] == "Token tok123"
    assert "es-api-key" not in script.requests[1].headers
    c.logout()
    assert (script.requests[2].method, script.requests[2].url.path) == ("GET", "/api/accounts/logout/")
    assert script.requests[2].headers["authorization"] == "Token tok123"
    assert c.token is None
    c.list_images(full=False)
    assert script.requests[3].headers["es-api-key"] == "secret-key"
    c.logout()  # no token: nothing to end
    assert len(script.requests) == 4


def test_wrong_credentials_and_missing_fields_are_bad_requests():
    c, _ = client(refused(400, "Unable to log in with provided credentials."),
                  httpx.Response(400, json={"detail": {"password": ["This field is required."]}}))
    with pytest.raises(errors.BadRequest, match="Unable to log in"):
        c.login("jane", "wrong")
    with pytest.raises(errors.BadRequest) as raised:
        c.login("jane", "")
    assert raised.value.field_errors == {"password": ["This field is required."]} and c.token is None


# --- retries -------------------------------------------------------------------------------------


def test_a_get_is_retried_after_503_waiting_retry_after():
    time = FakeTime()
    c, script = client(refused(503, "Service temporarily unavailable", **{"Retry-After": "5"}), ok(IMAGE), time=time)
    assert c.get_image("tiny").name == "tiny"
    assert len(script.requests) == 2 and time.sleeps == [5.0]


def test_a_get_is_retried_after_a_transport_failure_and_429():
    time = FakeTime()
    c, script = client(httpx.ReadTimeout("slow"), refused(429, "Request was throttled.", **{"Retry-After": "2"}),
                       ok(IMAGE), time=time)
    assert c.get_image("tiny").name == "tiny"
    assert len(script.requests) == 3 and time.sleeps == [0.0, 2.0]


def test_a_command_is_retried_with_the_same_idempotency_key():
    c, script = client(refused(503, "unavailable"), httpx.ReadTimeout("lost answer"),
                       httpx.RemoteProtocolError("reset"), httpx.Response(201, json=envelope("PENDING")))
    task = c.import_image("tiny", "https://repo/images/u", dc="main")
    assert task.status == "PENDING" and len(script.requests) == 4
    keys = {r.headers["idempotency-key"] for r in script.requests}
    assert len(keys) == 1
    assert all(script.body(i) == script.body(0) for i in range(4))
    # The next logical call is another command: another key.
    c.import_image("tiny", "https://repo/images/u", dc="main")
    assert script.requests[-1].headers["idempotency-key"] not in keys


def test_the_callers_idempotency_key_is_sent_and_a_malformed_one_refused_before_sending():
    c, script = client(refused(503, "unavailable"), httpx.Response(201, json=envelope("PENDING")))
    c.delete_image("tiny", idempotency_key="delete-tiny-1")
    assert [r.headers["idempotency-key"] for r in script.requests] == ["delete-tiny-1"] * 2
    for bad in ("", "has space", "x" * 256, "é"):
        with pytest.raises(ValueError):
            c.delete_image("tiny", idempotency_key=bad)
    assert len(script.requests) == 2


@pytest.mark.parametrize("answer, cls", [
    (refused(503, "unavailable", **{"Retry-After": "1"}), errors.Unavailable),
    (httpx.ReadTimeout("no answer"), errors.TransportError),
    (httpx.RemoteProtocolError("reset after sending"), errors.TransportError),
])
def test_login_is_never_retried_once_it_may_have_been_sent(answer, cls):
    c, script = client(answer, httpx.Response(200, json={"token": "t"}))
    with pytest.raises(cls):
        c.login("jane", "pw")
    assert len(script.requests) == 1 and c.token is None


def test_login_is_retried_when_no_connection_was_made():
    c, script = client(httpx.ConnectError("refused"), httpx.Response(200, json={"token": "t"}))
    assert c.login("jane", "pw") == "t" and len(script.requests) == 2


def test_the_client_gives_up_after_its_retries():
    time = FakeTime()
    c, script = client(refused(503, "unavailable", **{"Retry-After": "1"}), retries=2, time=time)
    with pytest.raises(errors.Unavailable) as raised:
        c.list_images()
    assert len(script.requests) == 3 and time.sleeps == [1.0, 1.0] and raised.value.retry_after == 1.0

    c, script = client(httpx.ConnectError("refused"), retries=2)
    with pytest.raises(errors.TransportError) as failed:
        c.attach_image("dc2", "tiny")
    assert len(script.requests) == 3 and isinstance(failed.value.__cause__, httpx.ConnectError)
    assert "3 attempt(s)" in str(failed.value)


def test_backoff_doubles_with_jitter_and_retry_after_beyond_the_cap_is_not_waited_for():
    time = FakeTime()
    c, script = client(httpx.ConnectError("refused"), retries=3, backoff=1.0, time=time)
    with pytest.raises(errors.TransportError):
        c.task("t")
    assert len(time.sleeps) == 3
    for pause, ceiling in zip(time.sleeps, (1.0, 2.0, 4.0)):
        assert ceiling / 2 <= pause <= ceiling

    time = FakeTime()
    c, script = client(refused(503, "down", **{"Retry-After": str(int(MAX_DELAY) + 1)}), ok(IMAGE), time=time)
    with pytest.raises(errors.Unavailable):
        c.get_image("tiny")
    assert len(script.requests) == 1 and time.sleeps == []


def test_a_server_error_is_not_retried():
    c, script = client(refused(500, "Internal server error."), ok(IMAGE))
    with pytest.raises(errors.ServerError):
        c.get_image("tiny")
    assert len(script.requests) == 1


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after(httpx.Response(503, headers={"Retry-After": "7"})) == 7.0
    assert retry_after(httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0
    assert 3590 < retry_after(httpx.Response(503, headers={"Retry-After": _http_date(3600)})) <= 3600
    assert retry_after(httpx.Response(503, headers={"Retry-After": "soon"})) is None
    assert retry_after(httpx.Response(503)) is None


def _http_date(seconds_from_now: float) -> str:
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    return format_datetime(datetime.now(timezone.utc) + timedelta(seconds=seconds_from_now), usegmt=True)


# --- tasks ---------------------------------------------------------------------------------------


def running(status: str, done: int | None = None, total: int | None = 4096) -> httpx.Response:
    extra = {} if done is None else {"progress": {"done": done, "total": total}}
    return httpx.Response(201, json=envelope(status, **extra))


def test_task_reads_a_running_a_finished_and_a_failed_task():
    c, script = client(running("STARTED", 10, 100), ok({"x": 1}),
                       httpx.Response(404, json=envelope("FAILURE", {"detail": "Image not found"})),
                       refused(404, "Task does not exist (anymore)"))
    started = c.task("1e1u1-aaaaaaaa-bbbb-cccc-dddd")
    assert (started.status, started.progress, started.http_code) == ("STARTED", Progress(10, 100), 201)
    assert started.progress.fraction == 0.1
    assert c.task("t").result == {"x": 1}
    failed = c.task("t")
    assert (failed.status, failed.http_code, failed.failed, failed.done) == ("FAILURE", 404, True, True)
    with pytest.raises(errors.NotFound, match="Task does not exist"):
        c.task("t")
    assert script.requests[0].url.path == "/api/task/1e1u1-aaaaaaaa-bbbb-cccc-dddd/status/"


def test_wait_follows_the_task_calling_on_progress_when_it_changes():
    time = FakeTime()
    c, script = client(running("PENDING"), running("STARTED", 0), running("STARTED", 1024), running("STARTED", 1024),
                       running("STARTED", 4096), ok({"returncode": 0}), time=time)
    seen: list[Task] = []
    pending = Task("1e1u1-aaaaaaaa-bbbb-cccc-dddd", "PENDING", None, 201)
    task = c.wait(pending, poll_interval=0.25, on_progress=seen.append)
    assert (task.status, task.result, task.http_code) == ("SUCCESS", {"returncode": 0}, 200)
    assert [t.progress.done for t in seen] == [0, 1024, 4096] and all(t.status == "STARTED" for t in seen)
    assert len(script.requests) == 6 and time.sleeps == [0.25] * 6
    assert {r.url.path for r in script.requests} == {"/api/task/1e1u1-aaaaaaaa-bbbb-cccc-dddd/status/"}


def test_wait_on_an_id_asks_at_once_and_on_a_finished_task_not_at_all():
    time = FakeTime()
    c, script = client(ok(None), time=time)
    assert c.wait("t").succeeded and time.sleeps == [] and len(script.requests) == 1
    done = Task("t", "SUCCESS", None, 200)
    assert c.wait(done) is done and len(script.requests) == 1


def test_wait_raises_task_failed_that_is_also_the_class_of_its_code():
    result = {"returncode": 8, "message": "ERROR: Image file size mismatch (10 != 20)",
              "detail": "Got bad return code (8). Error: ERROR: Image file size mismatch (10 != 20)",
              "code": "size_mismatch"}
    c, _ = client(running("STARTED", 5), httpx.Response(400, json=envelope("FAILURE", result)))
    with pytest.raises(errors.TaskFailed) as raised:
        c.wait("1e1u1-aaaaaaaa-bbbb-cccc-dddd")
    failed = raised.value
    assert isinstance(failed, errors.BadRequest) and isinstance(failed, errors.ApiError)
    assert (failed.status, failed.code, failed.detail, failed.task_id) == (
        400, "size_mismatch", result["detail"], "1e1u1-aaaaaaaa-bbbb-cccc-dddd")
    assert failed.task.status == "FAILURE" and failed.task.result == result

    c, _ = client(httpx.Response(417, json=envelope("FAILURE", {"detail": "Image status is not OK"})))
    with pytest.raises(errors.ExpectationFailed) as raised:
        c.wait("t")
    assert isinstance(raised.value, errors.TaskFailed) and raised.value.detail == "Image status is not OK"


def test_wait_gives_up_after_its_timeout():
    time = FakeTime()
    c, script = client(running("STARTED", 1), time=time)
    with pytest.raises(TimeoutError, match="has not ended after 2"):
        c.wait("t", timeout=2, poll_interval=0.5)
    assert sum(time.sleeps) == pytest.approx(2.0) and len(script.requests) == 5


def test_a_failing_progress_callback_stops_the_wait():
    c, script = client(running("STARTED", 1), ok(None))

    def explode(task: Task) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        c.wait("t", on_progress=explode)
    assert len(script.requests) == 1


# --- the asyncio shell ---------------------------------------------------------------------------


def test_async_client_parses_and_refuses_like_the_client():
    async def scenario() -> None:
        c, script = async_client(ok(IMAGE, ETag='"v2"'), refused(404, "Image not found"))
        async with c:
            image = await c.get_image("tiny")
            assert (image.name, image.etag) == ("tiny", '"v2"')
            with pytest.raises(errors.NotFound, match="Image not found"):
                await c.get_image("gone")
        assert script.requests[0].headers["user-agent"] == sdk.USER_AGENT

    asyncio.run(scenario())


def test_async_client_retries_a_command_with_the_same_key_and_honours_retry_after():
    async def scenario() -> None:
        time = FakeTime()
        c, script = async_client(refused(503, "unavailable", **{"Retry-After": "3"}), httpx.ReadTimeout("lost"),
                                 httpx.Response(201, json=envelope("PENDING")), time=time)
        async with c:
            task = await c.update_image("tiny", desc="d")
        assert task.status == "PENDING" and time.sleeps == [3.0, 0.0]
        assert len({r.headers["idempotency-key"] for r in script.requests}) == 1 and len(script.requests) == 3

    asyncio.run(scenario())


def test_async_wait_awaits_its_progress_callback_and_raises_task_failed():
    async def scenario() -> None:
        time = FakeTime()
        c, _ = async_client(running("STARTED", 1), running("STARTED", 2), ok("done"), time=time)
        seen: list[int] = []

        async def on_progress(task: Task) -> None:
            await asyncio.sleep(0)
            seen.append(task.progress.done)

        async with c:
            assert (await c.wait("t", poll_interval=1, on_progress=on_progress)).result == "done"
            assert seen == [1, 2] and time.sleeps == [1, 1]

        c, _ = async_client(httpx.Response(400, json=envelope("FAILURE", {"code": "timeout", "detail": "slow"})))
        async with c:
            with pytest.raises(errors.TaskFailed) as raised:
                await c.wait("t")
        assert raised.value.code == "timeout"

    asyncio.run(scenario())


def test_async_login_is_not_retried_after_sending():
    async def scenario() -> None:
        c, script = async_client(httpx.ReadTimeout("lost"), httpx.Response(200, json={"token": "t"}))
        async with c:
            with pytest.raises(errors.TransportError):
                await c.login("jane", "pw")
        assert len(script.requests) == 1

    asyncio.run(scenario())


# --- the package ---------------------------------------------------------------------------------


def test_importing_the_client_loads_nothing_of_the_server():
    code = textwrap.dedent("""
        import sys
        import imagesvc.client
        from imagesvc.client import Client, AsyncClient, Image, Task, Repository, ApiError, TaskFailed, TransportError
        server = {"sqlalchemy", "starlette", "uvicorn", "psycopg", "alembic", "kombu", "amqp", "orjson", "structlog"}
        loaded = sorted(server & {name.split(".")[0] for name in sys.modules})
        ours = sorted(n for n in sys.modules if n.startswith("imagesvc.") and not n.startswith("imagesvc.client"))
        print(loaded, ours, "imagesvc.client.broker" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "[]", "False"]


def test_broker_is_imported_on_first_use(monkeypatch):
    stand_in = types.ModuleType("imagesvc.client.broker")

    class Broker:  # the real one is client/broker.py's
        pass

    stand_in.Broker = Broker
    monkeypatch.setitem(sys.modules, "imagesvc.client.broker", stand_in)
    monkeypatch.delitem(vars(sdk), "Broker", raising=False)
    try:
        assert sdk.Broker is Broker
        assert "Broker" in dir(sdk)
    finally:
        vars(sdk).pop("Broker", None)  # cached by the first use: the next test imports the real one
    with pytest.raises(AttributeError):
        sdk.NoSuchThing  # noqa: B018
