"""The snapshot-image checks (reference §3.6) in the reference's precedence (§5)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from imagesvc.domain import policy, snapshots
from imagesvc.shared.db.records import Grants, UserRecord
from imagesvc.shared.errors import Invalid, Refused

VM_UUID = "0b1c2d3e-1111-2222-3333-444455556666"


@dataclass(frozen=True)
class FakeDisk:
    disk_id: int
    size: int


@dataclass(frozen=True)
class FakeVm:
    uuid: str = VM_UUID
    hostname: str = "web01"
    dc: str = "main"
    node: str = "node1"
    status: str = "running"
    disks: tuple = (FakeDisk(1, 10240), FakeDisk(2, 2048))

    @property
    def operational(self) -> bool:
        return self.status in ("running", "stopped", "stopping", "frozen")

    def disk(self, disk_id):
        return next((d for d in self.disks if d.disk_id == disk_id), None)


@dataclass(frozen=True)
class FakeSnapshot:
    status: str = "ok"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class FakeInventory:
    vm_record: FakeVm | None = field(default_factory=FakeVm)
    node_up: bool = True
    snapshots: dict = field(default_factory=lambda: {(VM_UUID, 1, "daily"): FakeSnapshot()})
    held: bool = False
    names: set = field(default_factory=set)
    server: str | None = None

    def vm(self, ref):
        vm = self.vm_record
        return vm if vm is not None and ref in (vm.uuid, vm.hostname) else None

    def node_operational(self, hostname):
        return self.node_up

    def snapshot(self, vm_uuid, disk_id, name):
        return self.snapshots.get((vm_uuid, disk_id, name))

    def snapshot_held_by_another(self, vm_uuid, disk_id, name):
        return self.held

    def image_name_exists(self, name):
        return name in self.names

    def image_server_unavailable(self):
        return self.server


def admin_of(dc: str = "main") -> policy.Access:
    user = UserRecord(id=2, username="alice", is_superadmin=False)
    return policy.Access(user, Grants(permissions={dc: frozenset({policy.ADMIN, policy.IMAGE_ADMIN})}))


def run(inventory=None, *, access=None, dc="main", vm="web01", snap="daily", name="from-snap", data=None):
    return snapshots.check(inventory or FakeInventory(), access=access or admin_of(), request_dc=dc, vm_ref=vm,
                           snapname=snap, name=name, data=data or {})


def refusal(**kwargs) -> tuple[int, str]:
    with pytest.raises(Refused) as caught:
        run(**kwargs)
    return caught.value.http_code, caught.value.detail


def test_a_valid_request_gets_the_original_defaults():
    plan = run(data={"desc": "nightly"})
    assert plan.vm.uuid == VM_UUID and plan.disk.disk_id == 1
    assert plan.values == {"desc": "nightly", "alias": "from-snap", "version": "1.0"}


def test_the_vm_can_be_named_by_uuid_and_the_disk_chosen():
    inventory = FakeInventory(snapshots={(VM_UUID, 2, "daily"): FakeSnapshot()})
    assert run(inventory, vm=VM_UUID, data={"disk_id": 2}).disk.disk_id == 2


def test_every_check_in_the_references_order():
    # Each case breaks one thing and everything that comes later: the first check must win.
    everything_wrong = dict(node_up=False, held=True, names={"from-snap"}, server="store",
                            snapshots={(VM_UUID, 1, "daily"): FakeSnapshot("pending")},
                            vm_record=FakeVm(status="notcreated"))
    assert refusal(access=admin_of("other"), inventory=FakeInventory(**everything_wrong)) == (403, "Permission denied")
    assert refusal(inventory=FakeInventory(**{**everything_wrong, "vm_record": None})) == (404, "VM not found")
    assert refusal(inventory=FakeInventory(**everything_wrong)) == (423, "Node is not operational")
    rest = {**everything_wrong, "node_up": True}
    assert refusal(inventory=FakeInventory(**rest), data={"disk_id": 3}) == (412, "Invalid disk_id")
    assert refusal(inventory=FakeInventory(**rest), snap="weekly") == (404, "Snapshot not found")
    assert refusal(inventory=FakeInventory(**rest)) == (406, "Image already exists")
    rest["names"] = set()
    with pytest.raises(Invalid) as caught:
        run(FakeInventory(**rest), data={"access": 7})
    assert list(caught.value.errors) == ["access"]
    assert refusal(inventory=FakeInventory(**rest)) == (428, "Image server is not available")
    rest["server"] = None
    assert refusal(inventory=FakeInventory(**rest)) == (423, "VM is not operational")
    rest["vm_record"] = FakeVm()
    assert refusal(inventory=FakeInventory(**rest)) == (417, "VM snapshot status is not OK")
    rest["snapshots"] = {(VM_UUID, 1, "daily"): FakeSnapshot()}
    assert refusal(inventory=FakeInventory(**rest)) == (417, "VM snapshot status is not OK")  # held by another task


def test_a_vm_of_another_datacenter_is_not_found():
    assert refusal(inventory=FakeInventory(vm_record=FakeVm(dc="other")), access=admin_of("main")) == (
        404, "VM not found")


@pytest.mark.parametrize("raw", [0, -1, "x", True, 1.5, "", [1], "-1", "\u00b2", "1" * 5000, 2**64])
def test_a_disk_id_that_is_not_a_positive_integer_is_412(raw):
    assert refusal(data={"disk_id": raw}) == (412, "Invalid disk_id")


def test_a_disk_id_given_as_digits_is_accepted():
    inventory = FakeInventory(snapshots={(VM_UUID, 2, "daily"): FakeSnapshot()})
    assert run(inventory, data={"disk_id": "2"}).disk.disk_id == 2


def test_the_image_is_never_given_dc_bound_or_dc_from_the_request():
    plan = run(data={"dc_bound": False, "dc": "elsewhere"})
    assert "dc_bound" not in plan.values and "dc" not in plan.values


def test_the_snapshot_lock_name_names_vm_disk_and_snapshot():
    assert snapshots.snapshot_lock_name(VM_UUID, 2, "daily") == f"snapshot:{VM_UUID}:2:daily"
