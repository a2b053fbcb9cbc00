"""The SDK's broker half (``imagesvc.client.broker``) against a running distributed system, as a
program would use it: its own broker user (made as docs/security.md's recipe makes "a command
publisher", on the system's topology prefix) and an imagesvc user of the same name.

Distributed mode only: the embedded mode's broker is kombu's in-process ``memory://``, which no
other process can reach, so there is nothing there for the SDK to connect to.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from kombu import Connection

from imagesvc.client.broker import Broker, IdentityRefused, PublishRefused, Received, SubscriptionRefused
from imagesvc.client.errors import ImagesvcError
from imagesvc.shared import contracts
from imagesvc.shared.contracts import Actor, TaskSucceeded, UpdateImage
from imagesvc.shared.contracts.routing import route
from tests.e2e.conftest import launch
from tests.e2e.test_image_store import accepted, finished
from tests.support.origin import Origin
from tests.support.polling import eventually
from tests.support.services import unavailable
from tests.support.tap import publish

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.postgres]

#: The download of the lifecycle test: 32 pieces of 64 KiB, 0.1 s apart (~3 s): the importer
#: reports progress about once a second.
SLOW_FILE = 2 * 1024 * 1024
PACE = 0.1


def rabbitmqctl(*args: str) -> None:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@dataclass
class Program:
    """A broker user of a program (and the imagesvc user of the same name)."""

    user: str
    url: str
    #: The system's service users: the only believable publishers of its events.
    service_users: tuple[str, ...]
    #: A broker user allowed to write to the events exchange, which imagesvc does not vouch for.
    forger_url: str
    forger: str


@pytest.fixture(scope="module")
def system(request, tmp_path_factory):
    """The ``distributed`` fixture's system, with an image store: only then does an import download
    a file (``task.started``, ``task.progress``)."""
    started = launch("distributed", request, tmp_path_factory,
                     IMAGESVC_IMAGE_STORE=str(tmp_path_factory.mktemp("store")))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def program(system):
    if shutil.which("rabbitmqctl") is None:
        unavailable("rabbitmqctl", "not on the PATH (needed to make broker users)")
    tag = uuid.uuid4().hex[:6]
    parsed = Connection(system.broker_url)
    vhost, prefix = parsed.virtual_host, re.escape(system.prefix)
    users = {f"sdk-{tag}": uuid.uuid4().hex, f"forger-{tag}": uuid.uuid4().hex}
    user, forger = users

    def url(name: str) -> str:
        return f"amqp://{name}:{users[name]}@{parsed.hostname}:{parsed.port or 5672}/{quote(vhost, safe='')}"

    try:
        for name, password in users.items():
            rabbitmqctl("add_user", name, password)
        # docs/security.md's command publisher, with the system's prefix on the exchange names.
        rabbitmqctl("set_permissions", "-p", vhost, user, r"^amq\.gen-.*",
                    rf"^({prefix}imagesvc\.commands|amq\.gen-.*)$", rf"^({prefix}imagesvc\.events|amq\.gen-.*)$")
        # What the recipe never grants: somebody other than imagesvc writing to the events exchange.
        rabbitmqctl("set_permissions", "-p", vhost, forger, "^$", rf"^{prefix}imagesvc\.events$", "^$")
        system.new_user(user)
        system.admin("user", "set", user, "--superadmin", "yes")
        yield Program(user, url(user), (parsed.userid,), url(forger), forger)
    finally:
        for name in users:
            subprocess.run(["rabbitmqctl", "delete_user", name], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def origin():
    served = Origin()
    yield served
    served.close()


def sdk(system, program: Program, **options) -> Broker:
    return Broker(program.url, prefix=system.prefix, service_users=program.service_users, **options)


def start_import(system, origin: Origin, *, content: bytes = b"\x00" * 4096, pace: float = 0.0) -> tuple[str, str, str]:
    """Import an image into datacenter main over HTTP; returns (name, image uuid, task id)."""
    name = f"sdk-{uuid.uuid4().hex[:8]}"
    manifest_url, manifest = origin.add_image(content, pace=pace)
    with system.client() as client:
        task_id = accepted(client.post(f"/image/{name}/", json={"manifest_url": manifest_url, "dc": "main"}))
    return name, manifest["uuid"], task_id


def imported(system, origin: Origin) -> str:
    name, _, task_id = start_import(system, origin)
    with system.client() as client:
        assert finished(client, task_id).json()["status"] == "SUCCESS"
    return name


def test_a_command_published_as_the_programs_user_ends_in_task_succeeded(system, program, origin):
    name = imported(system, origin)
    task_id = str(uuid.uuid4())
    with sdk(system, program) as broker:
        outcome = broker.publish_and_wait(UpdateImage(name=name, desc="by the sdk"), dc="main", task_id=task_id,
                                          timeout=30)
    assert isinstance(outcome, TaskSucceeded), outcome
    assert (outcome.task_id, outcome.command, outcome.user, outcome.http_code) == (
        task_id, "image.update", program.user, 200)
    # The outcome event leaves the updater before the projector has applied it: a program on the
    # broker has no read-your-writes promise, so the read model catches up.
    with system.client() as client:
        def projected() -> None:
            assert client.get(f"/image/{name}/").json()["result"]["desc"] == "by the sdk"
            assert client.get(f"/task/{task_id}/status/").json()["status"] == "SUCCESS"

        eventually(projected, timeout=15)


def test_a_subscription_whose_channel_the_broker_closes_says_so_and_publishing_goes_on(system, program, origin):
    name = imported(system, origin)
    with sdk(system, program) as broker:
        broken = broker.subscribe(("task.#",), timeout=5)
        healthy = broker.subscribe(("task.#",), timeout=5)
        broken._channel.basic_ack(999_999)  # an unknown delivery tag: the broker closes that channel

        def closed() -> None:
            broken.get(0.2)
            raise AssertionError("the broker's close has not been read yet")

        with pytest.raises(SubscriptionRefused, match="closed this subscription's channel"):
            eventually(closed, timeout=10)
        task_id = broker.publish(UpdateImage(name=name, desc="after a close"), dc="main")
        seen = broker.wait_for_task(task_id, timeout=30, subscription=healthy)
        assert isinstance(seen, TaskSucceeded)


def test_a_subscriber_sees_an_imports_whole_lifecycle_in_order(system, program, origin):
    with sdk(system, program) as broker, broker.subscribe(("image.#", "task.#"), ["main"], timeout=30) as events:
        assert events.bindings == ("image.#.dc.main", "image.#.global", "task.#.dc.main", "task.#.global")
        _, image_uuid, task_id = start_import(system, origin, content=b"\x01" * SLOW_FILE, pace=PACE)
        mine: list[Received] = []
        for received in events:
            received.ack()
            if received.envelope.correlation_id == task_id:
                mine.append(received)
                if received.envelope.type in contracts.TERMINAL_TASK_EVENTS:
                    break
    types = [r.envelope.type for r in mine]
    assert [t for t in types if t != "task.progress"] == ["image.imported", "task.started", "image.updated",
                                                          "task.succeeded"], types
    progress = [r.event for r in mine if r.envelope.type == "task.progress"]
    assert progress, f"no task.progress in {types}"
    assert types.index("task.started") < types.index("task.progress") and (
        max(i for i, t in enumerate(types) if t == "task.progress") < types.index("image.updated"))
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    assert all(0 < p.done <= SLOW_FILE and p.total == SLOW_FILE for p in progress)
    stream = contracts.image_stream(image_uuid)
    positions = [r.event.stream_position() for r in mine if r.envelope.type.startswith("image.")]
    assert positions == [(stream, 1), (stream, 2)]
    terminal = mine[-1].event
    assert (terminal.stream, terminal.stream_version) == (stream, 2)
    for received in mine:  # each where the contract routes it, published by imagesvc
        assert received.routing_key == route(received.envelope.type, received.envelope.payload).key
        assert received.routing_key.endswith(".dc.main")
        assert received.publisher in program.service_users
        assert received.envelope.causation_id is not None


def test_a_forged_event_is_never_yielded(system, program, origin, caplog):
    name = imported(system, origin)
    caplog.set_level(logging.WARNING, logger="imagesvc.client.broker")
    with sdk(system, program) as broker, broker.subscribe(("task.#",), timeout=30) as events:
        forged_task = str(uuid.uuid4())
        forged = contracts.wrap(TaskSucceeded(task_id=forged_task, command="image.update", object_name=name,
                                              user=program.user, dc="main"),
                                correlation_id=forged_task, actor=Actor(user=program.user, dc="main"))
        exchange = f"{system.prefix}imagesvc.events"
        # As the forger (RabbitMQ vouches for the user_id: it is not a service user), and without
        # any user_id at all; both are routed into our queue before the real task is even asked for.
        for properties in ({"user_id": program.forger}, {}):
            publish(program.forger_url, exchange, "task.succeeded.dc.main", contracts.encode(forged),
                    content_type="application/json", delivery_mode=2, message_id=forged.id,
                    correlation_id=forged_task, type=forged.type, **properties)
        with system.client() as client:
            real = accepted(client.put(f"/image/{name}/", json={"desc": "real"}))
        yielded = []
        for received in events:
            received.ack()
            yielded.append(received.envelope)
            if received.envelope.correlation_id == real and received.envelope.type in contracts.TERMINAL_TASK_EVENTS:
                break
    assert [e.type for e in yielded if e.correlation_id == real][-1] == "task.succeeded"
    assert forged.id not in {e.id for e in yielded} and forged_task not in {e.correlation_id for e in yielded}
    dropped = [r.getMessage() for r in caplog.records if "forged" in r.getMessage() and forged.id in r.getMessage()]
    assert len(dropped) == 2, dropped
    assert any(f"'{program.forger}'" in line for line in dropped)


def test_publishing_as_another_user_than_the_connections_is_refused_by_the_broker(system, program, origin):
    name = imported(system, origin)
    with sdk(system, program, user="root") as broker:
        with pytest.raises(IdentityRefused) as refused:
            broker.publish(UpdateImage(name=name, desc="as root"), dc="main")
        assert isinstance(refused.value, PublishRefused) and isinstance(refused.value, ImagesvcError)
        assert refused.value.reply_code == 406 and "user_id" in refused.value.reply_text
        # The channel is made again: the next publish is refused the same way, not broken.
        with pytest.raises(IdentityRefused):
            broker.publish(UpdateImage(name=name, desc="as root"), dc="main")
    with system.client() as client:
        assert client.get(f"/image/{name}/").json()["result"]["desc"] != "as root"


# --- the same through the command line -----------------------------------------------------------


def cli(system, program: Program, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESVC_")}
    env["IMAGESVC_CLIENT_BROKER_URL"] = program.url
    service = [arg for user in program.service_users for arg in ("--service-user", user)]
    return subprocess.run([sys.executable, "-m", "imagesvc", *args, "--prefix", system.prefix, *service],
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_command_line_publishes_a_command_and_waits_for_its_outcome(system, program, origin):
    name = imported(system, origin)
    done = cli(system, program, "command", "publish", "image.update", "--set", f"name={name}",
               "--set", "desc=from the command line", "--dc", "main", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert (outcome["type"], outcome["http_code"], outcome["user"]) == ("task.succeeded", 200, program.user)

    refused = cli(system, program, "command", "publish", "image.update", "--set", f"name={name}",
                  "--set", "access=7", "--dc", "main", "--wait")
    assert refused.returncode == 1, refused.stderr
    assert re.search(r"^outcome\s+task.failed$", refused.stdout, re.MULTILINE) and "http_code  400" in refused.stdout

    sent = cli(system, program, "command", "publish", "image.delete", "--set", f"name={name}", "--dc", "main",
               "--json")
    assert sent.returncode == 0, sent.stderr
    task_id = json.loads(sent.stdout)["task_id"]
    with system.client() as client:
        # Unknown until the deleter has reported (nobody journaled a command published directly),
        # and an unknown task id of a program's own form answers 403, as the original does.
        eventually(lambda: _assert_status(client, task_id, "SUCCESS"), timeout=30)
        assert client.get(f"/image/{name}/").status_code == 404


def _assert_status(client, task_id: str, status: str) -> None:
    answer = client.get(f"/task/{task_id}/status/")
    assert answer.json().get("status") == status, (answer.status_code, answer.text)


def test_the_command_line_refuses_what_is_not_a_command_before_connecting(system, program):
    unknown = cli(system, program, "command", "publish", "image.destroy", "--set", "name=x")
    assert unknown.returncode == 2 and "not a command type" in unknown.stderr
    missing = cli(system, program, "command", "publish", "image.update", "--set", "desc=no name")
    assert missing.returncode == 2 and "'name' is required" in missing.stderr
