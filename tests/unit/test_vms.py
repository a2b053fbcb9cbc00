"""shared.db.vms on SQLite: the newest fact about a VM or a snapshot wins, whatever order facts
arrive in; hostnames stay unique among live VMs; which VMs use an image."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from imagesvc.shared.db import vms
from imagesvc.shared.db.engine import read_transaction
from imagesvc.shared.db.vms import Disk, SnapshotRecord, VmRecord
from tests.unit.test_nodes import db  # noqa: F401 - the fixture: work(conn) in a write transaction of its own

T0 = datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=timezone.utc)
VM1 = "11111111-2222-4333-8444-555555555501"
VM2 = "11111111-2222-4333-8444-555555555502"
IMAGE = "6f0b3a1e-7c2d-4e5f-8a9b-0c1d2e3f4a5b"
OTHER_IMAGE = "7a1c4b2f-8d3e-4f6a-9b0c-1d2e3f4a5b6c"


def vm(uuid=VM1, hostname="web01", *, dc="main", node="cn1", status="running", ostype=1, at=T0,
       disks=(Disk(1, 10240, IMAGE),)) -> VmRecord:
    return VmRecord(uuid=uuid, hostname=hostname, dc=dc, node=node, status=status, ostype=ostype,
                    disks=tuple(disks), changed_at=at)


def snapshot(name="daily", *, vm_uuid=VM1, disk_id=1, status="ok", at=T0) -> SnapshotRecord:
    return SnapshotRecord(vm_uuid=vm_uuid, disk_id=disk_id, name=name, status=status, changed_at=at)


def stored(engine, key=VM1) -> VmRecord | None:
    with read_transaction(engine) as conn:
        return vms.get_vm(conn, key)


def stored_snapshot(engine, name="daily", vm_uuid=VM1, disk_id=1) -> SnapshotRecord | None:
    with read_transaction(engine) as conn:
        return vms.get_snapshot(conn, vm_uuid, disk_id, name)


# --- records -----------------------------------------------------------------------------------


def test_operational_statuses_and_disk_lookup():
    assert vms.VM_OPERATIONAL_STATUSES == ("running", "stopped", "stopping", "frozen")
    for status in vms.VM_OPERATIONAL_STATUSES:
        assert vm(status=status).operational
    for status in ("pending", "notcreated", "error", "Running"):
        assert not vm(status=status).operational
    record = vm(disks=(Disk(1, 10240, IMAGE), Disk(2, 512)))
    assert record.disk(2) == Disk(2, 512, None) and record.disk(3) is None
    assert snapshot().ok and not snapshot(status="pending").ok and vms.SNAPSHOT_OK == "ok"


# --- VMs ---------------------------------------------------------------------------------------


def test_a_new_vm_is_stored_and_found_by_uuid_in_either_case_and_by_hostname(db, engine):
    assert db(lambda conn: vms.put_vm(conn, vm(disks=(Disk(1, 10240, IMAGE), Disk(2, 0, None))))) is True
    found = stored(engine)
    assert found == vm(disks=(Disk(1, 10240, IMAGE), Disk(2, 0, None)))
    assert found.changed_at.tzinfo is not None
    assert stored(engine, VM1.upper()) == found
    assert stored(engine, "web01") == found
    assert stored(engine, "web02") is None and stored(engine, VM2) is None


def test_uuids_are_stored_in_lower_case(db, engine):
    db(lambda conn: vms.put_vm(conn, vm(uuid=VM1.upper(), disks=(Disk(1, 1, IMAGE.upper()),))))
    assert stored(engine).uuid == VM1
    assert stored(engine).disks == (Disk(1, 1, IMAGE),)


def test_a_newer_fact_replaces_the_whole_state(db, engine):
    db(lambda conn: vms.put_vm(conn, vm()))
    newer = vm(hostname="web01-renamed", dc="other", node="cn2", status="stopped", ostype=6,
               at=T0 + timedelta(microseconds=1), disks=())
    assert db(lambda conn: vms.put_vm(conn, newer)) is True
    assert stored(engine) == newer
    assert stored(engine, "web01") is None


@pytest.mark.parametrize("at", [T0 - timedelta(seconds=1), T0], ids=["older", "same time"])
def test_an_older_or_equally_old_fact_changes_nothing(db, engine, at):
    db(lambda conn: vms.put_vm(conn, vm()))
    assert db(lambda conn: vms.put_vm(conn, vm(status="stopped", at=at))) is False
    assert stored(engine) == vm()


def test_a_removal_hides_the_vm_and_an_older_update_does_not_bring_it_back(db, engine):
    db(lambda conn: vms.put_vm(conn, vm()))
    assert db(lambda conn: vms.remove_vm(conn, VM1, T0 + timedelta(seconds=10))) is True
    assert stored(engine) is None and stored(engine, "web01") is None
    assert db(vms.list_vms) == []
    assert db(lambda conn: vms.put_vm(conn, vm(at=T0 + timedelta(seconds=5)))) is False
    assert stored(engine) is None
    assert db(lambda conn: vms.remove_vm(conn, VM1, T0 + timedelta(seconds=10))) is False  # redelivered


def test_a_removal_wins_a_tie_and_an_older_removal_changes_nothing(db, engine):
    db(lambda conn: vms.put_vm(conn, vm()))
    assert db(lambda conn: vms.remove_vm(conn, VM1, T0 - timedelta(seconds=1))) is False
    assert stored(engine) == vm()
    assert db(lambda conn: vms.remove_vm(conn, VM1, T0)) is True
    assert db(lambda conn: vms.put_vm(conn, vm(status="stopped"))) is False
    assert stored(engine) is None


def test_a_removal_that_arrives_first_keeps_older_updates_out_and_a_newer_one_revives(db, engine):
    assert db(lambda conn: vms.remove_vm(conn, VM1, T0)) is False  # nothing known to remove
    assert db(lambda conn: vms.put_vm(conn, vm(at=T0 - timedelta(seconds=1)))) is False
    assert stored(engine) is None
    back = vm(at=T0 + timedelta(seconds=1))
    assert db(lambda conn: vms.put_vm(conn, back)) is True
    assert stored(engine) == back


def test_list_vms_is_sorted_by_hostname_and_leaves_removed_vms_out(db):
    for index, hostname in enumerate(("db", "web", "app", "gone")):
        uuid = f"11111111-2222-4333-8444-5555555555{index:02d}"
        db(lambda conn, u=uuid, h=hostname: vms.put_vm(conn, vm(uuid=u, hostname=h)))
    db(lambda conn: vms.remove_vm(conn, "11111111-2222-4333-8444-555555555503", T0 + timedelta(seconds=1)))
    assert [v.hostname for v in db(vms.list_vms)] == ["app", "db", "web"]


# --- hostnames ---------------------------------------------------------------------------------


def test_a_newer_fact_takes_a_hostname_from_an_older_holder_which_waits_under_its_uuid(db, engine):
    db(lambda conn: vms.put_vm(conn, vm(VM1, "web", at=T0)))
    # VM2 is "web" as of a later instant: VM1 must have been renamed since (that fact is late).
    assert db(lambda conn: vms.put_vm(conn, vm(VM2, "web", at=T0 + timedelta(seconds=5)))) is True
    assert stored(engine, "web").uuid == VM2
    assert stored(engine, VM1).hostname == VM1
    assert stored(engine, VM1).disks == vm().disks  # everything but the name is still exact
    # The late rename of VM1 arrives: it is newer than what was stored about VM1.
    assert db(lambda conn: vms.put_vm(conn, vm(VM1, "web-old", at=T0 + timedelta(seconds=3)))) is True
    assert [(v.hostname, v.uuid) for v in db(vms.list_vms)] == [("web", VM2), ("web-old", VM1)]


def test_an_older_fact_claiming_a_held_hostname_is_stored_under_its_uuid(db, engine):
    db(lambda conn: vms.put_vm(conn, vm(VM2, "web", at=T0 + timedelta(seconds=5))))
    assert db(lambda conn: vms.put_vm(conn, vm(VM1, "web", at=T0))) is True
    assert stored(engine, "web").uuid == VM2
    assert stored(engine, VM1).hostname == VM1
    assert db(lambda conn: vms.put_vm(conn, vm(VM1, "web-old", at=T0 + timedelta(seconds=3)))) is True
    assert stored(engine, "web-old").uuid == VM1


def test_a_removed_vm_frees_its_hostname(db, engine):
    db(lambda conn: vms.put_vm(conn, vm(VM1, "web")))
    db(lambda conn: vms.remove_vm(conn, VM1, T0 + timedelta(seconds=1)))
    assert db(lambda conn: vms.put_vm(conn, vm(VM2, "web", at=T0))) is True  # older than VM1's removal: fine
    assert stored(engine, "web").uuid == VM2


# --- images in use -----------------------------------------------------------------------------


def test_vms_using_image_are_the_live_ones_in_those_dcs_with_a_disk_of_it_by_hostname(db):
    uuids = [f"11111111-2222-4333-8444-5555555555{i:02d}" for i in range(6)]
    db(lambda conn: vms.put_vm(conn, vm(uuids[0], "zeta", disks=(Disk(1, 1, OTHER_IMAGE), Disk(2, 1, IMAGE)))))
    db(lambda conn: vms.put_vm(conn, vm(uuids[1], "alpha", dc="dc2")))
    db(lambda conn: vms.put_vm(conn, vm(uuids[2], "other-dc", dc="dc3")))
    db(lambda conn: vms.put_vm(conn, vm(uuids[3], "no-image", disks=(Disk(1, 1, None),))))
    db(lambda conn: vms.put_vm(conn, vm(uuids[4], "other-image", disks=(Disk(1, 1, OTHER_IMAGE),))))
    db(lambda conn: vms.put_vm(conn, vm(uuids[5], "removed")))
    db(lambda conn: vms.remove_vm(conn, uuids[5], T0 + timedelta(seconds=1)))
    using = db(lambda conn: vms.vms_using_image(conn, IMAGE, ["main", "dc2"]))
    assert [v.hostname for v in using] == ["alpha", "zeta"]
    assert db(lambda conn: vms.vms_using_image(conn, IMAGE.upper(), {"main"}))[0].hostname == "zeta"
    assert db(lambda conn: vms.vms_using_image(conn, IMAGE, [])) == []
    assert db(lambda conn: vms.vms_using_image(conn, "not-a-uuid", ["main"])) == []


def test_a_disk_that_no_longer_uses_the_image_frees_it(db):
    db(lambda conn: vms.put_vm(conn, vm()))
    db(lambda conn: vms.put_vm(conn, vm(at=T0 + timedelta(seconds=1), disks=(Disk(1, 10240, None),))))
    assert db(lambda conn: vms.vms_using_image(conn, IMAGE, ["main"])) == []


# --- snapshots ---------------------------------------------------------------------------------


def test_snapshots_newest_fact_wins_and_removals_are_remembered(db, engine):
    assert db(lambda conn: vms.put_snapshot(conn, snapshot(status="pending"))) is True
    assert db(lambda conn: vms.put_snapshot(conn, snapshot(status="ok", at=T0 + timedelta(seconds=1)))) is True
    assert db(lambda conn: vms.put_snapshot(conn, snapshot(status="lost", at=T0))) is False
    assert stored_snapshot(engine) == snapshot(at=T0 + timedelta(seconds=1))
    assert db(lambda conn: vms.remove_snapshot(conn, VM1, 1, "daily", T0 + timedelta(seconds=1))) is True  # tie
    assert stored_snapshot(engine) is None
    assert db(lambda conn: vms.remove_snapshot(conn, VM1, 1, "daily", T0 + timedelta(seconds=1))) is False
    assert db(lambda conn: vms.put_snapshot(conn, snapshot(at=T0 + timedelta(seconds=1)))) is False
    assert db(lambda conn: vms.put_snapshot(conn, snapshot(at=T0 + timedelta(seconds=2)))) is True
    assert stored_snapshot(engine).ok


def test_snapshots_are_keyed_by_vm_disk_and_name_and_listed_in_that_order(db):
    for record in (snapshot("b"), snapshot("a", disk_id=2), snapshot("a"), snapshot("a", vm_uuid=VM2)):
        db(lambda conn, r=record: vms.put_snapshot(conn, r))
    assert [(s.vm_uuid, s.disk_id, s.name) for s in db(vms.list_snapshots)] == [
        (VM1, 1, "a"), (VM1, 1, "b"), (VM1, 2, "a"), (VM2, 1, "a")]
    assert [(s.disk_id, s.name) for s in db(lambda conn: vms.list_snapshots(conn, VM1.upper()))] == [
        (1, "a"), (1, "b"), (2, "a")]
    assert db(lambda conn: vms.get_snapshot(conn, VM1, 3, "a")) is None


def test_removing_a_vm_removes_its_snapshots_as_of_that_instant(db, engine):
    db(lambda conn: vms.put_vm(conn, vm()))
    db(lambda conn: vms.put_snapshot(conn, snapshot("old")))
    db(lambda conn: vms.put_snapshot(conn, snapshot("other-vm", vm_uuid=VM2)))
    db(lambda conn: vms.remove_vm(conn, VM1, T0 + timedelta(seconds=10)))
    assert [s.name for s in db(vms.list_snapshots)] == ["other-vm"]
    # A late snapshot fact from before the removal stays out; one after it (the uuid reused) is kept.
    assert db(lambda conn: vms.put_snapshot(conn, snapshot("late", at=T0 + timedelta(seconds=5)))) is False
    assert db(lambda conn: vms.put_snapshot(conn, snapshot("after", at=T0 + timedelta(seconds=11)))) is True
    assert [s.name for s in db(lambda conn: vms.list_snapshots(conn, VM1))] == ["after"]


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("record, problem", [
    (vm(uuid="not-a-uuid"), "uuid"),
    (vm(hostname=""), "hostname"),
    (vm(hostname="web 01"), "hostname"),
    (vm(hostname=VM2), "must not be a UUID"),
    (vm(dc=""), "dc"),
    (vm(dc="d" * 17), "dc"),
    (vm(node=""), "node"),
    (vm(status=""), "status"),
    (vm(status="s" * 33), "status"),
    (vm(ostype=0), "ostype"),
    (vm(ostype=7), "ostype"),
    (vm(ostype=True), "ostype"),
    (vm(disks=(Disk(0, 1),)), "disk_id"),
    (vm(disks=(Disk(1, -1),)), "size"),
    (vm(disks=(Disk(1, 1.5),)), "size"),
    (vm(disks=(Disk(1, 1, "nope"),)), "image_uuid"),
    (vm(disks=(Disk(1, 1), Disk(1, 2))), "twice"),
    (vm(at=T0.replace(tzinfo=None)), "timezone"),
])
def test_a_vm_that_could_not_be_stored_is_refused_with_a_sentence(db, record, problem):
    with pytest.raises(ValueError, match=problem):
        db(lambda conn: vms.put_vm(conn, record))
    assert db(vms.list_vms) == []


@pytest.mark.parametrize("record, problem", [
    (snapshot(vm_uuid="vm1"), "vm_uuid"),
    (snapshot(disk_id=0), "disk_id"),
    (snapshot(name=""), "name"),
    (snapshot(name="a" * 65), "name"),
    (snapshot(name="-x"), "name"),
    (snapshot(status=""), "status"),
    (snapshot(at=T0.replace(tzinfo=None)), "timezone"),
])
def test_a_snapshot_that_could_not_be_stored_is_refused_with_a_sentence(db, record, problem):
    with pytest.raises(ValueError, match=problem):
        db(lambda conn: vms.put_snapshot(conn, record))
    assert db(vms.list_snapshots) == []


def test_removals_refuse_unstorable_keys_or_naive_times(db):
    with pytest.raises(ValueError, match="uuid"):
        db(lambda conn: vms.remove_vm(conn, "web01", T0))
    with pytest.raises(ValueError, match="timezone"):
        db(lambda conn: vms.remove_vm(conn, VM1, T0.replace(tzinfo=None)))
    with pytest.raises(ValueError, match="name"):
        db(lambda conn: vms.remove_snapshot(conn, VM1, 1, "", T0))


def test_lookups_of_unstorable_keys_find_nothing(db):
    assert db(lambda conn: vms.get_vm(conn, "x" * 300)) is None
    assert db(lambda conn: vms.get_snapshot(conn, "vm1", 1, "daily")) is None
    assert db(lambda conn: vms.list_snapshots(conn, "vm1")) == []
