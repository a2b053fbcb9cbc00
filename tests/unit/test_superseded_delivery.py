"""A command delivered again while its first delivery still runs (reliability plan C5: the
broker timed the delivery out, or the consumer's channel closed, and redelivered it while the
handler went on). While the first delivery's claim on the command lives, the redelivery waits
(deferred; then a duplicate of the first's outcome). Once that claim has lapsed (the first stopped
renewing it: its process stalled or lost the database), the redelivery takes the work over under a
new lease token; the first delivery, whenever it next touches the lease (progress, completion,
failure), stops without an outcome and without touching what the store holds for the image. One
task, one outcome, one verified file.

On SQLite, in process: the two deliveries run on two threads of one importer, each with its own
fetcher whose download the test holds at a gate, so the interleaving is chosen, not hoped for.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select, update

from imagesvc.domain import tasks
from imagesvc.services.importer.handlers import import_image
from imagesvc.services.importer.transfer import Limits
from imagesvc.shared import contracts
from imagesvc.shared.broker.consumer import Delivery, Outcome
from imagesvc.shared.contracts import Actor, ImportImage
from imagesvc.shared.db import accounts, locks
from imagesvc.shared.db.catalogue import image_lock_name
from imagesvc.shared.db.engine import read_transaction, write_transaction
from imagesvc.shared.db.models import Image, Lock, StoredEvent, TaskOwner
from imagesvc.shared.handling import CommandConsumer
from imagesvc.shared.store import LocalStore
from imagesvc.shared.store.server import ImageServer
from tests.support.leases import RecordingRelay
from tests.support.origin import sample_manifest

CONTENT = bytes(range(256)) * 4096 * 4  # 4 MiB
PIECE = 256 * 1024
MANIFEST_URL = "https://repo.example.com/images/{uuid}"
LIMITS = Limits(max_bytes=1 << 30, connect_timeout=5, idle_timeout=5, total_timeout=60)


class GatedFetcher:
    """Serves the manifest, and the file in pieces: after ``pause_after`` pieces the download
    waits for ``go`` (``started`` tells the test it got there)."""

    def __init__(self, manifest: dict, *, pause_after: int | None):
        self.manifest = manifest
        self.pause_after = pause_after
        self.started, self.go = threading.Event(), threading.Event()

    def get(self, url, *, max_bytes, timeout, truncate=False):
        return orjson.dumps(self.manifest) if not url.endswith("/file") else CONTENT[:max_bytes]

    def download(self, url, sink, *, max_bytes, connect_timeout, idle_timeout, total_timeout, chunk_size=1 << 20):
        for index, start in enumerate(range(0, len(CONTENT), PIECE)):
            if index == self.pause_after:
                self.started.set()
                assert self.go.wait(timeout=30), "the test never let the download go on"
            sink(CONTENT[start:start + PIECE])
        return len(CONTENT)


@pytest.fixture
def world(engine, tmp_path):
    with write_transaction(engine) as conn:
        accounts.create_user(conn, "root", api_key=None, is_superadmin=True)
    manifest = sample_manifest(files=[{"sha1": hashlib.sha1(CONTENT).hexdigest(), "size": len(CONTENT),
                                       "compression": "none"}])
    store = LocalStore(str(tmp_path / "store"))
    envelope = contracts.wrap(ImportImage(name="img", manifest_url=MANIFEST_URL.format(uuid=manifest["uuid"]),
                                          dc="main"),
                              correlation_id=tasks.new_task_id(user_id=1, owner_id=1, dc_id=1),
                              actor=Actor(user="root", dc="main"))
    return engine, store, manifest, envelope


def consumer(engine, store, fetcher) -> CommandConsumer:
    # Claims renewed every 100 s: within a test, a claim lapses only when the test expires it.
    return CommandConsumer(name="importer", engine=engine, relay=RecordingRelay(), check_first=True,
                           routes={"image.import": functools.partial(import_image, fetcher=fetcher,
                                                                     server=ImageServer(store), limits=LIMITS)},
                           claim_seconds=300)


def lapse_claim(engine, task_id: str) -> None:
    """The first delivery stopped renewing its claim (a stalled process, the database away)."""
    with write_transaction(engine) as conn:
        conn.execute(update(TaskOwner.__table__).where(TaskOwner.__table__.c.task_id == task_id)
                     .values(claim_expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))


def delivery(envelope, attempt: int) -> Delivery:
    return Delivery(body=contracts.encode(envelope), queue="importer.commands", headers={}, message_id=envelope.id,
                    correlation_id=envelope.correlation_id, message_type=envelope.type, user_id=None,
                    redelivered=attempt > 1, attempt=attempt)


def outcome_of(engine, task_id: str) -> list[str]:
    with read_transaction(engine) as conn:
        return list(conn.execute(select(StoredEvent.type).where(
            StoredEvent.correlation_id == task_id, StoredEvent.type.in_(["task.succeeded", "task.failed"]))).scalars())


def final_state(engine, store, uuid: str):
    """(image status, leases held, the stored file is the content, partial files left)."""
    with read_transaction(engine) as conn:
        status = conn.execute(select(Image.status).where(Image.uuid == uuid)).scalar()
        held = conn.execute(select(func.count()).select_from(Lock)).scalar_one()
    stored = store.file_path(uuid)
    content_ok = stored is not None and Path(stored).read_bytes() == CONTENT
    partial = Path(store.root) / ".partial"
    return status, held, content_ok, sorted(partial.iterdir()) if partial.is_dir() else []


@pytest.mark.parametrize("first_resumes", ["after the second finished", "while the second still runs"])
def test_a_redelivery_takes_over_and_the_first_delivery_ends_without_an_outcome(world, first_resumes):
    engine, store, manifest, envelope = world
    first = GatedFetcher(manifest, pause_after=2)
    second = GatedFetcher(manifest, pause_after=None if first_resumes == "after the second finished" else 4)
    with ThreadPoolExecutor(2) as pool:
        first_done = pool.submit(consumer(engine, store, first), delivery(envelope, 1))
        assert first.started.wait(timeout=30)  # the first delivery is mid-download...
        lapse_claim(engine, envelope.correlation_id)  # ...its claim lapses...
        second_done = pool.submit(consumer(engine, store, second), delivery(envelope, 2))  # ...and it comes again
        if first_resumes == "after the second finished":
            assert second_done.result(timeout=60).outcome is Outcome.ACK
            first.go.set()
        else:
            assert second.started.wait(timeout=30)
            first.go.set()
            first_done.result(timeout=60)  # the first ends while the second is still mid-download
            second.go.set()
            assert second_done.result(timeout=60).outcome is Outcome.ACK
        first_result = first_done.result(timeout=60)
    # Ended without an outcome of its own: superseded, or, when the task had already ended by
    # the time it looked, a duplicate of the delivery that ended it.
    expected = "duplicate" if first_resumes == "after the second finished" else "superseded"
    assert (first_result.outcome, first_result.reason) == (Outcome.ACK, expected)
    assert outcome_of(engine, envelope.correlation_id) == ["task.succeeded"]
    status, held, content_ok, partials = final_state(engine, store, manifest["uuid"])
    assert (status, held, content_ok, partials) == (1, 0, True, [])


def test_the_lease_token_changes_when_the_same_owner_takes_the_lock_again(engine):
    name = image_lock_name("0f0e0d0c-0b0a-4909-8807-060504030201")
    with write_transaction(engine) as conn:
        first = locks.take(conn, name, "task", 60)
    with write_transaction(engine) as conn:
        assert locks.renew(conn, name, "task", 60, since=first)
        second = locks.take(conn, name, "task", 60)
    assert first is not None and second is not None and second != first
    with write_transaction(engine) as conn:
        assert not locks.renew(conn, name, "task", 60, since=first)  # superseded
        assert locks.renew(conn, name, "task", 60, since=second)
        assert locks.renew(conn, name, "task", 60)  # without a token: any delivery of the task
        assert not locks.renew(conn, name, "another task", 60)


def test_a_copy_delivered_while_the_first_delivery_runs_waits_for_it_and_is_then_a_duplicate(world):
    """Issue 12's lost import: a second copy that ran its checks then saw the first copy's work and
    recorded a refusal (406) as the task's outcome. Now it does not run: deferred while the first
    holds its claim, a duplicate once the first has its outcome."""
    engine, store, manifest, envelope = world
    first = GatedFetcher(manifest, pause_after=2)
    copy = GatedFetcher(manifest, pause_after=None)
    with ThreadPoolExecutor(1) as pool:
        first_done = pool.submit(consumer(engine, store, first), delivery(envelope, 1))
        assert first.started.wait(timeout=30)
        held = consumer(engine, store, copy)(delivery(envelope, 1))
        assert (held.outcome, held.reason) == (Outcome.DEFER, "another delivery of this command is handling it")
        assert outcome_of(engine, envelope.correlation_id) == []  # it decided nothing
        first.go.set()
        assert first_done.result(timeout=60).outcome is Outcome.ACK
    again = consumer(engine, store, copy)(delivery(envelope, 1))
    assert (again.outcome, again.reason) == (Outcome.ACK, "duplicate")
    assert outcome_of(engine, envelope.correlation_id) == ["task.succeeded"]
    assert final_state(engine, store, manifest["uuid"]) == (1, 0, True, [])
