"""Danube Cloud's ``es`` client works unchanged, including its streamed (ES-STREAM) mode.

The system here runs with an answer window of 0 s, so every command is answered 201 PENDING
first: without ES-STREAM the client gets the task id to poll, with it the connection stays open
and carries the final answer (reference-behaviour §7.7).
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import launch
from tests.support.es import es
from tests.support.polling import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def slow_answers(request, tmp_path_factory):
    started = launch(request.param, request, tmp_path_factory, IMAGESVC_ANSWER_WINDOW="0")
    yield started
    started.stop()


def test_without_es_stream_a_command_answers_201_and_the_task_can_be_polled(slow_answers, origin, name):
    url, _ = origin.add_manifest()
    with slow_answers.client() as client:
        response = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"})
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["status"] == "PENDING" and body["result"] is None
        assert response.headers["es_task_id"] == body["task_id"]
        assert response.headers["location"] == f"/api/task/{body['task_id']}/status/"

        def finished():
            status = client.get(f"/task/{body['task_id']}/status/")
            assert status.status_code == 200, status.text
            return status.json()

        final = eventually(finished)
        assert final["status"] == "SUCCESS" and final["result"]["name"] == name
        assert client.get(f"/image/{name}/").json()["result"] == final["result"]


def test_es_client_streams_the_final_answer(slow_answers, origin, name):
    url, manifest = origin.add_manifest()
    created = es(slow_answers.url, slow_answers.api_key, "create", f"/image/{name}", manifest_url=url, dc="main",
                 access=1, resize=True)
    assert created.streamed
    assert created.status == 200
    assert created.body["status"] == "SUCCESS"
    assert created.body["task_id"] == created.task_id
    assert (created.body["result"]["uuid"], created.body["result"]["access"]) == (manifest["uuid"], 1)

    updated = es(slow_answers.url, slow_answers.api_key, "set", f"/image/{name}", desc="from es", deploy="True")
    assert (updated.status, updated.body["result"]["desc"], updated.body["result"]["deploy"]) == (200, "from es", True)

    shown = es(slow_answers.url, slow_answers.api_key, "get", f"/image/{name}", extended=True)
    assert not shown.streamed
    assert shown.status == 200 and shown.body["result"]["dcs"] == ["main"]

    listed = es(slow_answers.url, slow_answers.api_key, "get", "/image", full=True, order_by="-created")
    assert listed.status == 200 and listed.body["result"][0]["name"] == name

    deleted = es(slow_answers.url, slow_answers.api_key, "delete", f"/image/{name}")
    assert (deleted.streamed, deleted.status, deleted.body["result"]) == (True, 200, None)


def test_es_client_streams_a_failure_with_its_code(slow_answers, origin, name):
    url = origin.route(f"/gone/{name}", status=404)
    result = es(slow_answers.url, slow_answers.api_key, "create", f"/image/{name}", manifest_url=url, dc="main")
    assert result.streamed and result.status == 400
    assert result.body["status"] == "FAILURE"
    assert list(result.body["result"]) == ["manifest_url"]


def test_refusals_by_the_gateway_are_never_streamed(slow_answers):
    result = es(slow_answers.url, slow_answers.api_key, "delete", "/image/no-such-image")
    assert (result.streamed, result.status, result.body) == (False, 404, {"detail": "Image not found"})


def test_while_waiting_the_stream_sends_a_space_per_poll(slow_answers, origin, name):
    url, _ = origin.add_manifest(delay=1.6)  # the import outlasts the first poll (after 1 s)
    result = es(slow_answers.url, slow_answers.api_key, "create", f"/image/{name}", manifest_url=url, dc="main")
    assert result.streamed and result.status == 200
    assert result.dots >= 1


def test_es_login_then_token_calls_then_logout(slow_answers, name, origin):
    """``es login -username U -password P``, then calls with the session's token, then ``es logout``."""
    import uuid as uuid_

    system = slow_answers
    username = f"es{uuid_.uuid4().hex[:6]}"
    system.new_user(username, "--superadmin")
    system.admin("user", "password", username, stdin="es secret\n")
    login = es(system.url, None, "login", "", username=username, password="es secret")
    assert login.status == 200 and login.body["detail"] == "Welcome to Danube Cloud API."
    token = login.body["token"]
    listed = es(system.url, None, "get", "/image", token=token, full=True)
    assert listed.status == 200 and listed.body["status"] == "SUCCESS"
    assert es(system.url, None, "logout", "", token=token).status == 200
    after = es(system.url, None, "get", "/image", token=token)
    assert (after.status, after.body) == (403, {"detail": "Invalid token."})
