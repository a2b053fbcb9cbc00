"""The broker as a public interface, tried as an outside user would (reliability rows T1-T4), with
broker users made exactly as docs/security.md's setup recipe makes them: the recipe's shell block
is run as written (only its first lines, which name things, take the test's names) on a fresh
virtual host, and a distributed system runs on it as the recipe's service user.

- T1: forged events (a node publisher's messages with image and task bodies, and anybody's
  publishes on the image routing keys) are refused and change nothing.
- T2: a command claiming another user's running task id ends nothing and takes nothing over.
- T3: subscribers see exactly their datacenter's and the global events.
- T4: commands published directly meet the HTTP API's limits; queues are bounded, and a full one
  refuses publishes instead of dropping them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import orjson
import pika
import pytest

from imagesvc.domain import tasks
from tests.e2e.test_distributed import command, stored_events
from tests.e2e.test_image_store import accepted, finished
from tests.support.origin import Origin
from tests.support.polling import eventually
from tests.support.services import unavailable
from tests.support.systems import start_distributed
from tests.support.tap import EventTap, publish, take

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.postgres]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"
QUEUE_MAX_LENGTH = 100
DEAD_LETTER_MAX_LENGTH = 20


def recipe() -> tuple[list[str], list[str]]:
    """The setup recipe of docs/security.md: (the variables its first lines set, its sections: the
    paragraphs after them, each a comment and its commands)."""
    text = DOCS.read_text()
    block = re.search(r"<!-- broker-setup -->\s*```sh\n(.*?)```\s*<!-- /broker-setup -->", text, re.S)
    assert block, "docs/security.md has no broker-setup block"
    lines = block.group(1).splitlines()
    names = [m.group(1) for line in lines if (m := re.match(r"([A-Z_]+)=", line))]
    body = "\n".join(line for line in lines if not re.match(r"[A-Z_]+=", line))
    return names, [section.strip() for section in body.split("\n\n") if section.strip()]


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)


class Broker:
    """The recipe's users on a fresh virtual host; ``url(user)`` connects as one of them."""

    def __init__(self):
        if shutil.which("rabbitmqctl") is None:
            unavailable("rabbitmqctl", "not on the PATH (needed to make broker users)")
        tag = uuid.uuid4().hex[:6]
        self.dc, self.other_dc = f"p{tag}", f"b{tag}"
        self.names = {"VHOST": f"isvc-{tag}", "SERVICE_USER": f"isvc-{tag}", "PUBLISHER": f"ops-{tag}",
                      "SUBSCRIBER": f"sub-{tag}", "SUBSCRIBER_DC": self.dc, "NODE_PUBLISHER": f"nodes-{tag}"}
        variables, self.sections = recipe()
        self.names.update({name: uuid.uuid4().hex for name in variables if name.endswith("PASSWORD")})
        assert set(variables) == set(self.names), f"the recipe names {variables}"
        self.passwords = {self.names[user]: self.names[password] for user, password in (
            ("SERVICE_USER", "SERVICE_PASSWORD"), ("PUBLISHER", "PUBLISHER_PASSWORD"),
            ("SUBSCRIBER", "SUBSCRIBER_PASSWORD"), ("NODE_PUBLISHER", "NODE_PUBLISHER_PASSWORD"))}
        self.users = list(self.passwords)

    def run(self, sections: list[str] | None = None, **overrides: str) -> None:
        """Run the recipe's sections as written (all of them, or some, with some names changed)."""
        env = {**os.environ, **self.names, **overrides}
        script = "\n\n".join(self.sections if sections is None else sections)
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr

    def section(self, starts: str) -> str:
        return next(section for section in self.sections if section.startswith(starts))

    def url(self, user: str, password: str | None = None) -> str:
        return (f"amqp://{quote(user, safe='')}:{quote(password or self.passwords[user], safe='')}@127.0.0.1:5672/"
                f"{quote(self.names['VHOST'], safe='')}")

    def close(self) -> None:
        for user in self.users:
            rabbitmqctl("delete_user", user)
        rabbitmqctl("delete_vhost", self.names["VHOST"])


@pytest.fixture(scope="module")
def broker(rabbitmq_url):
    made = Broker()
    made.users.append(f"sub2-{made.names['VHOST'][-6:]}")  # T3's second subscriber, removed with the rest
    try:
        made.run()
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def secured(broker, store_dir, postgres_admin_url, tmp_path_factory):
    """A distributed system on the recipe's virtual host, as its service user, with an image store
    and small queue limits (T4)."""
    system = start_distributed(
        tmp_path_factory.mktemp("secured"), broker_url=broker.url(broker.names["SERVICE_USER"]),
        postgres_admin_url=postgres_admin_url, gateways=1, prefix="",
        extra_env={"IMAGESVC_NODE_PUBLISHERS": broker.names["NODE_PUBLISHER"],
                   "IMAGESVC_IMAGE_STORE": str(store_dir),
                   "IMAGESVC_QUEUE_MAX_LENGTH": str(QUEUE_MAX_LENGTH),
                   "IMAGESVC_DEAD_LETTER_MAX_LENGTH": str(DEAD_LETTER_MAX_LENGTH)})
    try:
        for dc in (broker.dc, broker.other_dc):
            system.admin("dc", "create", dc)
        publisher_key = system.new_user(broker.names["PUBLISHER"])
        system.admin("user", "set", broker.names["PUBLISHER"], "--superadmin", "yes")
        system.keys = {"publisher": publisher_key, "nobody": system.new_user(f"nobody-{uuid.uuid4().hex[:6]}")}
        yield system
    finally:
        system.stop()


@pytest.fixture(scope="module")
def origin():
    served = Origin()
    yield served
    served.close()


def service_url(broker) -> str:
    return broker.url(broker.names["SERVICE_USER"])


def import_image(system, origin, dc: str | None, *, content: bytes = b"\x00" * 4096, pace: float = 0.0):
    """Import an image over HTTP into ``dc`` (None: global); returns (name, manifest, task id)."""
    name = f"sec-{uuid.uuid4().hex[:8]}"
    url, manifest = origin.add_image(content, pace=pace)
    body = {"manifest_url": url, **({"dc": dc} if dc else {"dc_bound": False})}
    with system.client() as client:
        task_id = accepted(client.post(f"/image/{name}/", json=body))
    return name, manifest, task_id


def imported(system, origin, dc: str | None) -> tuple[str, dict, str]:
    name, manifest, task_id = import_image(system, origin, dc)
    with system.client() as client:
        assert finished(client, task_id).json()["status"] == "SUCCESS"
    return name, manifest, task_id


def send(broker, user: str, exchange: str, routing_key: str, envelope: dict, **properties) -> None:
    publish(broker.url(user), exchange, routing_key, orjson.dumps(envelope), content_type="application/json",
            delivery_mode=2, message_id=envelope["id"], correlation_id=envelope["correlation_id"],
            type=envelope["type"], **properties)


def dead_letters(broker, queue: str) -> list:
    found = []
    while (message := take(service_url(broker), queue)) is not None:
        found.append(message)
    return found


# --- T1 ---------------------------------------------------------------------------------------------


def event(type_: str, payload: dict, *, task_id: str | None = None) -> dict:
    envelope = command(type_, payload, task_id=task_id)
    envelope["actor"] = None
    return envelope


def test_t1_forged_events_change_nothing_and_are_dead_lettered_naming_their_publisher(secured, broker, origin):
    name, manifest, task_id = imported(secured, origin, broker.dc)
    with secured.client() as client:
        shown = client.get(f"/image/{name}/").json()["result"]
        status = client.get(f"/task/{task_id}/status/").json()
    state = next(e for e in stored_events(secured, type="image.imported")
                 if e["payload"]["image"]["uuid"] == manifest["uuid"])["payload"]
    forged_image = {**state["image"], "desc": "forged", "owner": "mallory", "dc_bound": broker.other_dc}
    made_up_task = tasks.new_task_id(user_id=1, owner_id=1, dc_id=1)
    forgeries = [
        event("image.updated", {"image": forged_image, "version": state["version"] + 1, "changed": ["desc"]}),
        event("image.deleted", {"uuid": manifest["uuid"], "name": name, "version": state["version"] + 1}),
        event("task.succeeded", {"task_id": task_id, "command": "image.import", "object_name": name,
                                 "http_code": 200, "result": {"forged": True}}, task_id=task_id),
        event("task.succeeded", {"task_id": made_up_task, "command": "image.import", "object_name": "ghost",
                                 "http_code": 200, "result": {}}, task_id=made_up_task),
    ]
    node_user, other = broker.names["NODE_PUBLISHER"], broker.names["PUBLISHER"]
    for forged in forgeries:
        # The found case: a user allowed only node.* publishes image and task bodies as node.updated.
        send(broker, node_user, "imagesvc.inventory", "node.updated", forged, user_id=node_user)
        # On the image routing keys the broker itself refuses them, to the node publisher and to a
        # user with no event rights alike.
        for user, exchange in ((node_user, "imagesvc.events"), (node_user, "imagesvc.inventory"),
                               (other, "imagesvc.events")):
            key = f"{forged['type']}.dc.{broker.dc}"
            with pytest.raises(pika.exceptions.AMQPError):
                send(broker, user, exchange, key, forged, user_id=user)

    refused: list = []

    def all_refused() -> list:
        refused.extend(dead_letters(broker, "projector.events.dlq"))
        assert len(refused) >= len(forgeries), f"{len(refused)} dead-lettered so far"
        return refused

    eventually(all_refused, timeout=30)
    assert sorted(orjson.loads(m.body)["id"] for m in refused) == sorted(f["id"] for f in forgeries)
    for message in refused:
        reason = message.properties.headers["x-imagesvc-death-reason"]
        assert reason.startswith("event refused:") and "routing key 'node.updated'" in reason, reason
        assert f"published by {node_user}" in reason, reason
    with secured.client() as client:
        assert client.get(f"/image/{name}/").json()["result"] == shown
        assert client.get(f"/task/{task_id}/status/").json() == status
        assert client.get(f"/task/{made_up_task}/status/").status_code == 404
        assert name in [i["name"] for i in client.get("/image/", params={"full": "true"}).json()["result"]]
        # The real owner's next command works (the forged deletion hid nothing).
        assert finished(client, accepted(client.put(f"/image/{name}/", json={"desc": "by the owner"}))).json()[
            "status"] == "SUCCESS"
        assert client.get(f"/image/{name}/").json()["result"]["desc"] == "by the owner"
    # What imagesvc stored records who published it: its own service user.
    mine = [e for e in stored_events(secured) if e["correlation_id"] == task_id]
    assert mine and {published_by(secured, e["id"]) for e in mine} == {broker.names["SERVICE_USER"]}


def published_by(system, message_id: str) -> str | None:
    from sqlalchemy import create_engine, select

    from imagesvc.shared.db.models import StoredEvent

    engine = create_engine(system.database_url)
    table = StoredEvent.__table__

    def marked() -> str:
        with engine.connect() as conn:
            value = conn.execute(select(table.c.published_by).where(table.c.message_id == message_id)).scalar()
        assert value is not None, "not marked published yet"
        return value

    try:
        return eventually(marked, timeout=15)
    finally:
        engine.dispose()


# --- T2 ---------------------------------------------------------------------------------------------


def test_t2_a_running_import_cannot_be_taken_over_by_reusing_its_task_id(secured, broker, origin, store_dir):
    content = os.urandom(2 * 1024 * 1024)
    name, manifest, task_id = import_image(secured, origin, broker.dc, content=content, pace=0.1)  # ~3 s
    publisher = broker.names["PUBLISHER"]
    attacks = [command("image.delete", {"name": name}, task_id=task_id),
               # The takeover found: the victim's name and task id look like its own interrupted
               # import, which a redelivery resumes (with the file URL of its own payload).
               command("image.import", {"name": name, "manifest_url": origin.add_manifest()[0],
                                        "dc": broker.dc}, task_id=task_id),
               command("image.update", {"name": name, "desc": "mine now"}, task_id=task_id)]
    for attack in attacks:
        attack["actor"] = {"user": publisher, "dc": broker.dc}
        send(broker, publisher, "imagesvc.commands", attack["type"], attack, user_id=publisher)
    with secured.client() as client:
        done = finished(client, task_id, timeout=60).json()
    assert done["status"] == "SUCCESS", done
    # Each attack was refused on its own: dead-lettered, no outcome, no event under the task.
    for queue, attack in zip(("deleter", "importer", "updater"), attacks):
        letters = eventually(lambda q=queue: _nonempty(dead_letters(broker, f"{q}.commands.dlq")), timeout=30)
        assert [orjson.loads(m.body)["id"] for m in letters] == [attack["id"]]
        assert letters[0].properties.headers["x-imagesvc-death-reason"] == (
            f"task id {task_id} belongs to another command")
        assert stored_events(secured, causation_id=attack["id"]) == []
    outcomes = [e for e in stored_events(secured, correlation_id=task_id)
                if e["type"] in ("task.succeeded", "task.failed")]
    assert [e["type"] for e in outcomes] == ["task.succeeded"]
    with secured.client() as client:
        image = client.get(f"/image/{name}/").json()["result"]
    assert image["desc"] != "mine now"
    assert hashlib.sha1((store_dir / manifest["uuid"] / "file").read_bytes()).hexdigest() == hashlib.sha1(
        content).hexdigest()


def _nonempty(items: list) -> list:
    assert items, "nothing yet"
    return items


# --- T3 ---------------------------------------------------------------------------------------------


def test_t3_each_subscriber_receives_its_datacenters_and_the_global_events_only(secured, broker, origin):
    second = broker.users[-1]
    second_password = uuid.uuid4().hex
    # The recipe's subscriber lines, run again for another datacenter ("repeat its lines").
    broker.run([broker.section("# An event subscriber")], SUBSCRIBER=second, SUBSCRIBER_PASSWORD=second_password,
               SUBSCRIBER_DC=broker.other_dc)
    subscribers = {broker.dc: broker.url(broker.names["SUBSCRIBER"]),
                   broker.other_dc: broker.url(second, second_password)}
    # A binding that could match another datacenter is refused by the broker.
    for url in subscribers.values():
        for key in ("#", "image.#", f"#.dc.{broker.other_dc if url == subscribers[broker.dc] else broker.dc}"):
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                _bind(url, key)
            assert refused.value.reply_code == 403
    taps = {dc: EventTap(url, "imagesvc.events", (f"#.dc.{dc}", "#.global")) for dc, url in subscribers.items()}
    try:
        tasks_by_scope = {}
        for scope in (broker.dc, broker.other_dc, None):
            name, manifest, task_id = imported(secured, origin, scope)
            tasks_by_scope[scope] = (name, manifest["uuid"], task_id)
        # A bound image moved to global is told to its old datacenter too.
        moving, _, _ = tasks_by_scope[broker.dc]
        with secured.client() as client:
            moved = accepted(client.put(f"/image/{moving}/", json={"dc_bound": False}))
            assert finished(client, moved).json()["status"] == "SUCCESS"

        def everything_arrived():
            for dc, tap in taps.items():
                seen = {e["correlation_id"] for e in tap.envelopes()}
                assert {tasks_by_scope[dc][2], tasks_by_scope[None][2]} <= seen, (dc, seen)
            assert moved in {e["correlation_id"] for e in taps[broker.dc].envelopes()}

        eventually(everything_arrived, timeout=30)
        for dc, tap in taps.items():
            other = broker.other_dc if dc == broker.dc else broker.dc
            _, other_uuid, other_task = tasks_by_scope[other]
            # (Once moved, the first image is global: its move is everybody's to see.)
            leaked = [e for e in tap.envelopes() if e["correlation_id"] != moved and (
                e["correlation_id"] == other_task or (e["payload"].get("image") or {}).get("uuid") == other_uuid)]
            assert leaked == [], f"{dc}'s subscriber got {other}'s events"
            assert all(m.properties.user_id == broker.names["SERVICE_USER"] for m in tap.messages())
        # The move reached prague's subscriber by its CC key, routed to the image's new scope.
        move = [m for m in taps[broker.dc].messages() if m.envelope["correlation_id"] == moved
                and m.envelope["type"] == "image.updated"]
        assert [m.routing_key for m in move] == ["image.updated.global"]
        assert move[0].envelope["payload"]["previous_dc_bound"] == broker.dc
    finally:
        for tap in taps.values():
            tap.close()


def _bind(url: str, key: str) -> None:
    connection = pika.URLParameters(url)
    with pika.BlockingConnection(connection) as conn:
        channel = conn.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, "imagesvc.events", routing_key=key)


# --- T4 ---------------------------------------------------------------------------------------------


def published(broker, envelope: dict, body: bytes | None = None) -> None:
    """Publish a command as the recipe's command publisher, acting as itself."""
    publisher = broker.names["PUBLISHER"]
    envelope["actor"] = {"user": publisher, "dc": broker.dc}
    if body is None:
        send(broker, publisher, "imagesvc.commands", envelope["type"], envelope, user_id=publisher)
    else:
        publish(broker.url(publisher), "imagesvc.commands", envelope["type"], body, content_type="application/json",
                delivery_mode=2, message_id=envelope["id"], correlation_id=envelope["correlation_id"],
                type=envelope["type"], user_id=publisher)


@pytest.mark.parametrize("case", ["15 MB body", "100,000 tags", "10,000-character fields", "5,000-digit numbers"])
def test_t4_commands_published_directly_meet_the_http_apis_limits(secured, broker, origin, case):
    name, _, _ = imported(secured, origin, broker.dc)
    if case == "15 MB body":
        envelope = command("image.update", {"name": name, "desc": "x" * (15 * 1024 * 1024)})
        expected = (400, "invalid_message")
    elif case == "100,000 tags":
        envelope = command("image.update", {"name": name, "tags": [f"t{i}" for i in range(100_000)]})
        expected = (400, "invalid", {"tags": ["Ensure this field has no more than 64 elements."]})
    elif case == "10,000-character fields":
        envelope = command("image.update", {"name": name, "desc": "d" * 10_000, "alias": "a" * 10_000})
        expected = (400, "invalid", {"alias": ["Ensure this value has at most 32 characters (it has 10000)."],
                                     "desc": ["Ensure this value has at most 128 characters (it has 10000)."]})
    else:
        envelope = command("image.update", {"name": name, "access": "9" * 5000})
        expected = (400, "invalid", {"access": ["Enter a whole number."]})
    published(broker, envelope)
    if case == "5,000-digit numbers":  # also as a JSON number: not JSON any parser here reads
        literal = command("image.update", {"name": name})
        published(broker, literal, body=orjson.dumps(literal).replace(b'"name"', b'"access": ' + b"9" * 5000 + b', "name"'))
        assert _outcome(secured, literal)["payload"]["code"] == "invalid_message"

    outcome = _outcome(secured, envelope)
    payload = outcome["payload"]
    assert (outcome["type"], payload["http_code"], payload["code"]) == ("task.failed", *expected[:2])
    if len(expected) > 2:
        assert payload["result"] == expected[2]
    with secured.client() as client:
        assert client.get(f"/image/{name}/").json()["result"]["desc"] != "x"
    # Refused at its first attempt: no retries before the outcome.
    assert '"attempt":2' not in _lines_about(secured, "updater", envelope["id"])


def _outcome(system, envelope: dict) -> dict:
    """The command's terminal task event (there must be exactly one)."""
    def ended():
        found = [e for e in stored_events(system, correlation_id=envelope["correlation_id"])
                 if e["type"] in ("task.succeeded", "task.failed")]
        assert found, "no outcome yet"
        return found

    outcome, = eventually(ended, timeout=30)
    return outcome


def _lines_about(system, process: str, message_id: str) -> str:
    return "\n".join(line for line in system.log(process).splitlines() if message_id in line)


def test_t4_junk_fills_a_bounded_dead_letter_queue_and_the_rest_is_logged(secured, broker):
    junk = 3 * DEAD_LETTER_MAX_LENGTH
    publisher = broker.names["PUBLISHER"]
    for n in range(junk):
        publish(broker.url(publisher), "imagesvc.commands", "image.import", b"not json %d" % n,
                content_type="application/json", delivery_mode=2, message_id=str(uuid.uuid4()), user_id=publisher)

    def all_handled():
        dropped = secured.log("importer").count('"message.dead_letter_dropped"')
        depth = _depth(broker, "importer.commands.dlq")
        assert depth + dropped >= junk, (depth, dropped)
        return depth, dropped

    depth, dropped = eventually(all_handled, timeout=60)
    # A quorum queue refuses publishes once it holds one message more than its limit.
    assert DEAD_LETTER_MAX_LENGTH <= depth <= DEAD_LETTER_MAX_LENGTH + 1 and depth + dropped == junk
    assert _depth(broker, "importer.commands") == 0
    dead_letters(broker, "importer.commands.dlq")  # leave it empty for the other tests


def test_t4_a_full_work_queue_refuses_publishes_and_drops_none_it_confirmed(secured, broker, origin):
    name, _, _ = imported(secured, origin, broker.dc)
    secured.kill("deleter")
    confirmed, refused = [], 0
    try:
        for _ in range(QUEUE_MAX_LENGTH + 20):
            envelope = command("image.delete", {"name": f"none-{uuid.uuid4().hex[:8]}"})
            try:
                published(broker, envelope)
                confirmed.append(envelope["correlation_id"])
            except pika.exceptions.NackError:
                refused += 1
        # (A quorum queue refuses publishes once it holds one message more than its limit.)
        assert QUEUE_MAX_LENGTH <= len(confirmed) <= QUEUE_MAX_LENGTH + 1 and len(confirmed) + refused == (
            QUEUE_MAX_LENGTH + 20)
        with secured.client() as client:
            answer = client.delete(f"/image/{name}/")
            assert answer.status_code == 503, answer.text  # not accepted, so never run
    finally:
        secured.start_worker("deleter")

    def every_confirmed_one_ended():
        ended = {e["correlation_id"] for e in stored_events(secured, type="task.failed")}
        missing = set(confirmed) - ended
        assert not missing, f"{len(missing)} confirmed commands have no outcome yet"

    eventually(every_confirmed_one_ended, timeout=60)
    with secured.client() as client:
        assert client.get(f"/image/{name}/").status_code == 200


def _depth(broker, queue: str) -> int:
    with pika.BlockingConnection(pika.URLParameters(service_url(broker))) as conn:
        return conn.channel().queue_declare(queue, passive=True).method.message_count


# --- docs/messages.md's example ----------------------------------------------------------------


def test_the_documented_publishing_example_runs_as_written(secured, broker, origin):
    name, _, _ = imported(secured, origin, "main")
    text = (Path(__file__).resolve().parents[2] / "docs" / "messages.md").read_text()
    example = re.search(r"<!-- publish-example -->\s*```python\n(.*?)```", text, re.S).group(1)
    ours = {"url": broker.url(broker.names["PUBLISHER"]), "user": broker.names["PUBLISHER"],
            "service_user": broker.names["SERVICE_USER"], "image": name}
    for variable, value in ours.items():  # the lines the example asks a reader to change
        example, count = re.subn(rf'^{variable} = "[^"]*"', f"{variable} = {value!r}", example, flags=re.M)
        assert count == 1, variable
    done = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    outcome, code, result = done.stdout.strip().split(" ", 2)
    assert (outcome, code) == ("task.succeeded", "200"), done.stdout
    assert isinstance(orjson.loads(result), dict)  # with an image store: the manifest rewrite's result
    with secured.client() as client:
        assert client.get(f"/image/{name}/").json()["result"]["desc"] == "new"


def test_a_task_id_a_program_chose_is_readable_by_its_user_only(secured, broker, origin):
    name, _, _ = imported(secured, origin, "main")
    envelope = command("image.update", {"name": name, "desc": "by the program"}, task_id=str(uuid.uuid4()))
    published(broker, envelope)
    _outcome(secured, envelope)
    path = f"/task/{envelope['correlation_id']}/status/"

    def answered(key: str):
        with secured.client(headers={"ES-API-KEY": key}) as client:
            return client.get(path)

    assert finished(secured.client(headers={"ES-API-KEY": secured.keys["publisher"]}),
                    envelope["correlation_id"]).json()["status"] == "SUCCESS"
    assert answered(secured.api_key).status_code == 200  # a SuperAdmin (Admin of every datacenter)
    assert (answered(secured.keys["nobody"]).status_code, answered(secured.keys["nobody"]).json()) == (
        403, {"detail": "Permission denied"})
