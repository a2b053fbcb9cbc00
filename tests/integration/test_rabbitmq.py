"""Integration tests of ``shared.broker`` against a real RabbitMQ.

Every test declares its own topology under a random prefix and deletes it afterwards. What the
broker holds is checked with pika, an independent client, so a test does not trust the code under
test to report on itself. Queue depths are read with a passive declare, which counts *ready*
messages only: a test stops its consumer (closing its connection, so anything unacked would
return to the queue) before it asserts a queue is empty.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
import uuid
from typing import Any, Callable, Iterator

import orjson
import pika
import pytest
from amqp.exceptions import PreconditionFailed
from kombu import Connection

from imagesvc.shared.broker.connection import connect
from imagesvc.shared.broker.consumer import (
    ATTEMPT_HEADER,
    DEATH_REASON_HEADER,
    ORIGINAL_QUEUE_HEADER,
    ConsumerRunner,
    Delivery,
    Disposition,
)
from imagesvc.shared.broker.notifications import NotificationListener, TaskNotifier
from imagesvc.shared.broker.publisher import Outgoing, Publisher
from imagesvc.shared.broker.topology import Topology, build_topology
from imagesvc.shared.config import Settings
from imagesvc.shared.errors import PublishFailed, Unroutable
from tests.support.polling import eventually
from tests.support.services import delete_queues

pytestmark = pytest.mark.rabbitmq

COMMAND = "image.import"  # routed to the importer's command queue


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def topology(rabbitmq_url: str) -> Iterator[Topology]:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    topology = build_topology(prefix=prefix)
    try:
        with Connection(rabbitmq_url, connect_timeout=5) as conn:
            topology.declare(conn.channel())
        yield topology
    finally:
        delete_queues(rabbitmq_url, prefix)


@pytest.fixture
def settings(rabbitmq_url: str) -> Settings:
    return Settings(broker_url=rabbitmq_url, publish_timeout=5.0)


@pytest.fixture
def publisher(settings: Settings) -> Iterator[Publisher]:
    publisher = Publisher(lambda: connect(settings, "test-publisher"), timeout=settings.publish_timeout,
                          heartbeat=settings.heartbeat)
    yield publisher
    publisher.close()


@contextlib.contextmanager
def pika_channel(url: str) -> Iterator[Any]:
    # kombu spells the default vhost "//", pika "%2F": take the parts from kombu's parser.
    info = Connection(url).info()
    params = pika.ConnectionParameters(
        host=info["hostname"], port=info["port"], virtual_host=info["virtual_host"],
        credentials=pika.PlainCredentials(info["userid"], info["password"]),
        socket_timeout=5, blocked_connection_timeout=5,
    )
    connection = pika.BlockingConnection(params)
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def ready_count(url: str, queue: str) -> int:
    with pika_channel(url) as ch:
        return ch.queue_declare(queue=queue, passive=True).method.message_count


def get_one(url: str, queue: str):
    """Take (and ack) one message with pika; (method, properties, body) or fail."""
    with pika_channel(url) as ch:
        method, properties, body = ch.basic_get(queue=queue, auto_ack=True)
    assert method is not None, f"no message on {queue}"
    return method, properties, body


def text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def send(publisher: Publisher, topology: Topology, **overrides: Any) -> dict[str, Any]:
    message = {
        "exchange": topology.commands.name,
        "routing_key": COMMAND,
        "body": orjson.dumps({"n": uuid.uuid4().hex}),
        "message_id": str(uuid.uuid4()),
        "correlation_id": "task-" + uuid.uuid4().hex[:8],
        "message_type": COMMAND,
        **overrides,
    }
    publisher.publish(**message)
    return message


class StallingProxy:
    """A TCP proxy to RabbitMQ whose ``stall()`` freezes the connections open at that moment:
    bytes stop flowing both ways but no socket is closed, like a paused broker or a network that
    silently drops packets. Connections made afterwards flow normally. ``close()`` unblocks all."""

    def __init__(self, target: tuple[str, int]):
        self._target = target
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._pipes: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, name="stalling-proxy", daemon=True).start()

    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def stall(self) -> None:
        with self._lock:
            for _client, _upstream, stalled in self._pipes:
                stalled.set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                return
            stalled = threading.Event()
            with self._lock:
                self._pipes.append((client, upstream, stalled))
            threading.Thread(target=self._pipe, args=(client, upstream, stalled), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, stalled: threading.Event) -> None:
        peer = {a: b, b: a}
        while not self._closed.is_set():
            if stalled.is_set():
                self._closed.wait(0.05)
                continue
            try:
                readable, _, _ = select.select([a, b], [], [], 0.05)
                for sock in readable:
                    if stalled.is_set():
                        break
                    data = sock.recv(65536)
                    if not data:
                        a.close()
                        b.close()
                        return
                    peer[sock].sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            socks = [self._server, *(s for client, upstream, _ in self._pipes for s in (client, upstream))]
        for sock in socks:
            try:
                sock.close()
            except OSError:
                pass


@pytest.fixture
def proxy(rabbitmq_url: str) -> Iterator[StallingProxy]:
    info = Connection(rabbitmq_url).info()
    proxy = StallingProxy((info["hostname"], info["port"]))
    yield proxy
    proxy.close()


class Recorder:
    """A handler that records every delivery and answers with ``verdict(delivery)``."""

    def __init__(self, verdict: Callable[[Delivery], Disposition]):
        self._verdict = verdict
        self._lock = threading.Lock()
        self.calls: list[Delivery] = []
        self.gave_up: list[tuple[Delivery, str]] = []

    def __call__(self, delivery: Delivery) -> Disposition:
        with self._lock:
            self.calls.append(delivery)
        return self._verdict(delivery)

    def on_give_up(self, delivery: Delivery, reason: str) -> None:
        with self._lock:
            self.gave_up.append((delivery, reason))


@contextlib.contextmanager
def running(runner: ConsumerRunner) -> Iterator[ConsumerRunner]:
    thread = threading.Thread(target=runner.run, name=f"test-{runner.name}", daemon=True)
    thread.start()
    try:
        assert runner.ready.wait(15), "consumer never became ready"
        yield runner
    finally:
        runner.stop()
        thread.join(timeout=20)
        assert not thread.is_alive(), "consumer runner did not stop"


def make_runner(settings: Settings, topology: Topology, handler, publisher: Publisher, *,
                connect_fn: Callable[[], Connection] | None = None, **kwargs: Any) -> ConsumerRunner:
    return ConsumerRunner(
        name="importer",
        connect=connect_fn or (lambda: connect(settings, "test-consumer")),
        queue=topology.command_queues["importer"],
        topology=topology,
        handler=handler,
        publisher=publisher,
        **kwargs,
    )


# --- topology ----------------------------------------------------------------------------------


def test_declare_is_idempotent_and_queues_are_bound(rabbitmq_url: str, topology: Topology):
    with Connection(rabbitmq_url, connect_timeout=5) as conn:
        channel = conn.channel()
        topology.declare(channel)
        topology.declare(channel)
    with Connection(rabbitmq_url, connect_timeout=5) as conn:
        topology.declare(conn.channel())
    for queue in topology.all_queues():
        assert ready_count(rabbitmq_url, queue.name) == 0
    # Bindings: each command type reaches its service's queue, and only that one.
    with pika_channel(rabbitmq_url) as ch:
        ch.confirm_delivery()
        for command in ("image.import", "image.update", "image.delete"):
            ch.basic_publish(topology.commands.name, command, b"{}", mandatory=True)
        ch.basic_publish(topology.events.name, "task.succeeded", b"{}", mandatory=True)
    def one_each() -> None:
        for service in ("importer", "updater", "deleter"):
            assert ready_count(rabbitmq_url, topology.command_queues[service].name) == 1, service
        assert ready_count(rabbitmq_url, topology.projector_queue.name) == 1

    eventually(one_each, timeout=5)


def test_command_queues_are_quorum_queues(rabbitmq_url: str, topology: Topology):
    queues = [*topology.command_queues.values(), topology.projector_queue, *topology.dead_letter_queues.values()]
    for queue in queues:
        assert queue.queue_arguments["x-queue-type"] == "quorum"
        with Connection(rabbitmq_url, connect_timeout=5) as conn:
            channel = conn.channel()
            # The same arguments are accepted (control) ...
            channel.queue_declare(queue=queue.name, durable=True, auto_delete=False, arguments=queue.queue_arguments)
            # ... and only the queue type differs here, so the refusal is about the type.
            with pytest.raises(PreconditionFailed) as caught:
                channel.queue_declare(queue=queue.name, durable=True, auto_delete=False,
                                      arguments={**queue.queue_arguments, "x-queue-type": "classic"})
            assert caught.value.code == 406
            assert "x-queue-type" in str(caught.value)


# --- publisher ---------------------------------------------------------------------------------


def test_published_message_arrives_with_its_properties(rabbitmq_url: str, topology: Topology, publisher: Publisher):
    sent = send(publisher, topology, headers={"x-test": "yes"})
    method, properties, body = get_one(rabbitmq_url, topology.command_queues["importer"].name)
    assert body == sent["body"]
    assert properties.message_id == sent["message_id"]
    assert properties.correlation_id == sent["correlation_id"]
    assert properties.type == COMMAND
    assert properties.delivery_mode == 2  # persistent
    assert properties.content_type == "application/json"
    assert text((properties.headers or {}).get("x-test")) == "yes"
    assert method.routing_key == COMMAND

    send(publisher, topology, persistent=False)
    _method, properties, _body = get_one(rabbitmq_url, topology.command_queues["importer"].name)
    assert properties.delivery_mode == 1


def test_unroutable_publish_raises_and_publisher_recovers(rabbitmq_url: str, topology: Topology,
                                                          publisher: Publisher):
    with pytest.raises(Unroutable):
        send(publisher, topology, routing_key="no.such.command")
    # Not mandatory: dropped without complaint.
    send(publisher, topology, routing_key="no.such.command", mandatory=False)
    # The publisher is still usable afterwards.
    sent = send(publisher, topology)
    _method, properties, _body = get_one(rabbitmq_url, topology.command_queues["importer"].name)
    assert properties.message_id == sent["message_id"]
    assert ready_count(rabbitmq_url, topology.command_queues["importer"].name) == 0


def test_a_batch_is_confirmed_together_and_arrives_in_order(rabbitmq_url: str, topology: Topology,
                                                           publisher: Publisher):
    queue = topology.command_queues["importer"].name
    ids = [str(uuid.uuid4()) for _ in range(20)]
    publisher.publish_many([Outgoing(topology.commands.name, COMMAND, f'{{"n": {n}}}'.encode(), message_id=i)
                            for n, i in enumerate(ids)])
    received = [get_one(rabbitmq_url, queue)[1].message_id for _ in ids]
    assert received == ids
    # The channel's confirm bookkeeping carries on across batches.
    publisher.publish_many([Outgoing(topology.commands.name, COMMAND, b"{}", message_id="after")])
    assert get_one(rabbitmq_url, queue)[1].message_id == "after"


def test_a_batch_with_an_unroutable_message_fails_as_unroutable(rabbitmq_url: str, topology: Topology,
                                                               publisher: Publisher):
    with pytest.raises(Unroutable):
        publisher.publish_many([Outgoing(topology.commands.name, COMMAND, b"{}", message_id="routed"),
                                Outgoing(topology.commands.name, "no.such.command", b"{}", message_id="lost")])
    # The routed one may be delivered (the caller retries the batch; consumers deduplicate).
    assert get_one(rabbitmq_url, topology.command_queues["importer"].name)[1].message_id == "routed"


def _assert_fails_fast(url: str, timeout: float) -> None:
    settings = Settings(broker_url=url, publish_timeout=timeout)
    publisher = Publisher(lambda: connect(settings, "test-dead"), timeout=timeout)
    try:
        started = time.monotonic()
        with pytest.raises(PublishFailed) as caught:
            publisher.publish(exchange="imagesvc.commands", routing_key=COMMAND, body=b"{}")
        elapsed = time.monotonic() - started
        assert not isinstance(caught.value, Unroutable)
        assert elapsed < timeout + 2, f"publish to a dead broker took {elapsed:.1f}s"
    finally:
        publisher.close()


def test_publish_to_dead_port_fails_within_timeout():
    _assert_fails_fast("amqp://guest:guest@127.0.0.1:1//", timeout=2.0)


def test_publish_to_silent_listener_fails_within_timeout():
    """A port that accepts TCP but never speaks AMQP must not hang the publisher either."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        _assert_fails_fast(f"amqp://guest:guest@127.0.0.1:{server.getsockname()[1]}//", timeout=2.0)
    finally:
        server.close()


@pytest.mark.parametrize("heartbeat", [Settings().heartbeat, 7])
def test_connection_negotiates_configured_heartbeat(rabbitmq_url: str, heartbeat: int):
    settings = Settings(broker_url=rabbitmq_url, heartbeat=heartbeat)
    with connect(settings, "test-heartbeat") as conn:
        conn.ensure_connection(max_retries=1, timeout=5)
        negotiated = conn.connection.heartbeat
    assert negotiated == settings.heartbeat
    assert negotiated > 0


def test_publish_to_stalled_broker_fails_within_timeout(proxy: StallingProxy):
    timeout = 2.0
    settings = Settings(broker_url=proxy.url(), publish_timeout=timeout)
    publisher = Publisher(lambda: connect(settings, "test-stalled"), timeout=timeout)
    outcome: dict[str, Any] = {}

    def publish() -> None:
        started = time.monotonic()
        try:
            publisher.publish(exchange="", routing_key="no-such-queue", body=b"{}", mandatory=False)
            outcome["result"] = "confirmed"
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            outcome["result"] = exc
        outcome["elapsed"] = time.monotonic() - started

    try:
        publish()  # through the proxy while it flows: the connection is open and pooled
        assert outcome["result"] == "confirmed"
        outcome.clear()
        proxy.stall()
        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        thread.join(timeout + 2)
        assert not thread.is_alive(), f"publish() still blocked {timeout + 2:.0f}s after the broker stalled"
        assert isinstance(outcome["result"], PublishFailed), outcome
        assert outcome["elapsed"] < timeout + 2
    finally:
        proxy.close()  # unblocks a hung publish
        publisher.close()


def _socket_alive(conn: Connection) -> bool:
    """Whether the broker still holds this connection open, from the kernel's TCP state.

    (Peeking at the socket is not enough: the broker's unread heartbeat frames sit in front of
    its FIN.) Linux: ``TCP_INFO`` starts with ``tcpi_state``; 1 is ESTABLISHED.
    """
    sock = getattr(conn.connection, "sock", None) if conn.connection is not None else None
    if sock is None:
        return False
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == 1
    except OSError:
        return False


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="reads the TCP state through Linux's TCP_INFO")
def test_publisher_keeps_idle_pooled_connections_alive(rabbitmq_url: str):
    settings = Settings(broker_url=rabbitmq_url, heartbeat=2)
    made: list[Connection] = []
    both_open = threading.Barrier(2, timeout=10)

    def connect_both() -> Connection:
        conn = connect(settings, "test-pool")
        made.append(conn)
        if len(made) <= 2:
            both_open.wait()  # holds the first slot until the second is taken: both get a connection
        return conn

    publisher = Publisher(connect_both, size=2, timeout=5, heartbeat=settings.heartbeat)
    try:
        threads = [threading.Thread(target=publisher.publish, kwargs={
            "exchange": "", "routing_key": "no-such-queue", "body": b"{}", "mandatory": False}) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
        assert len(made) == 2
        assert all(_socket_alive(conn) for conn in made)
        # Idle for four heartbeat intervals (the broker drops a silent client after about two).
        deadline = time.monotonic() + 4 * settings.heartbeat
        while time.monotonic() < deadline:
            alive = [_socket_alive(conn) for conn in made]
            assert all(alive), f"idle pooled connection dropped by the broker: {alive}"
            time.sleep(0.2)
        assert len(made) == 2
    finally:
        publisher.close()


# --- consumer runner ---------------------------------------------------------------------------


def dlq_of(topology: Topology) -> str:
    return topology.dead_letter_queues[topology.command_queues["importer"].name].name


def test_consumer_acks_handled_message(rabbitmq_url: str, settings: Settings, topology: Topology,
                                       publisher: Publisher):
    handler = Recorder(lambda _d: Disposition.ack())
    runner = make_runner(settings, topology, handler, publisher)
    with running(runner):
        sent = send(publisher, topology)
        eventually(lambda: _assert_equal(runner.handled, 1), timeout=10)
    queue = topology.command_queues["importer"].name
    assert ready_count(rabbitmq_url, queue) == 0  # acked: nothing came back when the consumer left
    assert ready_count(rabbitmq_url, dlq_of(topology)) == 0
    assert len(handler.calls) == 1
    delivery = handler.calls[0]
    assert delivery.attempt == 1
    assert delivery.redelivered is False
    assert delivery.queue == queue
    assert delivery.body == sent["body"]
    assert (delivery.message_id, delivery.correlation_id, delivery.message_type) == (
        sent["message_id"], sent["correlation_id"], COMMAND)
    assert handler.gave_up == []


def _assert_equal(actual: Any, expected: Any) -> None:
    assert actual == expected, f"{actual!r} != {expected!r}"


def _assert_dead_lettered(rabbitmq_url: str, topology: Topology, sent: dict[str, Any], *, attempt: int) -> str:
    _method, properties, body = get_one(rabbitmq_url, dlq_of(topology))
    headers = {k: text(v) for k, v in (properties.headers or {}).items()}
    assert body == sent["body"]
    assert properties.message_id == sent["message_id"]
    assert properties.correlation_id == sent["correlation_id"]
    assert properties.type == COMMAND
    assert properties.delivery_mode == 2
    assert headers[ORIGINAL_QUEUE_HEADER] == topology.command_queues["importer"].name
    assert int(headers[ATTEMPT_HEADER]) == attempt
    assert ready_count(rabbitmq_url, dlq_of(topology)) == 0
    return headers[DEATH_REASON_HEADER]


@pytest.mark.parametrize("failure", ["retry", "exception"])
def test_consumer_retries_then_dead_letters(rabbitmq_url: str, settings: Settings, topology: Topology,
                                            publisher: Publisher, failure: str):
    def verdict(_delivery: Delivery) -> Disposition:
        if failure == "exception":
            raise RuntimeError("boom")
        return Disposition.retry("x", delay=0.05)

    handler = Recorder(verdict)
    runner = make_runner(settings, topology, handler, publisher, max_attempts=3, backoff=(0.05,))
    with running(runner):
        sent = send(publisher, topology)
        # Two retry copies and the dead letter: three originals acked.
        eventually(lambda: _assert_equal(runner.handled, 3), timeout=15)
        eventually(lambda: _assert_equal(ready_count(rabbitmq_url, dlq_of(topology)), 1), timeout=10)
    assert ready_count(rabbitmq_url, topology.command_queues["importer"].name) == 0
    assert [d.attempt for d in handler.calls] == [1, 2, 3]
    assert {d.message_id for d in handler.calls} == {sent["message_id"]}
    assert all(d.body == sent["body"] for d in handler.calls)
    assert len(handler.gave_up) == 1
    gave_up_delivery, gave_up_reason = handler.gave_up[0]
    assert gave_up_delivery.attempt == 3
    reason = _assert_dead_lettered(rabbitmq_url, topology, sent, attempt=3)
    assert reason == gave_up_reason
    assert "3 attempts" in reason
    assert ("boom" in reason) if failure == "exception" else reason.endswith("x")


def test_consumer_defers_without_using_attempts(rabbitmq_url: str, settings: Settings, topology: Topology,
                                               publisher: Publisher):
    """Deferred more often than ``max_attempts`` (copies through the default exchange, each
    confirmed before the original's ack): every delivery is attempt 1, nothing dead-lettered, and
    the message handled in the end; the quorum queue's delivery count never grows."""
    deferrals = 4

    def verdict(_delivery: Delivery) -> Disposition:
        return Disposition.defer("user at cap", 0.05) if len(handler.calls) <= deferrals else Disposition.ack()

    handler = Recorder(verdict)
    runner = make_runner(settings, topology, handler, publisher, max_attempts=3, backoff=(0.05,))
    with running(runner):
        sent = send(publisher, topology)
        eventually(lambda: _assert_equal(runner.handled, deferrals + 1), timeout=15)
    assert ready_count(rabbitmq_url, topology.command_queues["importer"].name) == 0
    assert ready_count(rabbitmq_url, dlq_of(topology)) == 0
    assert [d.attempt for d in handler.calls] == [1] * (deferrals + 1)
    assert not any(d.redelivered for d in handler.calls)
    assert {(d.message_id, d.correlation_id, d.body) for d in handler.calls} == {
        (sent["message_id"], sent["correlation_id"], sent["body"])}
    assert handler.gave_up == []


def test_consumer_dead_letters_at_once(rabbitmq_url: str, settings: Settings, topology: Topology,
                                       publisher: Publisher):
    handler = Recorder(lambda _d: Disposition.dead_letter("bad"))
    runner = make_runner(settings, topology, handler, publisher, max_attempts=3, backoff=(0.05,))
    with running(runner):
        sent = send(publisher, topology)
        eventually(lambda: _assert_equal(runner.handled, 1), timeout=10)
    assert ready_count(rabbitmq_url, topology.command_queues["importer"].name) == 0
    assert len(handler.calls) == 1
    assert _assert_dead_lettered(rabbitmq_url, topology, sent, attempt=1) == "bad"


def test_slow_handler_keeps_its_connection(rabbitmq_url: str, topology: Topology, publisher: Publisher):
    """A handler busy for three heartbeat intervals: heartbeats keep flowing, the ack lands once."""
    settings = Settings(broker_url=rabbitmq_url, heartbeat=2)
    block = 3 * settings.heartbeat
    connections: list[Connection] = []

    def connect_counted() -> Connection:
        conn = connect(settings, "test-slow-consumer")
        connections.append(conn)
        return conn

    def slow(_delivery: Delivery) -> Disposition:
        threading.Event().wait(block)  # the behaviour under test: a handler that blocks
        return Disposition.ack()

    handler = Recorder(slow)
    runner = make_runner(settings, topology, handler, publisher, connect_fn=connect_counted)
    with running(runner):
        started = time.monotonic()
        send(publisher, topology)
        eventually(lambda: _assert_equal(runner.handled, 1), timeout=block + 10)
        assert time.monotonic() - started >= block
        assert connections[0].connection.heartbeat == settings.heartbeat
    assert ready_count(rabbitmq_url, topology.command_queues["importer"].name) == 0
    assert len(handler.calls) == 1, [d.attempt for d in handler.calls]
    assert handler.calls[0].redelivered is False
    assert len(connections) == 1, "the consumer lost its connection and reconnected"
    assert ready_count(rabbitmq_url, dlq_of(topology)) == 0


def test_consumer_reconnects_after_its_connection_stalls(settings: Settings, topology: Topology,
                                                         publisher: Publisher, proxy: StallingProxy):
    via_proxy = Settings(broker_url=proxy.url(), heartbeat=1)
    handler = Recorder(lambda _d: Disposition.ack())
    runner = make_runner(via_proxy, topology, handler, publisher)
    with running(runner):
        try:
            send(publisher, topology)
            eventually(lambda: _assert_equal(runner.handled, 1), timeout=10)
            proxy.stall()
            sent = send(publisher, topology)
            # Heartbeats are missed after ~2 s; the runner should reconnect (a fresh proxied
            # connection flows) and get the new message. (The first one may come again if its
            # ack was caught in the stall: at-least-once.)
            eventually(lambda: _assert_equal(sent["message_id"] in [d.message_id for d in handler.calls], True),
                       timeout=8)
        finally:
            proxy.close()  # unblocks a hung runner, so that ``running`` can stop it


# --- notifications -----------------------------------------------------------------------------


def test_task_notification_reaches_only_the_addressed_listener(settings: Settings, topology: Topology,
                                                               publisher: Publisher):
    received: list[tuple[str, str]] = []
    elsewhere: list[str] = []
    listener = NotificationListener(lambda: connect(settings, "test-listener"), topology,
                                    lambda note: received.append((note["task_id"], note["status"])))
    other = NotificationListener(lambda: connect(settings, "test-listener-2"), topology,
                                 lambda note: elsewhere.append(note["task_id"]))
    listener.start()
    other.start()
    try:
        assert listener.ready.wait(15) and other.ready.wait(15), "listeners never became ready"
        assert listener.address != other.address
        notify = TaskNotifier(publisher, topology)
        task_id = "task-" + uuid.uuid4().hex[:8]
        notify(listener.address, {"task_id": task_id, "status": "SUCCESS", "http_code": 200, "result": None})
        notify(listener.address, {"task_id": task_id + "b", "status": "FAILURE", "http_code": 404,
                                  "result": {"detail": "x"}})
        notify(other.address, {"task_id": "for-the-other", "status": "SUCCESS"})
        eventually(lambda: _assert_equal(received, [(task_id, "SUCCESS"), (task_id + "b", "FAILURE")]), timeout=10)
        # The other listener hears its own notification, and only that one.
        eventually(lambda: _assert_equal(elsewhere, ["for-the-other"]), timeout=10)
    finally:
        listener.stop()
        other.stop()


def test_listener_reconnects_after_its_connection_stalls(settings: Settings, topology: Topology,
                                                         publisher: Publisher, proxy: StallingProxy):
    received: list[str] = []
    via_proxy = Settings(broker_url=proxy.url(), heartbeat=1)
    listener = NotificationListener(lambda: connect(via_proxy, "test-listener"), topology,
                                    lambda note: received.append(note["task_id"]))
    listener.start()
    notify = TaskNotifier(publisher, topology)
    try:
        assert listener.ready.wait(15), "listener never became ready"
        notify(listener.address, {"task_id": "before", "status": "SUCCESS"})
        eventually(lambda: _assert_equal(received, ["before"]), timeout=10)
        proxy.stall()

        def delivered_after_stall() -> None:
            notify(listener.address, {"task_id": "after", "status": "SUCCESS"})  # notifications are transient: send until a listener hears one
            assert "after" in received

        eventually(delivered_after_stall, timeout=8, interval=0.5)
    finally:
        proxy.close()
        listener.stop()
