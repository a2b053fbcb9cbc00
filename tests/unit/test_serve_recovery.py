"""``serve``'s start-up recovery (``services.sweeper.recovery``) on an SQLite catalogue: a journaled
command without an outcome is published again under its message id and its leases renewed; what
cannot be resumed ends ``interrupted`` (500) at once, its image undone as the lease sweeper undoes
it, whatever time its lease had left; a second run changes nothing. Then the wiring: ``Embedded``
recovers before its consumers run, only on the in-memory broker, and ``serve`` locks its database."""

from __future__ import annotations

import dataclasses
import shutil
import uuid as uuidlib
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select

from imagesvc.domain import images, tasks
from imagesvc.domain.snapshots import snapshot_lock_name
from imagesvc import bootstrap
from imagesvc.cli import _lock_database
from imagesvc.services.gateway.queries import Queries
from imagesvc.services.sweeper.leases import INTERRUPTED, LeaseSweeper
from imagesvc.services.sweeper.recovery import StartupRecovery
from imagesvc.shared import contracts
from imagesvc.shared.contracts import Actor, CreateImageFromSnapshot, ImportImage, UpdateImage
from imagesvc.shared.db import accounts, locks
from imagesvc.shared.db import events as store
from imagesvc.shared.db.catalogue import SqlCatalogue, image_lock_name
from imagesvc.shared.db.engine import read_transaction, write_transaction
from imagesvc.shared.db.models import Lock, SubmittedCommand, utcnow
from imagesvc.shared.errors import PublishFailed
from imagesvc.shared.config import Settings
from tests.support.leases import TASK, RecordingRelay, begin, task_events
from tests.support.polling import eventually

EXCHANGE = "imagesvc.commands"
CONSUMED = {"image.import", "image.update", "image.delete", "image.snapshot@cn1"}


class RecordingPublisher:
    def __init__(self, fail: bool = False):
        self.published: list[dict] = []
        self._fail = fail

    def publish(self, **message) -> None:
        if self._fail:
            raise PublishFailed("the broker is away")
        self.published.append(message)


def journal(engine, command, *, task_id: str = TASK, routing_key: str | None = None, keep_command: bool = True) -> str:
    """Journal ``command`` as the gateway does when it answers 201; returns its message id."""
    envelope = contracts.wrap(command, correlation_id=task_id, actor=Actor(user="admin", dc="main"),
                              reply_to="gateway-1")
    Queries(engine).record_submission(message_id=envelope.id, task_id=task_id, command_type=command.TYPE,
                                      object_name=command.name, user="admin", owner="admin", dc="main",
                                      routing_key=routing_key or command.TYPE, body=contracts.encode(envelope))
    if not keep_command:  # as journaled before the journal kept commands
        with write_transaction(engine) as conn:
            conn.execute(SubmittedCommand.__table__.update().values(routing_key=None, body=None))
    return envelope.id


def recovery(engine, image_store, publisher=None, relay=None) -> StartupRecovery:
    relay = relay or RecordingRelay()
    return StartupRecovery(engine, relay, LeaseSweeper(engine, relay, image_store), image_store,
                           publisher or RecordingPublisher(), exchange=EXCHANGE, consumed=CONSUMED, lease_seconds=600)


def lease(engine, name: str) -> locks.LockHolder | None:
    with read_transaction(engine) as conn:
        return locks.holder(conn, name)


def image(engine, uuid: str):
    with read_transaction(engine) as conn:
        return SqlCatalogue(conn).image_by_uuid(uuid)


def outcome(engine, task_id: str = TASK) -> dict:
    ended = [e for e in task_events(engine, task_id) if e["type"] in ("task.succeeded", "task.failed")]
    assert len(ended) == 1, ended
    return ended[0]


def test_an_accepted_import_is_published_again_under_its_message_id_and_keeps_its_lease(engine, owner,
                                                                                          image_store):
    uuid, _ = begin(engine, "image.import", lease_left=-30)  # its lease even ran out while serve was down
    message_id = journal(engine, ImportImage(name="img", manifest_url="http://origin/m", dc="main"))
    with image_store.upload(uuid, f"{TASK}.dead") as upload:
        upload.write(b"what the dead process wrote")
    publisher = RecordingPublisher()

    done = recovery(engine, image_store, publisher).run()

    assert (done.resumed, done.failed) == ([TASK], [])
    [sent] = publisher.published
    assert (sent["exchange"], sent["routing_key"], sent["message_id"], sent["correlation_id"], sent["message_type"]) \
        == (EXCHANGE, "image.import", message_id, TASK, "image.import")
    envelope = contracts.decode(sent["body"])
    assert envelope.id == message_id and envelope.reply_to is None  # the gateway that waited is gone
    assert envelope.payload == {"name": "img", "manifest_url": "http://origin/m", "dc": "main"}
    assert envelope.actor == Actor(user="admin", dc="main")
    held = lease(engine, image_lock_name(uuid))
    assert held.owner == TASK and held.expires_at > utcnow() + timedelta(seconds=590)  # no sweep takes it first
    assert image(engine, uuid).status == images.STATUS_PENDING  # left to its command, which starts the file over
    assert not list(Path(image_store.root, ".partial").iterdir())  # the dead attempt's partial file
    assert [e["type"] for e in task_events(engine)] == ["image.imported", "task.started"]


def test_a_task_that_cannot_be_resumed_is_undone_at_once_though_its_lease_had_time_left(engine, owner, image_store):
    # Published, started, never answered (no journal row): the sweeper's way, without waiting.
    uuid, command_id = begin(engine, "image.import", lease_left=+500)
    with image_store.upload(uuid, TASK) as upload:
        upload.write(b"half a file")
    relay = RecordingRelay()

    done = recovery(engine, image_store, relay=relay).run()

    assert (done.resumed, done.failed) == ([], [TASK])
    assert image(engine, uuid) is None
    assert not list(Path(image_store.root).rglob(f"{uuid}*"))
    failed = outcome(engine)
    assert failed["causation_id"] == command_id  # the command's inbox: were it to come back, a duplicate
    payload = failed["payload"]
    assert (payload["code"], payload["http_code"], payload["command"]) == (INTERRUPTED, 500, "image.import")
    assert payload["result"] == {"detail": "Internal error: the image.import task stopped (imagesvc serve stopped "
                                           "while it ran); nothing was changed, try again"}
    assert [row.type for row in relay.published] == ["image.deleted", "task.failed"]


def test_a_snapshot_image_for_a_node_whose_agent_is_not_here_fails_and_frees_its_snapshot(engine, owner,
                                                                                           image_store):
    snapshot = snapshot_lock_name(str(uuidlib.uuid4()), 1, "daily")
    uuid, _ = begin(engine, "image.snapshot", lease_left=+500, extra_locks=[snapshot])
    journal(engine, CreateImageFromSnapshot(name="img", vm=str(uuidlib.uuid4()), snapshot="daily"),
            routing_key="image.snapshot@cn2")
    publisher = RecordingPublisher()

    done = recovery(engine, image_store, publisher).run()

    assert (done.resumed, done.failed, publisher.published) == ([], [TASK], [])
    assert image(engine, uuid) is None
    assert lease(engine, snapshot) is None
    assert outcome(engine)["payload"]["code"] == INTERRUPTED


def test_a_journaled_task_without_a_lease_or_its_command_fails_once(engine, owner, image_store):
    message_id = journal(engine, UpdateImage(name="img", desc="x"), keep_command=False)
    relay = RecordingRelay()

    assert recovery(engine, image_store, relay=relay).run().failed == [TASK]

    failed = outcome(engine)
    assert failed["causation_id"] == message_id and failed["actor"] == {"user": "admin", "dc": "main"}
    assert (failed["payload"]["code"], failed["payload"]["command"], failed["payload"]["object_name"],
            failed["payload"]["owner"]) == (INTERRUPTED, "image.update", "img", "admin")
    assert [row.type for row in relay.published] == ["task.failed"]
    again = recovery(engine, image_store).run()  # the next start finds it ended
    assert (again.resumed, again.failed) == ([], [])
    assert len(task_events(engine)) == 1


def test_a_command_that_cannot_be_published_again_is_failed_instead(engine, owner, image_store):
    uuid, _ = begin(engine, "image.update", lease_left=+500)
    journal(engine, UpdateImage(name="img", desc="x"))

    done = recovery(engine, image_store, RecordingPublisher(fail=True)).run()

    assert (done.resumed, done.failed) == ([], [TASK])
    assert image(engine, uuid).status == images.STATUS_OK  # a change undone: OK again
    assert outcome(engine)["payload"]["code"] == INTERRUPTED


def test_a_task_with_its_outcome_or_being_swept_is_not_published_again(engine, owner, image_store):
    ended_task = "1e1u1-eeeeeeee-bbbb-cccc-dddd"
    journal(engine, UpdateImage(name="done", desc="x"), task_id=ended_task)
    with write_transaction(engine) as conn:
        store.append(conn, [(contracts.wrap(contracts.TaskSucceeded(
            task_id=ended_task, command="image.update", object_name="done", user="admin", owner="admin", dc="main",
            result=None, http_code=200), correlation_id=ended_task), None)])
    # A sweep that died half way: it had taken the lease over (``swept:<task>``).
    uuid, _ = begin(engine, "image.import", lease_left=+500)
    journal(engine, ImportImage(name="img", manifest_url="http://origin/m", dc="main"))
    with write_transaction(engine) as conn:
        conn.execute(Lock.__table__.update().where(Lock.__table__.c.owner == TASK).values(owner=f"swept:{TASK}"))
    publisher = RecordingPublisher()

    done = recovery(engine, image_store, publisher).run()

    assert (done.resumed, done.failed, publisher.published) == ([], [TASK], [])
    assert image(engine, uuid) is None and outcome(engine)["payload"]["code"] == INTERRUPTED
    assert len(task_events(engine, ended_task)) == 1


def test_stale_locks_run_out_and_the_stores_leftovers_go(engine, owner, image_store):
    with write_transaction(engine) as conn:
        assert locks.acquire(conn, "imagestore-update", "a-refresh-nobody-answered", 600)
    with image_store.upload(str(uuidlib.uuid4()), "orphan") as upload:
        upload.write(b"x")
    trash = Path(image_store.root, ".trash", f"{uuidlib.uuid4()}.0123")
    (trash / "file").parent.mkdir(parents=True)
    (trash / "file").write_bytes(b"half removed")

    recovery(engine, image_store).run()

    assert lease(engine, "imagestore-update") is None  # run out: free to take
    assert not list(Path(image_store.root, ".partial").iterdir())
    assert not list(Path(image_store.root, ".trash").iterdir())


# --- the wiring ------------------------------------------------------------------------------


@pytest.fixture
def embedded_settings(sqlite_template, tmp_path):
    database = tmp_path / "imagesvc.db"
    shutil.copy(sqlite_template, database)
    return Settings.from_env({"IMAGESVC_DATA_DIR": str(tmp_path), "IMAGESVC_FETCH_ALLOW": "127.0.0.1"},
                             embedded=True, database_url=f"sqlite:///{database}",
                             topology_prefix=f"r{uuidlib.uuid4().hex[:8]}.")


def test_embedded_resumes_an_accepted_import_and_ends_an_abandoned_one_before_its_consumers_run(
        embedded_settings, origin):
    infra = bootstrap.infrastructure(embedded_settings, purpose="embedded")
    engine = infra.engine
    with write_transaction(engine) as conn:
        accounts.create_user(conn, "admin", api_key=None, is_superadmin=True)
    abandoned, _ = begin(engine, "image.import", lease_left=+500)
    content = b"an image file" * 1000
    url, manifest = origin.add_image(content)
    accepted = tasks.new_task_id(user_id=1, owner_id=1, dc_id=1)
    journal(engine, ImportImage(name="resumed", manifest_url=url, dc="main"), task_id=accepted)
    embedded = bootstrap.Embedded(infra)
    try:
        embedded.start()
        assert outcome(engine, TASK)["payload"]["code"] == INTERRUPTED  # ended before any consumer ran
        assert image(engine, abandoned) is None

        def imported() -> dict:
            return outcome(engine, accepted)

        assert eventually(imported, timeout=30)["type"] == "task.succeeded"
        assert image(engine, manifest["uuid"]).status == images.STATUS_OK
        assert Path(embedded_settings.image_store, manifest["uuid"], "file").read_bytes() == content
    finally:
        embedded.stop()
        infra.close()


def test_recovery_is_for_the_in_memory_broker_only(embedded_settings, monkeypatch):
    on_rabbitmq = dataclasses.replace(embedded_settings, broker_url="amqp://guest:guest@127.0.0.1:1//")
    infra = bootstrap.infrastructure(on_rabbitmq, purpose="embedded")
    ran = []
    monkeypatch.setattr(StartupRecovery, "run", lambda self: ran.append(self))
    embedded = bootstrap.Embedded(infra)
    try:
        embedded.start()
        with pytest.raises(RuntimeError, match="in-memory broker"):
            embedded.recover()
    finally:
        embedded.stop()
        infra.close()
    assert ran == []


def test_serve_holds_its_database_so_that_a_second_serve_refuses_to_start(embedded_settings, capsys):
    first = _lock_database(embedded_settings)
    assert first is not None
    try:
        assert _lock_database(embedded_settings) is None
        assert "another imagesvc serve is running on this database" in capsys.readouterr().err
    finally:
        first.close()
    again = _lock_database(embedded_settings)
    assert again is not None
    again.close()


def test_the_journal_keeps_the_command_as_published(engine):
    message_id = journal(engine, ImportImage(name="img", manifest_url="http://origin/m", dc="main"),
                         routing_key="image.import")
    with read_transaction(engine) as conn:
        row = conn.execute(select(SubmittedCommand.__table__)).one()
    assert (row.message_id, row.routing_key) == (message_id, "image.import")
    assert orjson.loads(row.body)["reply_to"] == "gateway-1"
