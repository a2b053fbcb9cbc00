"""Lease sweepers racing each other and the leases' holders on PostgreSQL (row locks, READ
COMMITTED): every abandoned task ends exactly once, and a lease renewed before a sweeper took it
over is never swept. Sizes come from the tier (``tests.support.tier.scaled``)."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from imagesvc.domain import images
from imagesvc.services.sweeper.leases import LeaseSweeper
from imagesvc.shared.db import accounts, locks
from imagesvc.shared.db.catalogue import SqlCatalogue, image_lock_name
from imagesvc.shared.db.engine import read_transaction, write_transaction
from imagesvc.shared.db.models import StoredEvent
from tests.support.leases import RecordingRelay, begin
from tests.support.services import migrated_engine
from tests.support.tier import scaled

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def engine(postgres_admin_url: str):
    with migrated_engine(postgres_admin_url, pool_size=12) as engine:
        with write_transaction(engine) as conn:
            accounts.create_user(conn, "admin", api_key=None, is_superadmin=True)
        yield engine


def task_id() -> str:
    return f"1e1u1-{uuid.uuid4().hex[:8]}-aaaa-bbbb-cccc"


def outcomes(engine, tasks: list[str]) -> Counter:
    with read_transaction(engine) as conn:
        found = conn.execute(select(StoredEvent.correlation_id).where(
            StoredEvent.correlation_id.in_(tasks), StoredEvent.type.in_(["task.failed", "task.succeeded"]))).scalars()
        return Counter(found)


def test_concurrent_sweepers_end_each_abandoned_task_once(engine):
    count = scaled(ci=24, nightly=400)
    commands = ["image.import", "image.update", "image.delete", "image.snapshot"]
    tasks = [task_id() for _ in range(count)]
    uuids = [begin(engine, commands[i % 4], task_id=task)[0] for i, task in enumerate(tasks)]
    sweepers = [LeaseSweeper(engine, RecordingRelay(), None, batch=count) for _ in range(4)]
    barrier = threading.Barrier(len(sweepers))

    def sweep(sweeper):
        barrier.wait()
        return sweeper.sweep_once()

    with ThreadPoolExecutor(len(sweepers)) as pool:
        swept = [s for result in pool.map(sweep, sweepers) for s in result]
    assert sorted(s.task_id for s in swept) == sorted(tasks)  # each by one sweeper only
    assert outcomes(engine, tasks) == Counter({task: 1 for task in tasks})
    with read_transaction(engine) as conn:
        catalogue = SqlCatalogue(conn)
        for index, image_uuid in enumerate(uuids):
            image = catalogue.image_by_uuid(image_uuid)
            if commands[index % 4] in ("image.import", "image.snapshot"):
                assert image is None
            else:
                assert image.status == images.STATUS_OK
        assert locks.expired(conn, "image:", limit=10_000) == []


@pytest.mark.nightly
def test_renewals_racing_sweepers_always_win_when_they_commit_first(engine):
    """Holders renew their expired leases while a sweeper sweeps, round after round: a lease
    renewed before the sweeper took it over stays its holder's (image PENDING, no outcome); a
    swept one has its image settled and one outcome, even if its holder "renews" afterwards (that
    only re-creates a lock row: the holder's final transaction then finds its task ended and
    rolls back). Never neither."""
    for _round in range(scaled(ci=5, nightly=200)):
        tasks = [task_id() for _ in range(8)]
        uuids = [begin(engine, "image.update", task_id=task)[0] for task in tasks]
        barrier = threading.Barrier(2)

        def renew_all():
            barrier.wait()
            renewed = set()
            for task, image_uuid in zip(tasks, uuids):
                with write_transaction(engine) as conn:
                    if locks.acquire(conn, image_lock_name(image_uuid), task, 60):
                        renewed.add(task)
            return renewed

        def sweep():
            barrier.wait()
            return {s.task_id for s in LeaseSweeper(engine, RecordingRelay(), None, batch=100).sweep_once()}

        with ThreadPoolExecutor(2) as pool:
            renewing, sweeping = pool.submit(renew_all), pool.submit(sweep)
            renewed, swept = renewing.result(), sweeping.result()
        assert renewed | swept == set(tasks), (renewed, swept)
        ended = outcomes(engine, tasks)
        with read_transaction(engine) as conn:
            catalogue = SqlCatalogue(conn)
            for task, image_uuid in zip(tasks, uuids):
                image = catalogue.image_by_uuid(image_uuid)
                if task in swept:
                    assert image.status == images.STATUS_OK and ended[task] == 1
                else:
                    assert image.status == images.STATUS_PENDING and image.lock_owner == task and not ended[task]
        with write_transaction(engine) as conn:  # the holders finish for real, out of the next round's way
            for task, image_uuid in zip(tasks, uuids):
                locks.release(conn, image_lock_name(image_uuid), task)
