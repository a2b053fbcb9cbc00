"""shared.db.vms on PostgreSQL: concurrent writers of one VM, of one hostname, and a VM removal
racing its snapshots' writers leave the newest facts (SQLite serialises writers; PostgreSQL does not)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from imagesvc.shared.db import vms
from imagesvc.shared.db.engine import read_transaction, write_transaction
from imagesvc.shared.db.vms import Disk, SnapshotRecord, VmRecord
from tests.integration.test_postgres import race
from tests.support.services import migrated_engine

pytestmark = pytest.mark.postgres

START = datetime(2026, 11, 27, 10, tzinfo=timezone.utc)
IMAGE = "6f0b3a1e-7c2d-4e5f-8a9b-0c1d2e3f4a5b"


@pytest.fixture(scope="module")
def engine(postgres_admin_url: str):
    with migrated_engine(postgres_admin_url, pool_size=20) as engine:
        yield engine


def vm(uuid_: str, hostname: str, at: datetime, status: str = "running") -> VmRecord:
    return VmRecord(uuid=uuid_, hostname=hostname, dc="main", node="cn1", status=status, ostype=1,
                    disks=(Disk(1, 10240, IMAGE),), changed_at=at)


def read(engine, work):
    with read_transaction(engine) as conn:
        return work(conn)


def test_concurrent_facts_about_one_vm_leave_the_newest(engine):
    key = str(uuid.uuid4())

    def write(index: int) -> bool:
        with write_transaction(engine) as conn:
            return vms.put_vm(conn, vm(key, f"h-{key[:8]}", START + timedelta(seconds=index), f"status-{index}"))

    race(8, write)
    assert read(engine, lambda conn: vms.get_vm(conn, key)).status == "status-7"


def test_vms_racing_for_one_hostname_end_with_the_newest_claim_holding_it(engine):
    hostname = f"web-{uuid.uuid4().hex[:8]}"
    keys = [str(uuid.uuid4()) for _ in range(6)]

    def write(index: int) -> bool:
        with write_transaction(engine) as conn:
            return vms.put_vm(conn, vm(keys[index], hostname, START + timedelta(seconds=index)))

    assert race(6, write) == [True] * 6  # every VM is stored, whatever the hostname
    assert read(engine, lambda conn: vms.get_vm(conn, hostname)).uuid == keys[5]
    for key in keys[:5]:
        waiting = read(engine, lambda conn, k=key: vms.get_vm(conn, k))
        assert waiting.hostname == key and waiting.disks == (Disk(1, 10240, IMAGE),)
    assert len(read(engine, lambda conn: vms.vms_using_image(conn, IMAGE, ["main"]))) >= 6


def test_a_vm_removal_racing_its_snapshot_writers_leaves_no_older_snapshot(engine):
    key = str(uuid.uuid4())
    with write_transaction(engine) as conn:
        vms.put_vm(conn, vm(key, f"s-{key[:8]}", START))
    removed_at = START + timedelta(seconds=30)

    def write(index: int) -> bool:
        with write_transaction(engine) as conn:
            if index == 0:
                return vms.remove_vm(conn, key, removed_at)
            return vms.put_snapshot(conn, SnapshotRecord(vm_uuid=key, disk_id=1, name=f"snap{index}", status="ok",
                                                         changed_at=START + timedelta(seconds=index)))

    race(8, write)
    assert read(engine, lambda conn: vms.list_snapshots(conn, key)) == []
    assert read(engine, lambda conn: vms.get_vm(conn, key)) is None


def test_a_holder_updating_itself_while_another_vm_claims_its_hostname_does_not_deadlock(engine):
    hostname = f"db-{uuid.uuid4().hex[:8]}"
    holder, claimant = str(uuid.uuid4()), str(uuid.uuid4())
    with write_transaction(engine) as conn:
        vms.put_vm(conn, vm(holder, hostname, START))

    def write(index: int) -> bool:
        with write_transaction(engine) as conn:
            if index == 0:
                return vms.put_vm(conn, vm(claimant, hostname, START + timedelta(seconds=100)))
            return vms.put_vm(conn, vm(holder, hostname, START + timedelta(seconds=index), f"status-{index}"))

    assert race(6, write)[0] is True
    assert read(engine, lambda conn: vms.get_vm(conn, hostname)).uuid == claimant
    assert read(engine, lambda conn: vms.get_vm(conn, holder)).hostname == holder
