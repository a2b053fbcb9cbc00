"""The consumer runner's ack / retry / dead-letter policy, over kombu's memory:// transport (the
same code path the embedded mode uses; the RabbitMQ run of these rules is in tests/integration)."""

from __future__ import annotations

import io
import threading
import uuid

import orjson
import pytest
from kombu import Connection

from imagesvc.shared.broker.connection import connect
from imagesvc.shared.broker.consumer import ATTEMPT_HEADER, DEATH_REASON_HEADER, ORIGINAL_QUEUE_HEADER, ConsumerRunner, Disposition
from imagesvc.shared.broker.publisher import Publisher
from imagesvc.shared.broker.topology import build_topology
from imagesvc.shared.config import Settings
from imagesvc.shared.logging import configure_logging
from tests.support.polling import eventually

SETTINGS = Settings(broker_url="memory://")


class Handler:
    def __init__(self, verdicts):
        self.verdicts = list(verdicts)
        self.attempts: list[int] = []
        self.publishers: list[str | None] = []
        self.routing_keys: list[str | None] = []
        self.gave_up: list[str] = []

    def __call__(self, delivery):
        self.attempts.append(delivery.attempt)
        self.publishers.append(delivery.publisher)
        self.routing_keys.append(delivery.routing_key)
        verdict = self.verdicts.pop(0) if self.verdicts else Disposition.ack()
        if isinstance(verdict, Exception):
            raise verdict
        return verdict

    def on_give_up(self, delivery, reason):
        self.gave_up.append(reason)


@pytest.fixture
def harness():
    topology = build_topology(f"u{uuid.uuid4().hex[:8]}.", quorum=False)
    publisher = Publisher(lambda: connect(SETTINGS, "test"), size=2, timeout=2)
    runners = []

    def start(handler, max_attempts=3, identity=None, threads=2, prefetch=4, through=None):
        runner = ConsumerRunner(name="test", connect=lambda: connect(SETTINGS, "runner"),
                                queue=topology.command_queues["updater"], topology=topology, handler=handler,
                                publisher=through(publisher, topology) if through else publisher, prefetch=prefetch,
                                threads=threads, max_attempts=max_attempts,
                                backoff=(0.01, 0.02), idle_timeout=0.05, identity=identity)
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        assert runner.ready.wait(5)
        runners.append((runner, thread))
        return runner

    def send(body=b'{"x": 1}', message_id=None, correlation_id="task-1", **extra):
        message_id = message_id or str(uuid.uuid4())
        publisher.publish(exchange=topology.commands.name, routing_key="image.update", body=body,
                          message_id=message_id, message_type="image.update", correlation_id=correlation_id,
                          **extra)
        return message_id

    def dead_letters():
        name = topology.dead_letter_queues[topology.command_queues["updater"].name].name
        found = []
        with Connection("memory://") as conn:
            queue = conn.SimpleQueue(name)
            while True:
                try:
                    message = queue.get(block=False)
                except queue.Empty:
                    break
                message.ack()
                found.append(message)
        return found

    yield start, send, dead_letters
    for runner, thread in runners:
        runner.stop()
        thread.join(5)
    publisher.close()


def test_a_handled_message_is_acknowledged_once(harness):
    start, send, dead_letters = harness
    handler = Handler([Disposition.ack()])
    runner = start(handler)
    send()
    eventually(lambda: _equal(runner.handled, 1))
    assert handler.attempts == [1]
    assert dead_letters() == []


def test_retries_carry_an_attempt_count_until_the_handler_succeeds(harness):
    start, send, dead_letters = harness
    handler = Handler([Disposition.retry("busy"), RuntimeError("boom")])
    runner = start(handler)
    send()
    eventually(lambda: _equal(handler.attempts, [1, 2, 3]))
    eventually(lambda: _equal(runner.handled, 3))
    assert dead_letters() == [] and handler.gave_up == []


def test_after_the_last_attempt_the_message_is_dead_lettered_with_its_reason(harness):
    start, send, dead_letters = harness
    handler = Handler([Disposition.retry("db down")] * 10)
    start(handler, max_attempts=3)
    message_id = send(body=b'{"keep": "me"}')
    found = eventually(lambda: _nonempty(dead_letters()))
    assert handler.attempts == [1, 2, 3]
    assert len(found) == 1
    dead = found[0]
    assert dead.body == b'{"keep": "me"}' and dead.properties["message_id"] == message_id
    assert dead.headers[DEATH_REASON_HEADER].startswith("gave up after 3 attempts: db down")
    assert dead.headers[ORIGINAL_QUEUE_HEADER].endswith("updater.commands") and dead.headers[ATTEMPT_HEADER] == 3
    assert len(handler.gave_up) == 1


def test_dead_letter_verdicts_skip_the_retries(harness):
    start, send, dead_letters = harness
    handler = Handler([Disposition.dead_letter("poison")])
    start(handler)
    send()
    found = eventually(lambda: _nonempty(dead_letters()))
    assert handler.attempts == [1] and found[0].headers[DEATH_REASON_HEADER] == "poison"
    assert handler.gave_up == []


def test_each_handled_message_logs_one_line_with_its_ids(harness):
    start, send, _ = harness
    stream = io.StringIO()
    configure_logging("test", fmt="json", stream=stream)
    try:
        runner = start(Handler([]))
        message_id = send()
        eventually(lambda: _equal(runner.handled, 1))
        lines = [orjson.loads(line) for line in stream.getvalue().splitlines() if "message.handled" in line]
        assert len(lines) == 1
        assert lines[0]["message_id"] == message_id and lines[0]["task_id"] == "task-1"
        assert lines[0]["outcome"] == "ack" and lines[0]["consumer"] == "test"
    finally:
        configure_logging("test", fmt="console")


def test_every_line_logged_while_a_message_is_handled_carries_its_task_and_correlation_ids(harness):
    """The handler's own lines and a library's (stdlib logging) carry the ids the runner bound,
    and the next message's lines carry only its own."""
    import logging

    from imagesvc.shared.logging import get_logger

    start, send, _ = harness
    stream = io.StringIO()
    configure_logging("test", fmt="json", stream=stream)

    class Chatty(Handler):
        def __call__(self, delivery):
            get_logger("handler").info("handler.step", step=1)
            logging.getLogger("some.library").warning("library says something")
            return super().__call__(delivery)

    try:
        runner = start(Chatty([]), threads=1)
        first = send(correlation_id="task-a")
        second = send(correlation_id="task-b")
        eventually(lambda: _equal(runner.handled, 2))
        lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
        during = [line for line in lines if line["event"] in ("handler.step", "library says something",
                                                               "message.handled")]
        assert len(during) == 6, lines
        for line in during:
            assert (line.get("message_id"), line.get("task_id"), line.get("correlation_id")) in (
                (first, "task-a", "task-a"), (second, "task-b", "task-b")), line
        assert {line["message_id"] for line in during} == {first, second}
    finally:
        configure_logging("test", fmt="console")


def _equal(actual, expected):
    assert actual == expected, actual
    return actual


def _nonempty(items):
    assert items, "nothing yet"
    return items


def test_the_publisher_is_the_brokers_user_id_and_survives_a_retry(harness):
    """(memory:// does not validate ``user_id``; RabbitMQ does, which is what makes it worth reading.)"""
    from imagesvc.shared.broker.consumer import PUBLISHED_BY_HEADER, BrokerIdentity

    start, send, _ = harness
    handler = Handler([Disposition.retry("busy")])
    runner = start(handler, identity=BrokerIdentity(own="svc", services=frozenset({"svc"})))
    send(user_id="prog")
    eventually(lambda: _equal(runner.handled, 2))
    # The retried copy was published by the service (user_id svc), naming the original publisher.
    assert handler.publishers == ["prog", "prog"]
    # Only a service's copy is believed about who published the original.
    send(user_id="prog", headers={PUBLISHED_BY_HEADER: "root"})
    send(user_id="svc", headers={PUBLISHED_BY_HEADER: "ops"})
    send()
    eventually(lambda: _equal(runner.handled, 5))
    assert sorted(handler.publishers[2:], key=str) == sorted(["prog", "ops", None], key=str)  # handled in parallel


def test_a_retried_copy_of_a_message_nobody_vouched_for_stays_unvouched(harness):
    from imagesvc.shared.broker.consumer import BrokerIdentity

    start, send, _ = harness
    handler = Handler([Disposition.retry("busy")])
    runner = start(handler, identity=BrokerIdentity(own="svc", services=frozenset({"svc"})))
    send()  # no user_id: the broker vouches for nobody
    eventually(lambda: _equal(runner.handled, 2))
    assert handler.publishers == [None, None]  # the copy came from "svc", but names nobody


def test_a_retried_copy_keeps_the_routing_key_of_the_original(harness):
    """The copy reaches the queue by its name; consumers that check routing keys still see the original."""
    start, send, _ = harness
    handler = Handler([Disposition.retry("busy")])
    runner = start(handler)
    send()
    eventually(lambda: _equal(runner.handled, 2))
    assert handler.routing_keys == ["image.update", "image.update"]


class FullDeadLetterQueue:
    """The runner's publisher, except that the dead-letter exchange nacks (its queue is full)."""

    def __init__(self, publisher, topology):
        self._publisher, self._dlx, self.refused = publisher, topology.dlx.name, []

    def publish(self, **message):
        from imagesvc.shared.errors import Nacked

        if message["exchange"] == self._dlx:
            self.refused.append(message["message_id"])
            raise Nacked("the broker nacked a message (a full queue refuses publishes)")
        self._publisher.publish(**message)


def test_a_dead_letter_its_full_queue_refuses_is_logged_whole_enough_and_acked(harness):
    """Bounded dead-letter queues: junk cannot grow them without end, and what they refuse is
    logged (the message's task has its outcome already), not retried forever."""
    start, send, dead_letters = harness
    stream = io.StringIO()
    configure_logging("test", fmt="json", stream=stream)
    publishers = []
    try:
        runner = start(Handler([Disposition.dead_letter("poison")]),
                       through=lambda publisher, topology: publishers.append(
                           FullDeadLetterQueue(publisher, topology)) or publishers[-1])
        message_id = send(body=b'{"junk": true}')
        eventually(lambda: _equal(runner.handled, 1))
        assert publishers[0].refused == [message_id] and dead_letters() == []
        dropped = [orjson.loads(line) for line in stream.getvalue().splitlines() if "dead_letter_dropped" in line]
        assert len(dropped) == 1
        assert (dropped[0]["message_id"], dropped[0]["reason"], dropped[0]["body"]) == (
            message_id, "poison", '{"junk": true}')
        assert dropped[0]["level"] == "error"
    finally:
        configure_logging("test", fmt="console")


def test_a_deferred_message_comes_back_with_its_attempt_count_and_is_never_given_up(harness):
    """Deferred more often than ``max_attempts``: still attempt 1, not dead-lettered, then handled."""
    start, send, dead_letters = harness
    handler = Handler([Disposition.defer("user at cap", 0.01)] * 4)
    runner = start(handler, max_attempts=3)
    send(body=b'{"keep": "me"}')
    eventually(lambda: _equal(runner.handled, 5))
    assert handler.attempts == [1] * 5
    assert dead_letters() == [] and handler.gave_up == []


def test_a_deferred_copy_goes_behind_the_messages_already_queued(harness):
    """A single worker thread: the first message is deferred while the others wait; its copy is
    handled after them."""
    start, send, _ = harness
    order: list[str] = []
    queued = threading.Event()

    def verdict(delivery):
        order.append(delivery.message_id)
        if delivery.message_id == "m1" and order.count("m1") == 1:
            assert queued.wait(5)  # m2 and m3 are in the queue before m1 is deferred
            return Disposition.defer("user at cap", 0.0)
        return Disposition.ack()

    runner = start(verdict, threads=1, prefetch=1)
    for message_id in ("m1", "m2", "m3"):
        send(message_id=message_id)
    queued.set()
    eventually(lambda: _equal(runner.handled, 4))
    assert order == ["m1", "m2", "m3", "m1"]
