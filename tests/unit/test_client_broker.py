"""``imagesvc.client.broker`` without a broker: binding keys, the identity fields of the messages it
builds, the confirm outcomes of a publish, and how a subscription screens deliveries (forged,
duplicate, undecodable, unknown) before anybody sees them. Fake channels stand in for RabbitMQ;
tests/e2e/test_client_broker.py runs the same code against a real one."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections import defaultdict
from types import SimpleNamespace
from typing import Any, Callable

import orjson
import pytest
from amqp.exceptions import AccessRefused, PreconditionFailed

from imagesvc.client.broker import (
    Broker, BrokerError, ConfirmTimeout, IdentityRefused, Nacked, PublishRefused, Received, Screen, Subscription,
    Unroutable, binding_keys)
from imagesvc.client.errors import ImagesvcError
from imagesvc.shared import contracts
from imagesvc.shared.contracts import (
    Actor, CreateImageFromSnapshot, ImageImported, ImportImage, TaskProgress, TaskSucceeded, UpdateImage)

URL = "amqp://ops:secret@rabbit.example.com:5672/imagesvc"


# --- binding keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("types", "datacenters", "include_global", "keys"), [
    (("image.#", "task.#"), None, True, ("image.#", "task.#")),
    (["task.succeeded", "task.failed"], None, True, ("task.succeeded.#", "task.failed.#")),
    ("#", None, True, ("#",)),
    ("image.*", None, True, ("image.*.#",)),
    (("image.#",), ["main", "prague"], True, ("image.#.dc.main", "image.#.dc.prague", "image.#.global")),
    (("image.#", "task.succeeded"), ["main"], False, ("image.#.dc.main", "task.succeeded.dc.main")),
    ("#", [], True, ("#.global",)),
    ("#", ["my.dc", "ü"], False, ("#.dc.my%2Edc", "#.dc.%C3%BC")),
    (("task.#", "task.#"), ["main", "main"], True, ("task.#.dc.main", "task.#.global")),
])
def test_binding_keys_are_event_types_by_scopes(types, datacenters, include_global, keys):
    assert binding_keys(types, datacenters, include_global=include_global) == keys


@pytest.mark.parametrize(("types", "datacenters", "include_global", "problem"), [
    ((), None, True, "no event types"),
    (("",), None, True, "non-empty words"),
    (("image..updated",), None, True, "non-empty words"),
    (("node.#",), None, True, "inventory exchange"),
    (("vm.updated",), None, True, "inventory exchange"),
    (("#",), [], False, "no scope"),
    (("#",), [""], True, "non-empty strings"),
    (("x" * 254,), None, True, "255 bytes"),
])
def test_binding_keys_refuse_what_cannot_match_an_event(types, datacenters, include_global, problem):
    with pytest.raises(ValueError, match=problem):
        binding_keys(types, datacenters, include_global=include_global)


# --- the identity of a command ------------------------------------------------------------------------


def test_a_command_acts_as_the_urls_broker_user_and_says_so_in_user_id():
    broker = Broker(URL, prefix="t1234.")  # no I/O until opened
    outgoing = broker.prepare(UpdateImage(name="centos-7", desc="patched"), dc="main", task_id="my-task:1",
                              message_id="m-1")
    envelope = outgoing.envelope
    assert envelope.actor == Actor(user="ops", dc="main")
    assert (envelope.id, envelope.type, envelope.correlation_id, envelope.causation_id, envelope.reply_to) == (
        "m-1", "image.update", "my-task:1", None, None)
    assert envelope.payload == {"name": "centos-7", "desc": "patched"}  # absent fields stay absent
    assert (outgoing.exchange, outgoing.routing_key) == ("t1234.imagesvc.commands", "image.update")
    assert outgoing.properties == {"delivery_mode": 2, "message_id": "m-1", "correlation_id": "my-task:1",
                                   "type": "image.update", "user_id": "ops"}
    assert (outgoing.task_id, outgoing.message_id) == ("my-task:1", "m-1")
    # The body is the contract's own encoding, read back by the consumers' decoder.
    assert outgoing.body == contracts.encode(envelope)
    assert contracts.decode(outgoing.body).to_dict() == envelope.to_dict()


def test_fresh_ids_are_uuids_and_differ_per_command():
    broker = Broker(URL)
    first, second = (broker.prepare(ImportImage(name="a", manifest_url="https://x/images/1")) for _ in range(2))
    for outgoing in (first, second):
        uuid.UUID(outgoing.task_id), uuid.UUID(outgoing.message_id)
        assert outgoing.envelope.actor == Actor(user="ops", dc=None)
        assert outgoing.exchange == "imagesvc.commands"  # no prefix: production's names
    assert first.task_id != second.task_id and first.message_id != second.message_id


def test_user_names_the_actor_and_the_user_id_together():
    outgoing = Broker(URL, user="someone").prepare(UpdateImage(name="a"))
    assert outgoing.envelope.actor.user == outgoing.properties["user_id"] == "someone"
    quoted = Broker("amqp://ops%40corp:p%2Fw@rabbit/imagesvc").prepare(UpdateImage(name="a"))
    assert quoted.envelope.actor.user == quoted.properties["user_id"] == "ops@corp"


def test_a_node_command_goes_to_its_nodes_key():
    broker = Broker(URL, prefix="p.")
    snapshot = CreateImageFromSnapshot(name="web01-daily", vm=str(uuid.uuid4()), snapshot="daily")
    outgoing = broker.prepare(snapshot, node="cn01.example.com")
    assert (outgoing.exchange, outgoing.routing_key) == ("p.imagesvc.commands", "image.snapshot@cn01.example.com")
    assert outgoing.properties["type"] == "image.snapshot"
    with pytest.raises(ValueError, match="node="):
        broker.prepare(snapshot)
    with pytest.raises(ValueError, match="node:"):
        broker.prepare(snapshot, node="no spaces please")
    with pytest.raises(ValueError, match="not a node command"):
        broker.prepare(UpdateImage(name="a"), node="cn01")


@pytest.mark.parametrize(("options", "error", "problem"), [
    ({"task_id": ""}, ValueError, "task id"),
    ({"task_id": "x" * 129}, ValueError, "task id"),
    ({"task_id": "has space"}, ValueError, "task id"),
    ({"dc": "d" * 17}, ValueError, "would not read"),
])
def test_ids_and_names_imagesvc_would_not_read_are_refused_before_sending(options, error, problem):
    with pytest.raises(error, match=problem):
        Broker(URL).prepare(UpdateImage(name="a"), **options)


def test_only_commands_and_only_rabbitmq():
    event = TaskSucceeded(task_id="t", command="image.update", object_name="a")
    with pytest.raises(TypeError, match="command"):
        Broker(URL).prepare(event)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="memory://"):
        Broker("memory://")
    with pytest.raises(ValueError, match="service_users"):
        Broker(URL, service_users=())


# --- publishing, against a fake channel --------------------------------------------------------------


class FakeChannel:
    """Records publishes; ``answer`` decides what the broker says back when the caller next reads."""

    def __init__(self, connection: "FakeConnection"):
        self.connection = connection
        self.events: defaultdict[str, set] = defaultdict(set)
        self.published: list[tuple[Any, str, str, bool]] = []
        self.acked: list[int] = []
        self.rejected: list[tuple[int, bool]] = []
        self.confirming = False
        self.closed = False

    def confirm_select(self) -> None:
        self.confirming = True

    def prepare_message(self, body, content_type=None, content_encoding=None, properties=None):
        return SimpleNamespace(body=body, content_type=content_type, content_encoding=content_encoding,
                               properties=dict(properties or {}))

    def basic_publish(self, message, exchange, routing_key, mandatory):
        self.published.append((message, exchange, routing_key, mandatory))
        tag = len(self.published)
        self.connection.pending.append(lambda: self.connection.answer(self, message, tag))

    def basic_ack(self, tag):
        self.acked.append(tag)

    def basic_reject(self, tag, requeue):
        self.rejected.append((tag, requeue))

    def close(self):
        self.closed = True


class FakeConnection:
    def __init__(self, answer: Callable[[FakeChannel, Any, int], None]):
        self.answer = answer
        self.pending: list[Callable[[], None]] = []
        self.channels: list[FakeChannel] = []

    def channel(self) -> FakeChannel:
        self.channels.append(FakeChannel(self))
        return self.channels[-1]

    def drain_events(self, timeout):
        while self.pending:
            self.pending.pop(0)()

    def heartbeat_check(self):
        pass


def connected(answer, **options) -> Broker:
    broker = Broker(URL, heartbeat=0, **options)
    broker._connection = FakeConnection(answer)  # what open() would have made
    return broker


def ack(channel, _message, tag):
    for handler in channel.events["basic_ack"]:
        handler(tag, False)


def test_publish_returns_once_confirmed_with_the_prepared_message():
    broker = connected(ack)
    task_id = broker.publish(UpdateImage(name="a", desc="b"), dc="main", task_id="t-1")
    assert task_id == "t-1"
    channel, = broker._connection.channels
    assert channel.confirming
    (message, exchange, routing_key, mandatory), = channel.published
    assert (exchange, routing_key, mandatory) == ("imagesvc.commands", "image.update", True)
    assert (message.content_type, message.content_encoding) == ("application/json", "utf-8")
    assert message.properties["user_id"] == "ops" and message.properties["delivery_mode"] == 2
    assert orjson.loads(message.body)["actor"] == {"user": "ops", "dc": "main"}
    broker.publish(UpdateImage(name="a"))  # the channel stays in use
    assert len(broker._connection.channels) == 1 and len(channel.published) == 2


def test_a_nack_a_return_and_silence_are_errors_naming_the_command():
    def nack(channel, _message, tag):
        for handler in channel.events["basic_nack"]:
            handler(tag, False)

    def returned(channel, message, tag):
        for handler in channel.events["basic_return"]:
            handler(None, "imagesvc.commands", "image.update", message)
        ack(channel, message, tag)

    with pytest.raises(Nacked) as nacked:
        connected(nack).publish(UpdateImage(name="a"), task_id="t-nack")
    assert nacked.value.task_id == "t-nack" and isinstance(nacked.value, (BrokerError, ImagesvcError))
    with pytest.raises(Unroutable):
        connected(returned).publish(UpdateImage(name="a"))
    silent = connected(lambda *_: None, confirm_timeout=0.05)
    with pytest.raises(ConfirmTimeout) as timed_out:
        silent.publish(UpdateImage(name="a"), message_id="m-9")
    assert timed_out.value.message_id == "m-9" and isinstance(timed_out.value, TimeoutError)
    assert silent._connection.channels[0].closed  # its late confirm would go unheard: a new channel next time


def test_a_channel_the_broker_closed_over_a_publish_is_a_refusal():
    def refuse(error):
        def answer(_channel, _message, _tag):
            raise error
        return answer

    mismatch = "PRECONDITION_FAILED - user_id property set to 'root' but authenticated user was 'ops'"
    identity = connected(refuse(PreconditionFailed(reply_text=mismatch)), user="root")
    with pytest.raises(IdentityRefused) as refused:
        identity.publish(UpdateImage(name="a"))
    assert refused.value.reply_code == 406 and identity._publishing is None
    with pytest.raises(PublishRefused) as denied:
        denied_write = AccessRefused(reply_text="ACCESS_REFUSED - write access denied")
        connected(refuse(denied_write)).publish(UpdateImage(name="a"))
    assert not isinstance(denied.value, IdentityRefused) and denied.value.reply_code == 403


# --- screening deliveries -----------------------------------------------------------------------------


def event_body(message=None, *, message_id: str | None = None, task_id: str = "t-1") -> bytes:
    message = message or TaskSucceeded(task_id=task_id, command="image.update", object_name="a", dc="main")
    return contracts.encode(contracts.wrap(message, correlation_id=task_id, message_id=message_id))


def test_the_screen_believes_service_users_only():
    screen = Screen(("imagesvc", "imagesvc-2"))
    assert screen.judge(event_body(), "imagesvc").action == "deliver"
    assert screen.judge(event_body(), "imagesvc-2").action == "deliver"
    forged = screen.judge(event_body(), "ops")
    assert (forged.action, forged.envelope) == ("reject", None)  # not even decoded
    assert "'ops' is not one of imagesvc's service users" in forged.reason
    assert screen.judge(event_body(), None).action == "reject"


def test_the_screen_skips_duplicates_junk_and_what_this_version_does_not_know():
    screen = Screen(("imagesvc",))
    first = screen.judge(event_body(message_id="e-1"), "imagesvc")
    assert first.action == "deliver" and isinstance(first.event, TaskSucceeded)
    assert (screen.judge(event_body(message_id="e-1"), "imagesvc").action,
            screen.judge(event_body(message_id="e-1"), "imagesvc").reason) == ("ack", "duplicate")
    unknown = orjson.loads(event_body())
    unknown["type"] = "image.teleported"
    for body in (b"not json", b"[]", orjson.dumps(unknown),
                 contracts.encode(contracts.wrap(UpdateImage(name="a"), correlation_id="t"))):
        verdict = screen.judge(body, "imagesvc")
        assert verdict.action == "ack" and verdict.reason, body
    screen.forget("e-1")
    assert screen.judge(event_body(message_id="e-1"), "imagesvc").action == "deliver"


def test_the_duplicate_memory_is_bounded():
    screen = Screen(("imagesvc",), memory=3)
    for n in range(5):
        assert screen.judge(event_body(message_id=f"e-{n}"), "imagesvc").action == "deliver"
    assert screen.judge(event_body(message_id="e-4"), "imagesvc").action == "ack"
    assert screen.judge(event_body(message_id="e-0"), "imagesvc").action == "deliver"  # forgotten
    assert len(screen._seen) == 3


class FakeOwner:
    """What a Subscription needs of its Broker: the lock and a connection to read (nothing arrives)."""

    def __init__(self):
        self._lock = threading.RLock()
        self._generation = 1
        self.forgotten: list[Subscription] = []

    def _pump(self, _timeout):
        pass

    def _forget(self, subscription):
        self.forgotten.append(subscription)


def delivery(body: bytes, user_id: str | None, tag: int, routing_key: str = "task.succeeded.dc.main",
             redelivered: bool = False):
    properties = {"user_id": user_id} if user_id else {}
    return SimpleNamespace(body=body, properties=properties,
                           delivery_info={"delivery_tag": tag, "routing_key": routing_key, "redelivered": redelivered})


def subscription() -> tuple[Subscription, FakeChannel]:
    channel = FakeChannel(FakeConnection(ack))
    made = Subscription(FakeOwner(), channel, "amq.gen-1", ("task.#",), Screen(("imagesvc",)),  # type: ignore[arg-type]
                        timeout=0)
    return made, channel


def test_a_subscription_yields_believable_events_once_and_settles_the_rest_itself():
    events, channel = subscription()
    deliveries = [
        delivery(event_body(message_id="forged"), "ops", 1),                         # rejected, never seen
        delivery(event_body(message_id="good"), "imagesvc", 2),                      # yielded
        delivery(event_body(message_id="good"), "imagesvc", 3),                      # duplicate: acked
        delivery(b"{", "imagesvc", 4),                                                # junk: acked
        delivery(event_body(ImageImported(image={"uuid": "u", "dc_bound": None}, version=1), message_id="img"),
                 "imagesvc", 5, routing_key="image.imported.global", redelivered=True),
    ]
    for message in deliveries:
        events._arrive(message)
    received = list(events)  # timeout 0: what has arrived
    assert [r.envelope.id for r in received] == ["good", "img"]
    assert channel.rejected == [(1, False)] and channel.acked == [3, 4]
    good, image = received
    assert (good.routing_key, good.redelivered, good.publisher) == ("task.succeeded.dc.main", False, "imagesvc")
    assert isinstance(image.event, ImageImported) and image.redelivered
    assert image.event.stream_position() == ("image:u", 1)
    good.ack()
    image.reject()
    assert channel.acked == [3, 4, 2] and channel.rejected == [(1, False), (5, False)]
    with pytest.raises(RuntimeError, match="already"):
        good.ack()


def test_a_requeued_event_comes_back_as_itself_not_as_a_duplicate():
    events, channel = subscription()
    events._arrive(delivery(event_body(message_id="again"), "imagesvc", 1))
    first: Received = events.get(0)
    first.reject(requeue=True)
    events._arrive(delivery(event_body(message_id="again"), "imagesvc", 2, redelivered=True))
    second = events.get(0)
    assert second is not None and second.envelope.id == "again" and second.redelivered
    assert channel.rejected == [(1, True)]


def test_a_closed_subscription_says_so():
    events, _ = subscription()
    with events:
        assert events.get(0) is None
    assert events._owner.forgotten == [events]
    with pytest.raises(BrokerError, match="closed"):
        events.get(0)


def test_progress_events_keep_their_numbers():
    events, _ = subscription()
    progress = TaskProgress(task_id="t", command="image.import", object_name="a", done=10, total=None)
    events._arrive(delivery(event_body(progress, message_id="p"), "imagesvc", 1, routing_key="task.progress.global"))
    received = events.get(0)
    assert isinstance(received.event, TaskProgress) and (received.event.done, received.event.total) == (10, None)


# --- what importing it costs ----------------------------------------------------------------------------


def test_importing_the_sdks_broker_half_loads_no_server_machinery():
    code = ("import sys, imagesvc.client.broker; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'sqlalchemy', 'starlette', 'uvicorn', 'psycopg', 'alembic'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
