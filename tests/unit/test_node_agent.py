"""The node agent's wiring: its queue's name, binding and dead-letter queue (topology), its route
table, its driver from the settings, and its runner in the embedded mode."""

from __future__ import annotations

import dataclasses
import shutil
import uuid

import pytest
from kombu import Connection, Producer

from imagesvc import bootstrap
from imagesvc.shared.broker.topology import COMMAND_ROUTES, NODE_COMMAND_TYPES, build_topology, node_queue_name, node_routing_key
from imagesvc.shared.config import ConfigError, Settings
from imagesvc.shared.snapshots import FileSnapshotDriver, ZfsSnapshotDriver


def test_a_node_queue_is_named_after_its_node_under_the_prefix():
    assert node_queue_name("node1.example.com") == "node.node1.example.com.commands"
    assert node_queue_name("cn-1", "t1.") == "t1.node.cn-1.commands"
    assert build_topology("t1.").node_queue("cn-1").name == "t1.node.cn-1.commands"


@pytest.mark.parametrize("hostname", ["", "-x", ".x", "a b", "a/b", "a@b", "a#b", "a*b", "x" * 240])
def test_hostnames_that_cannot_name_a_node_or_a_queue_are_refused(hostname):
    with pytest.raises(ValueError):
        node_queue_name(hostname)
    with pytest.raises(ValueError):
        build_topology("").for_node(hostname)


def test_routing_keys_address_exactly_one_node():
    assert node_routing_key("image.snapshot", "cn1") == "image.snapshot@cn1"
    # Dots are in both command types and hostnames; "@" in neither, so no two pairs share a key.
    pairs = [("image.x", "a.b"), ("image.x.a", "b"), ("image", "x.a.b"), ("image.x", "a")]
    assert len({node_routing_key(t, h) for t, h in pairs}) == len(pairs)
    # ... and no node key is a plain command type that a service's queue is bound with.
    assert not any("@" in t for types in COMMAND_ROUTES.values() for t in types)


def test_for_node_adds_the_nodes_work_queue_and_its_dead_letter_queue_like_the_other_work_queues():
    base = build_topology("t1.")
    topology = base.for_node("cn1", ("image.snapshot", "image.other"))
    queue = topology.node_queues["cn1"]
    assert queue.name == "t1.node.cn1.commands" and queue.durable
    assert {(b.exchange.name, b.routing_key) for b in queue.bindings} == {
        ("t1.imagesvc.commands", "image.snapshot@cn1"), ("t1.imagesvc.commands", "image.other@cn1")}
    importer = base.command_queues["importer"]
    expected = {**importer.queue_arguments, "x-dead-letter-routing-key": "t1.node.cn1.commands.dlq"}
    assert queue.queue_arguments == expected  # quorum, delivery limit, dead-lettered to its .dlq
    dlq = topology.dead_letter_queues["t1.node.cn1.commands"]
    assert dlq.name == "t1.node.cn1.commands.dlq" and dlq.routing_key == "t1.node.cn1.commands.dlq"
    names = [q.name for q in topology.all_queues()]
    assert "t1.node.cn1.commands" in names and "t1.node.cn1.commands.dlq" in names
    # The shared topology declares no node's queue: each agent declares its own.
    assert not any(".node." in q.name for q in base.all_queues())
    assert base.node_queues == {}
    # By default a node queue is bound with the node command types.
    assert [b.routing_key for b in base.node_queue("cn1").bindings] == [node_routing_key(t, "cn1")
                                                                        for t in NODE_COMMAND_TYPES]
    # Without quorum (memory://) the same names, no broker arguments.
    assert build_topology("t1.", quorum=False).for_node("cn1").node_queues["cn1"].queue_arguments in (None, {})


def test_a_command_published_for_a_node_reaches_that_nodes_queue_only():
    topology = build_topology(f"u{uuid.uuid4().hex[:8]}.", quorum=False)
    one = topology.for_node("cn1", ("test.cmd",))
    two = one.for_node("cn2", ("test.cmd",))
    with Connection("memory://") as conn:
        channel = conn.channel()
        two.declare(channel)
        producer = Producer(channel, exchange=topology.commands)
        producer.publish(b"for cn2", routing_key=node_routing_key("test.cmd", "cn2"), content_type="text/plain")
        producer.publish(b"for cn1", routing_key=node_routing_key("test.cmd", "cn1"), content_type="text/plain")
        got = {host: channel.basic_get(two.node_queues[host].name) for host in ("cn1", "cn2")}
        assert {host: message.body for host, message in got.items()} == {"cn1": b"for cn1", "cn2": b"for cn2"}
        assert channel.basic_get(two.node_queues["cn1"].name) is None


def test_the_route_table_handles_exactly_the_types_the_node_queue_is_bound_with(tmp_path):
    routes = bootstrap.node_agent_routes(Settings(image_store=str(tmp_path)), FileSnapshotDriver(str(tmp_path)), "cn1")
    assert sorted(routes) == sorted(NODE_COMMAND_TYPES)


def test_the_snapshot_driver_comes_from_the_settings(tmp_path):
    driver = bootstrap.snapshot_driver(Settings(snapshot_driver="file", snapshot_dir=str(tmp_path)))
    assert isinstance(driver, FileSnapshotDriver) and driver.directory == str(tmp_path)
    zfs = bootstrap.snapshot_driver(Settings(snapshot_driver="zfs", zfs_command="/usr/sbin/zfs"))
    assert isinstance(zfs, ZfsSnapshotDriver) and zfs.command == "/usr/sbin/zfs"
    with pytest.raises(ConfigError, match="IMAGESVC_SNAPSHOT_DIR"):
        bootstrap.snapshot_driver(Settings(snapshot_driver="file"))


@pytest.fixture
def embedded_settings(sqlite_template, tmp_path):
    database = tmp_path / "imagesvc.db"
    shutil.copy(sqlite_template, database)
    return Settings.from_env({"IMAGESVC_DATA_DIR": str(tmp_path)}, embedded=True,
                             database_url=f"sqlite:///{database}", topology_prefix=f"e{uuid.uuid4().hex[:8]}.")


def test_a_node_agent_needs_an_image_store(embedded_settings):
    infra = bootstrap.infrastructure(dataclasses.replace(embedded_settings, image_store="none"),
                                     purpose="test")
    try:
        with pytest.raises(ConfigError, match="IMAGESVC_IMAGE_STORE"):
            bootstrap.node_agent(infra, "cn1")
    finally:
        infra.close()


def test_the_embedded_mode_runs_the_local_nodes_agent_when_told_to(embedded_settings):
    infra = bootstrap.infrastructure(embedded_settings, purpose="embedded")
    try:
        assert [r.name for r in bootstrap.Embedded(infra).runners] == list(bootstrap.CONSUMERS)
    finally:
        infra.close()
    settings = dataclasses.replace(embedded_settings, local_node="cn1")
    assert settings.snapshot_dir.endswith("/vms")  # the embedded default under the data dir
    infra = bootstrap.infrastructure(settings, purpose="embedded")
    embedded = bootstrap.Embedded(infra)
    try:
        assert embedded.runners[-1].name == "node-agent-cn1"
        embedded.start()
        assert embedded.wait_ready(timeout=15)
    finally:
        embedded.stop()
        infra.close()
    assert not any(thread.is_alive() for thread in embedded._threads)
