"""``vm.*`` / ``vm.snapshot.*``: the contract the compute management system publishes to, and the
projector applying those events to ``vms`` / ``vm_snapshots``, idempotent and order-safe."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest

from imagesvc.services.projector.handlers import rebuild
from imagesvc.shared.broker.consumer import Outcome
from imagesvc.shared.contracts import VmRemoved, VmSnapshotRemoved, VmSnapshotUpdated, VmUpdated
from imagesvc.shared.db import vms
from imagesvc.shared.db.engine import read_transaction, write_transaction
from imagesvc.shared.errors import PoisonMessage
from tests.unit import test_node_events as node_events
from tests.unit.test_node_events import envelope, parse

VM = "11111111-2222-4333-8444-555555555501"
IMAGE = "6f0b3a1e-7c2d-4e5f-8a9b-0c1d2e3f4a5b"
DISKS = [{"disk_id": 1, "size": 10240, "image_uuid": IMAGE}, {"disk_id": 2, "size": 2048, "image_uuid": None}]


def updated(status="running", at="2026-11-27T10:00:00Z", **changes) -> bytes:
    payload = {"uuid": VM, "hostname": "web01.example.com", "dc": "main", "node": "cn1.example.com",
               "status": status, "ostype": 1, "disks": DISKS, "changed_at": at}
    return envelope("vm.updated", {**payload, **changes})


def removed(at="2026-11-27T10:00:00Z", vm=VM) -> bytes:
    return envelope("vm.removed", {"uuid": vm, "changed_at": at})


def snapshot_updated(status="ok", at="2026-11-27T10:00:00Z", **changes) -> bytes:
    payload = {"vm_uuid": VM, "disk_id": 1, "name": "daily", "status": status, "changed_at": at}
    return envelope("vm.snapshot.updated", {**payload, **changes})


def snapshot_removed(at="2026-11-27T10:00:00Z", **changes) -> bytes:
    return envelope("vm.snapshot.removed", {"vm_uuid": VM, "disk_id": 1, "name": "daily", "changed_at": at,
                                            **changes})


# --- the contract ------------------------------------------------------------------------------


def test_vm_updated_parses_with_its_disks_and_any_offset():
    event = parse(updated(at="2026-11-27T11:00:00.5+01:00"))
    assert isinstance(event, VmUpdated)
    assert (event.uuid, event.hostname, event.dc, event.node, event.ostype) == (
        VM, "web01.example.com", "main", "cn1.example.com", 1)
    assert event.disks == DISKS
    assert event.changed_time == datetime(2026, 11, 27, 10, 0, 0, 500000, tzinfo=timezone.utc)
    assert event.stream_position() is None


def test_a_replica_names_its_vm_and_an_ordinary_vm_need_not_say_so():
    master = "11111111-2222-4333-8444-555555555502"
    assert parse(updated(replica_of=master)).replica_of == master
    assert parse(updated()).replica_of is None and parse(updated(replica_of=None)).replica_of is None


def test_a_disk_without_image_uuid_has_none():
    event = parse(updated(disks=[{"disk_id": 1, "size": 1}]))
    assert event.disks == [{"disk_id": 1, "size": 1}]


def test_the_other_vm_events_parse():
    assert isinstance(parse(removed()), VmRemoved)
    snap = parse(snapshot_updated())
    assert isinstance(snap, VmSnapshotUpdated) and (snap.vm_uuid, snap.disk_id, snap.name) == (VM, 1, "daily")
    assert isinstance(parse(snapshot_removed()), VmSnapshotRemoved)


@pytest.mark.parametrize("body, reason", [
    (envelope("vm.updated", {"uuid": VM}), "is required"),
    (updated(uuid="web01"), "uuid"),
    (updated(hostname=""), "hostname"),
    (updated(hostname=VM), "must not be a UUID"),
    (updated(dc="d" * 17), "dc"),
    (updated(dc=7), "wrong type"),
    (updated(node="cn 1"), "node"),
    (updated(status=""), "status"),
    (updated(ostype=9), "ostype"),
    (updated(ostype="1"), "wrong type"),
    (updated(ostype=True), "wrong type"),
    (updated(disks={"disk_id": 1}), "wrong type"),
    (updated(disks=[1]), "disks must be objects"),
    (updated(disks=[{"disk_id": 1}]), "disks must be objects"),
    (updated(disks=[{"disk_id": 0, "size": 1}]), "disk_id"),
    (updated(disks=[{"disk_id": 1, "size": -5}]), "size"),
    (updated(disks=[{"disk_id": 1, "size": "5"}]), "size"),
    (updated(disks=[{"disk_id": 1, "size": 5, "image_uuid": "centos"}]), "image_uuid"),
    (updated(disks=[{"disk_id": 1, "size": 5}, {"disk_id": 1, "size": 6}]), "twice"),
    (updated(at="2026-11-27T10:00:00"), "no timezone"),
    (updated(replica_of="web00"), "replica_of must be a UUID"),
    (updated(replica_of=VM), "replica_of must name another VM"),
    (removed(vm="web01"), "uuid"),
    (removed(at="yesterday"), "not an ISO-8601"),
    (snapshot_updated(vm_uuid="web01"), "vm_uuid"),
    (snapshot_updated(disk_id=0), "disk_id"),
    (snapshot_updated(name="a b"), "name"),
    (snapshot_updated(status="s" * 33), "status"),
    (snapshot_removed(name=""), "name"),
    (snapshot_removed(at="2026-11-27"), "no timezone"),
])
def test_a_vm_event_that_could_not_be_stored_is_poison(body, reason):
    with pytest.raises(PoisonMessage, match=reason) as caught:
        parse(body)
    assert caught.value.message_type.startswith("vm.")
    assert caught.value.message_id == orjson.loads(body)["id"]


# --- the projector -----------------------------------------------------------------------------


class Projector(node_events.Projector):
    """The node tests' projector, reading the VM tables."""

    def vms(self) -> list[tuple]:
        with read_transaction(self.engine) as conn:
            return [(v.hostname, v.status, v.disks) for v in vms.list_vms(conn)]

    def snapshots(self) -> list[tuple]:
        with read_transaction(self.engine) as conn:
            return [(s.name, s.status) for s in vms.list_snapshots(conn)]


@pytest.fixture
def projector(engine):
    return Projector(engine)


DISK_RECORDS = (vms.Disk(1, 10240, IMAGE), vms.Disk(2, 2048, None))


def test_an_update_is_stored_and_its_redelivery_changes_nothing(projector):
    body = updated()
    assert projector.deliver(body) == [Outcome.ACK]
    assert projector.deliver(body) == [Outcome.ACK]
    assert projector.vms() == [("web01.example.com", "running", DISK_RECORDS)]


def test_out_of_order_updates_and_removals_leave_the_newest_fact(projector):
    outcomes = projector.deliver(updated("stopped", at="2026-11-27T10:09:00Z"),
                                 updated("running", at="2026-11-27T10:10:00Z"),
                                 updated("stopping", at="2026-11-27T10:01:00Z"))
    assert outcomes == [Outcome.ACK] * 3
    assert projector.vms() == [("web01.example.com", "running", DISK_RECORDS)]
    assert projector.deliver(removed(at="2026-11-27T10:05:00Z")) == [Outcome.ACK]  # older than the state
    assert projector.vms() != []
    assert projector.deliver(removed(at="2026-11-27T10:20:00Z"), updated(at="2026-11-27T10:15:00Z")) == [
        Outcome.ACK, Outcome.ACK]
    assert projector.vms() == []


def test_snapshot_events_are_applied_in_any_order(projector):
    assert projector.deliver(snapshot_updated("ok", at="2026-11-27T10:05:00Z"),
                             snapshot_updated("pending", at="2026-11-27T10:00:00Z")) == [Outcome.ACK] * 2
    assert projector.snapshots() == [("daily", "ok")]
    assert projector.deliver(snapshot_removed(at="2026-11-27T10:06:00Z")) == [Outcome.ACK]
    assert projector.deliver(snapshot_updated("ok", at="2026-11-27T10:05:30Z")) == [Outcome.ACK]
    assert projector.snapshots() == []


def test_a_vm_removal_takes_its_snapshots_and_late_older_snapshot_facts_stay_out(projector):
    projector.deliver(updated(), snapshot_updated())
    assert projector.deliver(removed(at="2026-11-27T10:10:00Z")) == [Outcome.ACK]
    assert projector.snapshots() == []
    assert projector.deliver(snapshot_updated(name="late", at="2026-11-27T10:09:00Z")) == [Outcome.ACK]
    assert projector.snapshots() == []


def test_poison_vm_events_are_dead_lettered_and_their_batch_neighbours_applied(projector):
    outcomes = projector.deliver(updated(ostype=0), updated(), snapshot_updated(disk_id=-1), removed(vm="x"))
    assert outcomes == [Outcome.DEAD_LETTER, Outcome.ACK, Outcome.DEAD_LETTER, Outcome.DEAD_LETTER]
    assert projector.vms() == [("web01.example.com", "running", DISK_RECORDS)]


def test_a_read_model_rebuild_leaves_vms_and_snapshots_alone(projector):
    projector.deliver(updated(), snapshot_updated())
    with write_transaction(projector.engine) as conn:
        rebuild(conn)
    assert projector.vms() == [("web01.example.com", "running", DISK_RECORDS)]
    assert projector.snapshots() == [("daily", "ok")]


def test_a_vm_lists_at_most_64_disks():
    disks = [{"disk_id": n, "size": 1, "image_uuid": None} for n in range(1, 66)]
    assert len(parse(updated(disks=disks[:64])).disks) == 64
    with pytest.raises(PoisonMessage, match="at most 64 disks"):
        parse(updated(disks=disks))
