"""Failover between the URLs of IMAGESVC_BROKER_URL, against the real broker: a node that refuses
connections is skipped for the next URL, and a node that dies under open connections (a TCP proxy
in front of the broker, closed: its connections reset, its port refusing) sends the publisher and
the consumers to the next URL, with no message promised that was not confirmed; a nacked publish
(a quorum queue between two leaders nacks, as a full one does) is sent again within the timeout.

The three-node cluster case (a RabbitMQ node SIGKILLed under a running system) is
tests/faults/test_broker_cluster.py.
"""

from __future__ import annotations

import socket
import threading
import uuid
from typing import Iterator

import pytest
from kombu import Connection

from imagesvc.shared.broker import connection as broker_connection
from imagesvc.shared.broker.connection import connect, ensure_connected
from imagesvc.shared.broker.consumer import ConsumerRunner, Disposition
from imagesvc.shared.broker.publisher import Publisher
from imagesvc.shared.broker.topology import Topology
from imagesvc.shared.config import Settings
from imagesvc.shared.errors import Nacked
from tests.integration.test_rabbitmq import Recorder, running, send, topology  # noqa: F401  (a fixture)
from tests.support.faultproxy import FaultProxy
from tests.support.polling import eventually

pytestmark = pytest.mark.rabbitmq


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens on it once the socket is closed


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test starts as a new process does: no URL has worked yet (the first listed comes first)."""
    monkeypatch.setattr(broker_connection, "_preference", broker_connection._Preference())


@pytest.fixture
def dying_node(rabbitmq_url: str) -> Iterator[FaultProxy]:
    """A 'node' in front of the real broker that the test kills with ``close()``."""
    info = Connection(rabbitmq_url).info()
    proxy = FaultProxy(info["hostname"], info["port"])
    yield proxy
    if proxy._thread.is_alive():  # not yet killed by the test
        proxy.close()


def url_of_port(rabbitmq_url: str, port: int) -> str:
    info = Connection(rabbitmq_url).info()
    return f"amqp://{info['userid']}:{info['password']}@127.0.0.1:{port}/{info['virtual_host'].replace('/', '%2F')}"


def cluster_settings(*urls: str) -> Settings:
    return Settings.from_env({"IMAGESVC_BROKER_URL": ";".join(urls), "IMAGESVC_PUBLISH_TIMEOUT": "5"})


def take_all(rabbitmq_url: str, queue: str) -> list[str]:
    """Every message id in ``queue`` (taken and acked)."""
    ids = []
    with Connection(rabbitmq_url, connect_timeout=5) as conn:
        channel = conn.channel()
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            ids.append(message.properties.get("message_id"))
    return ids


def test_a_refused_first_url_is_skipped_for_the_next(rabbitmq_url: str):
    refused = url_of_port(rabbitmq_url, closed_port())
    settings = cluster_settings(refused, rabbitmq_url)
    connection = connect(settings, "test-failover")
    assert connection.alt[0] == refused
    try:
        ensure_connected(connection, timeout=10)
        assert connection.connected
        assert (connection.hostname, connection.port) == (Connection(rabbitmq_url).hostname, Connection(rabbitmq_url).port)
        assert connection.heartbeat == settings.heartbeat > 0  # kept across the switch
    finally:
        broker_connection.discard(connection)
    # The next connection of this process starts where the last one got through.
    assert connect(settings, "test-failover").alt[0] == rabbitmq_url


def test_every_url_refused_fails_within_the_timeout(rabbitmq_url: str):
    settings = cluster_settings(*(url_of_port(rabbitmq_url, closed_port()) for _ in range(3)))
    connection = connect(settings, "test-failover")
    with pytest.raises(Exception):
        ensure_connected(connection, timeout=5)
    assert not connection.connected


def test_a_publisher_goes_on_on_the_next_url_when_its_node_dies(rabbitmq_url: str, topology: Topology,
                                                                 dying_node: FaultProxy):
    settings = cluster_settings(url_of_port(rabbitmq_url, dying_node.port), rabbitmq_url)
    publisher = Publisher(lambda: connect(settings, "test-publisher"), size=1, timeout=5)
    queue = topology.command_queues["importer"].name
    try:
        first = send(publisher, topology)  # confirmed through the node that is about to die
        assert dying_node.open_connections == 1
        dying_node.close()  # its connections reset, its port refuses from now on
        # The pooled connection is dead: this publish is confirmed on the next URL, or raises.
        second = send(publisher, topology)
        third = send(publisher, topology)
    finally:
        publisher.close()
    # At least once, in any case: every publish that returned was confirmed; here all three.
    assert set(take_all(rabbitmq_url, queue)) == {first["message_id"], second["message_id"], third["message_id"]}


def test_a_consumer_reconnects_to_the_next_url_when_its_node_dies(rabbitmq_url: str, topology: Topology,
                                                                  dying_node: FaultProxy):
    settings = cluster_settings(url_of_port(rabbitmq_url, dying_node.port), rabbitmq_url)
    publisher = Publisher(lambda: connect(Settings(broker_url=rabbitmq_url), "test-publisher"), size=1, timeout=5)
    handler = Recorder(lambda delivery: Disposition.ack())
    runner = ConsumerRunner(name="importer", connect=lambda: connect(settings, "test-consumer"),
                            queue=topology.command_queues["importer"], topology=topology, handler=handler,
                            publisher=publisher)
    try:
        with running(runner):
            before = send(publisher, topology)
            eventually(lambda: _handled(handler, {before["message_id"]}), timeout=10)
            assert dying_node.open_connections == 1  # the consumer is on the node that dies
            dying_node.close()
            after = send(publisher, topology)
            eventually(lambda: _handled(handler, {before["message_id"], after["message_id"]}), timeout=20)
    finally:
        publisher.close()
    assert [d.message_id for d in handler.calls].count(after["message_id"]) == 1


def _handled(handler: Recorder, ids: set[str]) -> None:
    seen = {d.message_id for d in handler.calls}
    assert ids <= seen, f"handled {seen}, waiting for {ids - seen}"


@pytest.fixture
def tiny_queue(rabbitmq_url: str) -> Iterator[str]:
    """A quorum queue that holds one message and nacks publishes beyond it (as a quorum queue
    with no leader nacks them during a node's failover)."""
    name = f"t{uuid.uuid4().hex[:8]}.tiny"
    with Connection(rabbitmq_url, connect_timeout=5) as conn:
        conn.channel().queue_declare(name, durable=True, auto_delete=False, arguments={
            "x-queue-type": "quorum", "x-max-length": 1, "x-overflow": "reject-publish"})
    yield name
    with Connection(rabbitmq_url, connect_timeout=5) as conn:
        conn.channel().queue_delete(name)


def fill(rabbitmq_url: str, queue: str) -> list[str]:
    """Publish into ``queue`` until it nacks (a quorum queue takes one message beyond its limit
    or not, depending on timing); returns the ids it kept."""
    kept = []
    with Connection(rabbitmq_url, connect_timeout=5, transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer()
        for index in range(10):
            try:
                producer.publish(b"{}", exchange="", routing_key=queue, message_id=f"fill-{index}", retry=False)
            except Exception:  # noqa: BLE001 - the nack: the queue is full
                assert kept, "the first publish into the empty queue failed"
                return kept
            kept.append(f"fill-{index}")
    raise AssertionError(f"{queue} never nacked")


def take(rabbitmq_url: str, queue: str, count: int) -> list[str]:
    ids = []
    with Connection(rabbitmq_url, connect_timeout=5) as conn:
        channel = conn.channel()
        while len(ids) < count and (message := channel.basic_get(queue, no_ack=True)) is not None:
            ids.append(message.properties.get("message_id"))
    return ids


def test_a_nacked_publish_is_sent_again_and_confirmed_once_the_queue_takes_it(rabbitmq_url: str, tiny_queue: str):
    kept = fill(rabbitmq_url, tiny_queue)
    publisher = Publisher(lambda: connect(Settings(broker_url=rabbitmq_url), "test-publisher"), size=1, timeout=5)
    try:
        # The queue frees its places a moment after the publish below was first nacked.
        taker = threading.Timer(0.1, lambda: take(rabbitmq_url, tiny_queue, len(kept)))
        taker.start()
        publisher.publish(exchange="", routing_key=tiny_queue, body=b"{}", message_id="again")
        taker.join()
    finally:
        publisher.close()
    assert take_all(rabbitmq_url, tiny_queue) == ["again"]


def test_a_publish_a_queue_keeps_nacking_fails_within_the_timeout_and_is_not_kept(rabbitmq_url: str,
                                                                                   tiny_queue: str):
    kept = fill(rabbitmq_url, tiny_queue)
    publisher = Publisher(lambda: connect(Settings(broker_url=rabbitmq_url), "test-publisher"), size=1, timeout=5)
    try:
        with pytest.raises(Nacked):
            publisher.publish(exchange="", routing_key=tiny_queue, body=b"{}", message_id="refused")
    finally:
        publisher.close()
    assert take_all(rabbitmq_url, tiny_queue) == kept
