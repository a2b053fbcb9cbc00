"""``imagesvc dlq`` against a real RabbitMQ, run as an operator runs it (a subprocess).

A command the consumer runner dead-letters (a poison message) and a valid command the broker
dead-letters by its delivery limit (it was returned five times, as by consumers that crashed
holding it) are listed, without the listing losing or reordering them; the valid one is
replayed to its work queue with its message id and a fresh attempt count; the rest is purged.
What the broker holds is read with pika, an independent client.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import orjson
import pika
import pytest

from imagesvc.shared.broker.connection import connect
from imagesvc.shared.broker.consumer import ATTEMPT_HEADER, DEATH_REASON_HEADER, ConsumerRunner, Disposition
from imagesvc.shared.broker.publisher import Publisher
from imagesvc.shared.broker.topology import BROKER_DELIVERY_LIMIT, build_topology
from imagesvc.shared.config import Settings
from imagesvc.shared.db.migrate import upgrade
from tests.integration.test_rabbitmq import pika_channel
from tests.support.polling import eventually
from tests.support.services import delete_queues

pytestmark = pytest.mark.rabbitmq
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def broker(rabbitmq_url, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    database = f"sqlite:///{tmp_path / 'imagesvc.db'}"
    upgrade(database)
    settings = Settings.from_env({}, broker_url=rabbitmq_url, topology_prefix=prefix, database_url=database)
    topology = build_topology(prefix)
    with connect(settings, "test-dlq") as conn:
        topology.declare(conn.channel())
    with pika_channel(rabbitmq_url) as channel:
        yield settings, topology, channel
    delete_queues(rabbitmq_url, prefix)


def dlq(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESVC_")}
    env.update(IMAGESVC_BROKER_URL=settings.broker_url, IMAGESVC_TOPOLOGY_PREFIX=settings.topology_prefix,
               IMAGESVC_DATABASE_URL=settings.database_url, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "imagesvc", "dlq", *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def lines(done: subprocess.CompletedProcess) -> list[dict]:
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def depth(channel, queue: str) -> int:
    return channel.queue_declare(queue=queue, passive=True).method.message_count


def command_body(message_id: str, task_id: str) -> bytes:
    return orjson.dumps({"id": message_id, "type": "image.delete", "schema_version": 1, "time": "2026-01-01T00:00:00Z",
                         "correlation_id": task_id, "causation_id": None, "actor": None, "payload": {"name": "x"}})


def dead_letter_by_the_runner(settings: Settings, topology, body: bytes, message_id: str) -> None:
    """The consumer runner's own dead-lettering (a handler that says the message is poison)."""
    publisher = Publisher(lambda: connect(settings, "test-publisher"), size=1)

    class Poison:
        def __call__(self, delivery):
            return Disposition.dead_letter("poison: body is not JSON")

        def on_give_up(self, delivery, reason):
            pass

    runner = ConsumerRunner(name="test", connect=lambda: connect(settings, "test-consumer"),
                            queue=topology.command_queues["deleter"], topology=topology, handler=Poison(),
                            publisher=publisher)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        assert runner.ready.wait(10)
        publisher.publish(exchange=topology.commands.name, routing_key="image.delete", body=body, message_id=message_id,
                          message_type="image.delete")
        eventually(lambda: _at_least(settings, topology, 1), timeout=15)
    finally:
        runner.stop()
        thread.join(15)
        publisher.close()


def _at_least(settings, topology, count: int) -> bool:
    with connect(settings, "test-depth") as conn:
        queue = topology.command_queues["deleter"].name + ".dlq"
        found = conn.channel().queue_declare(queue=queue, passive=True).message_count
    assert found >= count, found
    return True


def dead_letter_by_the_broker(channel, topology, body: bytes, message_id: str, task_id: str) -> None:
    """A valid command returned to its queue until the broker's delivery limit dead-letters it
    (what consumers that crash holding it cause)."""
    queue = topology.command_queues["deleter"].name
    channel.basic_publish(topology.commands.name, "image.delete", body,
                          pika.BasicProperties(message_id=message_id, type="image.delete", correlation_id=task_id,
                                               delivery_mode=2, content_type="application/json"))
    for _ in range(BROKER_DELIVERY_LIMIT + 1):
        method = eventually(lambda: _got(channel, queue), timeout=10)
        channel.basic_nack(method.delivery_tag, requeue=True)
    eventually(lambda: _empty(channel, queue), timeout=10)


def _got(channel, queue):
    method, _properties, _body = channel.basic_get(queue, auto_ack=False)
    assert method is not None
    return method


def _empty(channel, queue):
    assert depth(channel, queue) == 0


def test_dead_letters_are_listed_replayed_and_purged(broker):
    settings, topology, channel = broker
    work = topology.command_queues["deleter"].name
    dead = f"{work}.dlq"
    poison_id, valid_id, task_id = str(uuid.uuid4()), str(uuid.uuid4()), f"1e1u1-{uuid.uuid4().hex[:8]}-aaaa-bbbb-cccc"
    dead_letter_by_the_runner(settings, topology, b"not json at all", poison_id)
    valid = command_body(valid_id, task_id)
    dead_letter_by_the_broker(channel, topology, valid, valid_id, task_id)

    depths = {entry["queue"]: entry["messages"] for entry in lines(dlq(settings, "list"))}
    assert depths[dead] == 2
    assert depths[f"{topology.command_queues['importer'].name}.dlq"] == 0

    first = lines(dlq(settings, "list", "deleter"))
    assert [m["message_id"] for m in first] == [poison_id, valid_id]
    assert first[0]["reason"] == "poison: body is not JSON" and first[0]["queue"] == work
    assert first[0]["body"] == "not json at all"
    assert first[1]["reason"] == "broker: delivery_limit" and first[1]["deaths"] >= 1
    assert first[1]["type"] == "image.delete" and first[1]["task_id"] == task_id and first[1]["queue"] == work
    # Looking loses nothing and keeps the order.
    again = lines(dlq(settings, "list", f"{work}.dlq"))
    assert [m["message_id"] for m in again] == [poison_id, valid_id]
    assert depth(channel, dead) == 2

    replayed = lines(dlq(settings, "replay", "deleter", "--id", valid_id))
    assert replayed == [{"replayed": valid_id, "type": "image.delete", "to": work}]
    assert depth(channel, dead) == 1
    method, properties, body = eventually(lambda: _message(channel, work), timeout=10)
    assert body == valid
    assert properties.message_id == valid_id and properties.correlation_id == task_id
    assert properties.type == "image.delete"
    headers = properties.headers or {}
    assert "x-death" not in headers and DEATH_REASON_HEADER not in headers
    assert headers[ATTEMPT_HEADER] == 1 and headers["x-imagesvc-replayed"] == 1
    channel.basic_ack(method.delivery_tag)

    missing = dlq(settings, "replay", "deleter", "--id", "no-such-message")
    assert missing.returncode == 1 and "no message" in missing.stderr
    assert depth(channel, dead) == 1

    refused = dlq(settings, "purge", "deleter")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert depth(channel, dead) == 1
    assert lines(dlq(settings, "purge", "deleter", "--yes")) == [{"queue": dead, "purged": 1}]
    assert depth(channel, dead) == 0


def _message(channel, queue):
    method, properties, body = channel.basic_get(queue, auto_ack=False)
    assert method is not None
    return method, properties, body


def test_replay_all_sends_every_dead_letter_back_in_order(broker):
    settings, topology, channel = broker
    work = topology.command_queues["deleter"].name
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for message_id in ids:
        dead_letter_by_the_broker(channel, topology, command_body(message_id, f"1e1u1-{message_id[:8]}-a-b-c"),
                                  message_id, f"1e1u1-{message_id[:8]}-a-b-c")
    assert [m["replayed"] for m in lines(dlq(settings, "replay", "deleter", "--all"))] == ids
    assert depth(channel, f"{work}.dlq") == 0
    got = []
    for _ in ids:
        method, properties, _body = eventually(lambda: _message(channel, work), timeout=10)
        got.append(properties.message_id)
        channel.basic_ack(method.delivery_tag)
    assert got == ids
