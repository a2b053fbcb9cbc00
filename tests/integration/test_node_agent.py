"""``imagesvc node-agent`` against a real RabbitMQ: it declares its node's durable quorum queue
and dead-letter queue, consumes what is published for its node (and only that), dead-letters
what it cannot handle, and stops cleanly on SIGTERM. The broker is asked with pika."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pika.exceptions
import pytest
from amqp.exceptions import PreconditionFailed
from kombu import Connection

from imagesvc.shared.broker.topology import build_topology, node_routing_key
from imagesvc.shared.db.migrate import upgrade
from tests.integration.test_rabbitmq import pika_channel, ready_count
from tests.support.polling import eventually
from tests.support.services import delete_queues

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def agent(rabbitmq_url: str, tmp_path: Path):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    hostname = f"cn-{uuid.uuid4().hex[:6]}.example.com"
    database = tmp_path / "imagesvc.db"
    upgrade(f"sqlite:///{database}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESVC_")}
    env.update({"IMAGESVC_BROKER_URL": rabbitmq_url, "IMAGESVC_TOPOLOGY_PREFIX": prefix,
                "IMAGESVC_DATABASE_URL": f"sqlite:///{database}", "IMAGESVC_IMAGE_STORE": str(tmp_path / "store"),
                "IMAGESVC_SNAPSHOT_DIR": str(tmp_path / "vms"), "IMAGESVC_LOG_FORMAT": "json",
                "PYTHONUNBUFFERED": "1"})
    log_path = tmp_path / "agent.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "imagesvc", "node-agent", "--node", hostname],
                                   env=env, stdout=log, stderr=log, start_new_session=True)
    read_log = lambda: log_path.read_text(errors="replace")  # noqa: E731
    try:
        def ready() -> None:
            assert process.poll() is None, read_log()[-3000:]
            assert '"consumer.ready"' in read_log()

        eventually(ready, timeout=30)
        yield process, hostname, build_topology(prefix).for_node(hostname), read_log
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        delete_queues(rabbitmq_url, prefix, nodes=(hostname,))


def test_the_agent_declares_its_nodes_quorum_queue_and_dead_letter_queue(rabbitmq_url, agent):
    _process, hostname, topology, _log = agent
    queue = topology.node_queues[hostname]
    assert queue.name.endswith(f"node.{hostname}.commands")
    assert ready_count(rabbitmq_url, queue.name) == 0  # exists (a passive declare would fail otherwise)
    assert ready_count(rabbitmq_url, f"{queue.name}.dlq") == 0
    with Connection(rabbitmq_url, connect_timeout=5) as conn:
        channel = conn.channel()
        channel.queue_declare(queue=queue.name, durable=True, auto_delete=False, arguments=queue.queue_arguments)
        with pytest.raises(PreconditionFailed):  # it is a quorum queue: a classic declaration is refused
            channel.queue_declare(queue=queue.name, durable=True, auto_delete=False,
                                  arguments={**queue.queue_arguments, "x-queue-type": "classic"})


def test_commands_for_its_node_reach_the_agent_and_what_it_cannot_handle_is_dead_lettered(rabbitmq_url, agent):
    process, hostname, topology, read_log = agent
    # A publisher binds a command type to the node (as the agent does for its own types) ...
    with Connection(rabbitmq_url, connect_timeout=5) as conn:
        build_topology(topology.prefix).for_node(hostname, ("test.unknown",)).declare(conn.channel())
    with pika_channel(rabbitmq_url) as channel:
        channel.confirm_delivery()
        channel.basic_publish(topology.commands.name, node_routing_key("test.unknown", hostname), b"{}",
                              mandatory=True)
        # ... and a command for another node is not routed to this one (nor anywhere).
        with pytest.raises(pika.exceptions.UnroutableError):
            channel.basic_publish(topology.commands.name, node_routing_key("test.unknown", "other-node"), b"{}",
                                  mandatory=True)
    queue = topology.node_queues[hostname].name

    def dead_lettered() -> None:
        assert process.poll() is None, read_log()[-3000:]
        assert ready_count(rabbitmq_url, f"{queue}.dlq") == 1

    eventually(dead_lettered, timeout=20)
    assert ready_count(rabbitmq_url, queue) == 0


def test_the_agent_stops_cleanly_on_sigterm(agent):
    process, _hostname, _topology, read_log = agent
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=20) == 0, read_log()[-3000:]
    assert "Traceback" not in read_log()
