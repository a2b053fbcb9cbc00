"""Keyed retries after the gateway died mid-request (issue 12; reliability row C3).

A gateway armed with one of its crash points (shared/crash.py) dies while it handles a command
sent with an ``Idempotency-Key``: ``gateway_before_publish`` (checks passed, nothing published),
``gateway_after_publish_before_journal`` (the broker confirmed the command, the journal has no row)
or ``gateway_after_journal`` (journaled, the client not answered). It is started again, and the
client sends the same request with the same key. The retry must get the task of the command the
first request published (its outcome, or 201 PENDING with that task id and then that outcome), and
the command must have had one effect and one terminal event, whatever the point.

Distributed (RabbitMQ + PostgreSQL; a tap on the commands exchange sees every copy published): an
import, an update and a delete at database level; an import whose importer is stopped, so that its
command still waits in its queue when the retry comes; an import streamed slowly into an image
store (long-running: the retry comes while it runs). Embedded (``imagesvc serve`` dies whole and
restarts, with its start-up recovery): the database-level three. CI: each case once; nightly:
``ROUNDS`` times.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import httpx
import pytest
from sqlalchemy import create_engine, select

from imagesvc.services.gateway.idempotency import identity
from imagesvc.shared.crash import EXIT_STATUS
from imagesvc.shared.db.models import StoredEvent, SubmittedCommand, User
from imagesvc.shared.keys import key_digest
from tests.e2e.conftest import database_url
from tests.e2e.test_idempotency import ended
from tests.support.polling import eventually
from tests.support.systems import System, restart_embedded, start_distributed, start_embedded
from tests.support.tap import EventTap
from tests.support.tier import scaled

pytestmark = pytest.mark.e2e

POINTS = ("gateway_before_publish", "gateway_after_publish_before_journal", "gateway_after_journal")
ROUNDS = scaled(ci=1, nightly=5)
TERMINAL = ("task.succeeded", "task.failed")
EFFECT = {"POST": "image.imported", "PUT": "image.updated", "DELETE": "image.deleted"}


# --- systems ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def distributed(rabbitmq_url, postgres_admin_url, tmp_path_factory):
    system = start_distributed(tmp_path_factory.mktemp("gateway-crashes"), broker_url=rabbitmq_url,
                               postgres_admin_url=postgres_admin_url, gateways=1,
                               extra_env={"IMAGESVC_ANSWER_WINDOW": "2"})
    yield system
    system.stop()


@pytest.fixture(scope="module")
def stored(rabbitmq_url, postgres_admin_url, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gateway-crashes-store")
    system = start_distributed(workdir, broker_url=rabbitmq_url, postgres_admin_url=postgres_admin_url, gateways=1,
                               extra_env={"IMAGESVC_IMAGE_STORE": str(workdir / "store")})
    yield system
    system.stop()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    system = start_embedded(tmp_path_factory.mktemp("gateway-crashes-embedded"))
    yield system
    system.stop()


def commands_tap(system: System) -> EventTap:
    """Every image command published (the commands exchange is direct: one binding per type)."""
    return EventTap(system.broker_url, f"{system.prefix}imagesvc.commands",
                    ("image.import", "image.update", "image.delete"))


# --- one kill and its retry ------------------------------------------------------------------


def victim(system: System) -> str:
    return "serve" if system.mode == "embedded" else "gateway0"


def restart(system: System, crash_at: str | None = None) -> None:
    """The gateway (``serve`` whole, in the embedded mode) started again, armed with ``crash_at``."""
    if system.mode == "embedded":
        if system.processes["serve"].poll() is None:
            system.kill("serve", signal.SIGTERM)
        restart_embedded(system, crash_at=crash_at)
    else:
        system.start_gateway(0, crash_at=crash_at)


@dataclass
class Retried:
    """A keyed request whose gateway died at a crash point, and its retry."""

    message_id: str
    #: Whether the first request's command had stored anything when the retry was sent.
    handled_before_retry: bool
    #: The retry's answer, and the final answer of its task (the same answer unless it was 201).
    answer: httpx.Response
    final: httpx.Response

    @property
    def task_id(self) -> str:
        return self.answer.json()["task_id"]


def crash_and_retry(system: System, point: str, method: str, path: str, body: dict | None = None,
                    while_pending: Callable[[], None] = lambda: None) -> Retried:
    """Send the keyed request to a gateway armed with ``point``, see it die before answering,
    start it again and send the same request with the same key; ``while_pending`` runs once the
    retry is answered, before its task is followed to its end."""
    key = f"retry-{uuid.uuid4().hex[:8]}"
    headers = {"Idempotency-Key": key}
    message_id = identity(user_id=user_id(system), method=method, path=httpx.URL(system.url + path).path,
                          key=key).message_id
    name = victim(system)
    crashes = system.log(name).count(f"crash point {point} reached")
    restart(system, crash_at=point)
    with system.client() as client:
        with pytest.raises(httpx.TransportError):  # it died before answering
            client.request(method, path, json=body, headers=headers)
    assert system.processes[name].wait(timeout=30) == EXIT_STATUS
    assert system.log(name).count(f"crash point {point} reached") == crashes + 1
    restart(system)
    handled = bool(caused_by(system, message_id))
    with system.client() as client:
        answer = client.request(method, path, json=body, headers=headers)
        assert answer.status_code in (200, 201), answer.text
        while_pending()
        final = ended(client, answer)
    assert final.json()["task_id"] == answer.json()["task_id"]
    return Retried(message_id, handled, answer, final)


def user_id(system: System) -> int:
    """The id of the user of the system's API key."""
    engine = create_engine(database_url(system))
    try:
        with engine.connect() as conn:
            return conn.execute(select(User.id).where(User.api_key_digest == key_digest(system.api_key))).scalar_one()
    finally:
        engine.dispose()


def caused_by(system: System, message_id: str) -> list[tuple[str, str]]:
    """(type, task id) of every stored event the command ``message_id`` caused."""
    engine = create_engine(database_url(system))
    events = StoredEvent.__table__
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(
                select(events.c.type, events.c.correlation_id).where(events.c.causation_id == message_id)
                .order_by(events.c.id))]
    finally:
        engine.dispose()


def journaled_task(system: System, message_id: str) -> str | None:
    engine = create_engine(database_url(system))
    journal = SubmittedCommand.__table__
    try:
        with engine.connect() as conn:
            return conn.execute(select(journal.c.task_id).where(journal.c.message_id == message_id)).scalar()
    finally:
        engine.dispose()


def assert_once(system: System, retried: Retried, effect: str) -> None:
    """The key's command ran once, under the task the retry answered with, and ended once."""
    events = caused_by(system, retried.message_id)
    assert {task for _, task in events} == {retried.task_id}, events
    types = Counter(kind for kind, _ in events)
    assert sum(types[t] for t in TERMINAL) == 1 and types[effect] == 1, types
    assert journaled_task(system, retried.message_id) in (None, retried.task_id)
    if retried.answer.status_code == 201:
        assert retried.answer.json() == {"task_id": retried.task_id, "status": "PENDING", "result": None}


def copies_published(tap: EventTap, retried: Retried, point: str) -> int:
    """How many copies of the key's command were published, each under the retry's task: one,
    unless the first one was still unhandled in its queue when the retry looked for it (then
    the retry publishes it again, and the consumer's inbox drops one of the two)."""
    def seen() -> list[dict]:
        copies = [e for e in tap.envelopes() if e["id"] == retried.message_id]
        assert copies, "the tap has not seen the command yet"
        return copies

    copies = eventually(seen)
    assert {e["correlation_id"] for e in copies} == {retried.task_id}, copies
    assert len(copies) in ((1, 2) if point == "gateway_after_publish_before_journal" else (1,)), copies
    return len(copies)


def an_image(system: System, origin, name: str) -> None:
    url, _ = origin.add_manifest()
    with system.client() as client:
        assert ended(client, client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"})).status_code == 200


def run_case(system: System, origin, point: str, method: str) -> Retried:
    """One database-level command (import, update or delete of a fresh image) killed at ``point``."""
    name = f"kr-{uuid.uuid4().hex[:10]}"
    body = None
    if method == "POST":
        body = {"manifest_url": origin.add_manifest()[0], "dc": "main"}
    else:
        an_image(system, origin, name)
        body = {"desc": "patched"} if method == "PUT" else None
    retried = crash_and_retry(system, point, method, f"/image/{name}/", body)
    assert retried.final.status_code == 200, retried.final.text
    assert_once(system, retried, EFFECT[method])
    with system.client() as client:
        shown = client.get(f"/image/{name}/")
    assert shown.status_code == (404 if method == "DELETE" else 200), shown.text
    if method == "PUT":
        assert shown.json()["result"]["desc"] == "patched"
    return retried


# --- the rows --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
@pytest.mark.parametrize("point", POINTS)
def test_distributed_keyed_retry_after_the_gateway_died(distributed, origin, point, method):
    tap = commands_tap(distributed)
    try:
        for _ in range(ROUNDS):
            retried = run_case(distributed, origin, point, method)
            copies = copies_published(tap, retried, point)
            print(f"distributed {method} {point}: retry {retried.answer.status_code}, copies {copies}, "
                  f"handled before the retry: {retried.handled_before_retry}")
    finally:
        tap.close()


def test_distributed_keyed_retry_of_an_import_still_in_its_queue(distributed, origin):
    """The importer is down: the first copy waits in its queue, unhandled, when the retry comes.
    Nothing knows the task yet, so the retry passes the same checks and publishes the same
    command again; the importer, back, handles one copy and drops the other as a duplicate."""
    point = "gateway_after_publish_before_journal"
    tap = commands_tap(distributed)
    try:
        for _ in range(ROUNDS):
            distributed.kill("importer")
            name = f"kq-{uuid.uuid4().hex[:10]}"
            retried = crash_and_retry(distributed, point, "POST", f"/image/{name}/",
                                      {"manifest_url": origin.add_manifest()[0], "dc": "main"},
                                      while_pending=lambda: distributed.start_worker("importer"))
            assert not retried.handled_before_retry
            assert retried.answer.status_code == 201, retried.answer.text  # nobody handled it within the window
            assert retried.final.status_code == 200, retried.final.text
            assert_once(distributed, retried, "image.imported")
            assert copies_published(tap, retried, point) == 2
            print(f"queued import {point}: retry 201, copies 2")
    finally:
        if distributed.processes["importer"].poll() is not None:
            distributed.start_worker("importer")
        tap.close()


@pytest.mark.parametrize("point", POINTS)
def test_distributed_keyed_retry_of_a_long_running_import_into_the_store(stored, origin, point):
    """The file takes about 10 s to arrive: the retry comes while the first command's import runs
    and gets 201 PENDING with its task id, then its outcome."""
    store = stored.workdir / "store"
    tap = commands_tap(stored)
    try:
        for _ in range(scaled(ci=1, nightly=3)):
            content = os.urandom(100 * 65536)
            url, manifest = origin.add_image(content, pace=0.1)
            name = f"ks-{uuid.uuid4().hex[:10]}"
            retried = crash_and_retry(stored, point, "POST", f"/image/{name}/", {"manifest_url": url, "dc": "main"})
            assert retried.answer.status_code == 201, retried.answer.text
            assert retried.final.status_code == 200, retried.final.text
            assert_once(stored, retried, "image.imported")
            copies = copies_published(tap, retried, point)
            assert (store / manifest["uuid"] / "file").read_bytes() == content
            assert not list((store / ".partial").glob(f"{manifest['uuid']}*"))
            print(f"store import {point}: retry {retried.answer.status_code}, copies {copies}, "
                  f"handled before the retry: {retried.handled_before_retry}")
    finally:
        tap.close()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
@pytest.mark.parametrize("point", POINTS)
def test_embedded_keyed_retry_after_serve_died(embedded, origin, point, method):
    for _ in range(ROUNDS):
        retried = run_case(embedded, origin, point, method)
        print(f"embedded {method} {point}: retry {retried.answer.status_code}, "
              f"handled before the retry: {retried.handled_before_retry}")
