"""Compute nodes in the inventory: written by ``imagesvc admin node`` (both modes) and by the
``node.*`` events other systems publish on the events exchange (distributed mode, published with
pika, an AMQP client that is not imagesvc's)."""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit

import orjson
import pytest

from tests.support.polling import eventually
from tests.support.tap import publish, take

pytestmark = pytest.mark.e2e

NODE_UUID = "4c4c4544-0042-3510-8052-b4c04f4b4e31"


def listed(system) -> dict[str, dict]:
    """``imagesvc admin node list``, by hostname."""
    return {node["hostname"]: node for node in map(json.loads, system.admin("node", "list").splitlines())}


def hostname() -> str:
    return f"cn-{uuid.uuid4().hex[:10]}.example.com"


def publish_node_event(system, type_: str, payload: dict) -> dict:
    """Publish as another system would: imagesvc's envelope on the inventory exchange, routing key =
    type, persistent, confirmed, with the publisher's broker user as ``user_id`` (here the service
    user, which may publish every family)."""
    message_id = str(uuid.uuid4())
    envelope = {"id": message_id, "type": type_, "schema_version": 1, "time": "2026-11-27T10:00:00Z",
                "correlation_id": message_id, "causation_id": None, "actor": None, "payload": payload}
    publish(system.broker_url, f"{system.prefix}imagesvc.inventory", type_, orjson.dumps(envelope),
            content_type="application/json", delivery_mode=2, message_id=message_id, correlation_id=message_id,
            type=type_, user_id=urlsplit(system.broker_url).username or "guest")
    return envelope


def distributed_only(system) -> None:
    if system.mode != "distributed":
        pytest.skip("nobody outside the process can publish on memory://")


def test_admin_node_set_list_remove_round_trip(system):
    name = hostname()
    system.admin("node", "set", name, "--status", "maintenance", "--uuid", NODE_UUID, "--address", "10.0.0.11")
    node = listed(system)[name]
    assert (node["status"], node["uuid"], node["address"]) == ("maintenance", NODE_UUID, "10.0.0.11")
    assert node["changed_at"].endswith("Z")

    system.admin("node", "set", name, "--status", "online")
    node = listed(system)[name]
    assert (node["status"], node["uuid"], node["address"]) == ("online", None, None)

    assert "removed" in system.admin("node", "remove", name)
    assert name not in listed(system)


def test_a_node_event_published_with_pika_reaches_the_inventory_and_an_older_one_changes_nothing(system):
    distributed_only(system)
    name = hostname()
    publish_node_event(system, "node.updated", {"hostname": name, "status": "maintenance", "uuid": NODE_UUID,
                                                "address": "10.0.0.11", "changed_at": "2026-11-27T11:05:00+01:00"})

    def in_the_inventory() -> dict:
        nodes = listed(system)
        assert name in nodes, f"{name} not in the inventory yet"
        return nodes[name]

    node = eventually(in_the_inventory, timeout=20, interval=0.2)
    assert node == {"hostname": name, "status": "maintenance", "uuid": NODE_UUID, "address": "10.0.0.11",
                    "changed_at": "2026-11-27T10:05:00Z"}

    older = publish_node_event(system, "node.updated", {"hostname": name, "status": "online",
                                                        "changed_at": "2026-11-27T10:04:59Z"})

    def handled_and_not_applied() -> None:
        lines = [line for line in system.log("projector").splitlines() if name in line and '"node.updated"' in line]
        assert any(older["payload"]["changed_at"] in line and '"applied":false' in line for line in lines), lines

    eventually(handled_and_not_applied, timeout=20, interval=0.2)
    assert listed(system)[name] == node


def test_a_node_removed_event_takes_the_node_out(system):
    distributed_only(system)
    name = hostname()
    system.admin("node", "set", name, "--status", "online")
    publish_node_event(system, "node.removed", {"hostname": name, "changed_at": "2999-01-01T00:00:00Z"})

    def gone() -> None:
        assert name not in listed(system)

    eventually(gone, timeout=20, interval=0.2)


def test_an_unstorable_node_event_is_dead_lettered(system):
    distributed_only(system)
    poison = publish_node_event(system, "node.updated", {"hostname": "h" * 256, "status": "online",
                                                         "changed_at": "2026-11-27T10:00:00Z"})

    def dead_lettered():
        message = take(system.broker_url, f"{system.prefix}projector.events.dlq")
        assert message is not None, "nothing in the projector's dead-letter queue yet"
        return message

    dead = eventually(dead_lettered, timeout=20, interval=0.2)
    assert dead.envelope["id"] == poison["id"]
    assert "at most 255" in dead.properties.headers["x-imagesvc-death-reason"]
