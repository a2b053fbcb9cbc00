"""The lease sweeper's decisions on an SQLite catalogue: a task whose image lease ran out while
its image was PENDING ends in ``lease_expired``, its image removed (a creation) or OK again (a
change), its locks and store leftovers gone; a live lease, or one renewed while the sweeper
looked, is left alone; a second sweep changes nothing."""

from __future__ import annotations

import os
import uuid as uuidlib
from pathlib import Path

import pytest

from sqlalchemy import select

from imagesvc.domain import images
from imagesvc.domain.snapshots import snapshot_lock_name
from imagesvc.services.sweeper.leases import LEASE_EXPIRED, LeaseSweeper
from imagesvc.shared.db import locks
from imagesvc.shared.db import events as store
from imagesvc.shared.db.catalogue import SqlCatalogue, image_lock_name
from imagesvc.shared.db.engine import read_transaction, write_transaction
from tests.support.leases import TASK, RecordingRelay, begin, task_events


def image(engine, uuid: str):
    with read_transaction(engine) as conn:
        return SqlCatalogue(conn).image_by_uuid(uuid)


def lock_names(engine) -> list[str]:
    with read_transaction(engine) as conn:
        return sorted(conn.execute(select(locks._locks.c.name)).scalars())


def the_failure(engine, command_id: str) -> dict:
    failed = [e for e in task_events(engine) if e["type"] == "task.failed"]
    assert len(failed) == 1, failed
    event = failed[0]
    assert event["causation_id"] == command_id  # the command's inbox: a redelivery is a duplicate
    assert event["reply_to"] == "gateway-1"
    assert event["payload"]["code"] == LEASE_EXPIRED and event["payload"]["http_code"] == 500
    assert "lease expired" in event["payload"]["result"]["detail"]
    with read_transaction(engine) as conn:
        assert store.was_handled(conn, command_id)
    return event


def test_an_abandoned_import_loses_its_image_and_partial_data(engine, owner, image_store):
    uuid, command_id = begin(engine, "image.import")
    with image_store.upload(uuid, TASK) as upload:
        upload.write(b"half a file")
    relay = RecordingRelay()
    swept = LeaseSweeper(engine, relay, image_store).sweep_once()
    assert [(s.task_id, s.command, s.image_uuid) for s in swept] == [(TASK, "image.import", uuid)]
    assert image(engine, uuid) is None
    assert lock_names(engine) == []
    assert not list(Path(image_store.root).rglob(f"{uuid}*"))
    failure = the_failure(engine, command_id)
    assert failure["payload"]["command"] == "image.import"
    assert [e["type"] for e in task_events(engine)][-2:] == ["image.deleted", "task.failed"]
    assert [row.type for row in relay.published] == ["image.deleted", "task.failed"]


def test_an_import_file_placed_by_hand_is_kept_only_the_import_is_undone(engine, owner, image_store):
    uuid, command_id = begin(engine, "image.import")
    with image_store.upload(uuid, "by-hand") as upload:
        upload.write(b"an operator's file")
        upload.commit()
    LeaseSweeper(engine, RecordingRelay(), image_store).sweep_once()
    assert image(engine, uuid) is None
    assert image_store.file_info(uuid) is not None  # no manifest: not the import's to remove
    the_failure(engine, command_id)


@pytest.mark.parametrize("file_url, kept", [("http://127.0.0.1:8080/images/{uuid}/file", True),
                                             ("https://repo.example.com/images/{uuid}/file", False), (None, False)])
def test_an_abandoned_imports_file_without_a_manifest_goes_unless_it_was_on_the_image_server(
        engine, owner, image_store, file_url, kept):
    """As the gateway journaled the import: a file URL on this image server means the file was
    put there before the import (kept), any other means the import downloaded it (removed)."""
    from imagesvc.shared.contracts import ImportImage
    from imagesvc.shared.store.server import ImageServer
    from tests.unit.test_serve_recovery import journal

    uuid, command_id = begin(engine, "image.import")
    extra = {"file_url": file_url.format(uuid=uuid)} if file_url else {}
    journal(engine, ImportImage(name="img", manifest_url=f"https://repo.example.com/images/{uuid}", dc="main", **extra))
    with image_store.upload(uuid, TASK) as upload:  # downloaded (or found) and in place, no manifest yet
        upload.write(b"the file")
        upload.commit()
    server = ImageServer(image_store, url="http://127.0.0.1:8080")
    LeaseSweeper(engine, RecordingRelay(), image_store, serves=server.serves).sweep_once()
    assert image(engine, uuid) is None
    assert (image_store.file_info(uuid) is not None) is kept
    assert not kept or os.listdir(image_store.image_dir(uuid)) == ["file"]
    the_failure(engine, command_id)


def test_an_abandoned_snapshot_image_loses_its_image_and_data_and_frees_the_snapshot(engine, owner, image_store):
    snapshot = snapshot_lock_name(str(uuidlib.uuid4()), 1, "snap1")
    uuid, command_id = begin(engine, "image.snapshot", extra_locks=[snapshot])
    with image_store.upload(uuid, TASK) as upload:
        upload.write(b"gzip...")
        upload.commit()
    LeaseSweeper(engine, RecordingRelay(), image_store).sweep_once()
    assert image(engine, uuid) is None
    assert image_store.file_info(uuid) is None
    assert lock_names(engine) == []
    the_failure(engine, command_id)


def test_an_abandoned_update_leaves_its_image_ok_with_the_stored_manifest_as_before(engine, owner, image_store):
    uuid, command_id = begin(engine, "image.update")
    image_store.write_manifest(uuid, {"uuid": uuid, "name": "img", "version": "2"})  # written before the crash
    LeaseSweeper(engine, RecordingRelay(), image_store).sweep_once()
    restored = image(engine, uuid)
    assert restored.status == images.STATUS_OK and restored.lock_owner is None and restored.stream_version == 2
    assert image_store.manifest(uuid) == restored.manifest_active
    assert lock_names(engine) == []
    the_failure(engine, command_id)
    updated = [e for e in task_events(engine) if e["type"] == "image.updated"]
    assert updated[-1]["payload"]["changed"] == ["status"] and updated[-1]["payload"]["image"]["status"] == 1


def test_an_abandoned_delete_leaves_its_image_ok(engine, owner):
    uuid, command_id = begin(engine, "image.delete")
    LeaseSweeper(engine, RecordingRelay(), None).sweep_once()
    assert image(engine, uuid).status == images.STATUS_OK
    assert lock_names(engine) == []
    the_failure(engine, command_id)


def stored_image(image_store, uuid: str) -> None:
    with image_store.upload(uuid, "t") as upload:
        upload.write(b"the image")
        upload.commit()
    image_store.write_manifest(uuid, {"uuid": uuid})


def trash(image_store) -> list[str]:
    directory = Path(image_store.root) / ".trash"
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def test_an_abandoned_delete_whose_data_was_moved_aside_gets_it_back(engine, owner, image_store, monkeypatch):
    uuid, command_id = begin(engine, "image.delete")
    stored_image(image_store, uuid)
    # The deleter died between moving the image's directory into .trash and emptying it.
    monkeypatch.setattr("imagesvc.shared.store.local.LocalStore._empty_removal", staticmethod(lambda path: False))
    image_store.delete(uuid)
    monkeypatch.undo()
    assert image_store.manifest(uuid) is None and len(trash(image_store)) == 1
    LeaseSweeper(engine, RecordingRelay(), image_store).sweep_once()
    assert image(engine, uuid).status == images.STATUS_OK
    assert image_store.manifest(uuid) == {"uuid": uuid}
    with image_store.open_file(uuid) as handle:
        assert handle.read() == b"the image"
    assert trash(image_store) == []
    the_failure(engine, command_id)


def test_an_abandoned_delete_whose_data_is_gone_is_finished(engine, owner, image_store):
    uuid, command_id = begin(engine, "image.delete")
    stored_image(image_store, uuid)
    # The deleter died while emptying the removal: its manifest (removed first) is gone.
    doomed = Path(image_store.root) / ".trash" / f"{uuid}.0123"
    doomed.parent.mkdir()
    Path(image_store.image_dir(uuid)).rename(doomed)
    (doomed / "manifest").unlink()
    relay = RecordingRelay()
    LeaseSweeper(engine, relay, image_store).sweep_once()
    assert image(engine, uuid) is None
    assert trash(image_store) == [] and not Path(image_store.image_dir(uuid)).exists()
    assert lock_names(engine) == []
    ended = [e for e in task_events(engine) if e["type"] in ("task.failed", "task.succeeded")]
    assert [(e["type"], e["causation_id"]) for e in ended] == [("task.succeeded", command_id)]
    assert ended[0]["payload"]["result"]["message"] == f"Successfully deleted image img-{uuid[:8]}"
    assert [row.type for row in relay.published] == ["image.deleted", "task.succeeded"]


def test_a_live_lease_is_left_alone(engine, owner, image_store):
    uuid, _ = begin(engine, "image.import", lease_left=+120)
    assert LeaseSweeper(engine, RecordingRelay(), image_store).sweep_once() == []
    assert image(engine, uuid).status == images.STATUS_PENDING
    assert image(engine, uuid).lock_owner == TASK
    assert [e["type"] for e in task_events(engine)] == ["image.imported", "task.started"]


def test_a_renewal_that_commits_while_the_sweeper_looks_wins(engine, owner, image_store):
    uuid, _ = begin(engine, "image.import")
    with read_transaction(engine) as conn:
        [seen] = locks.expired(conn, "image:")
    with write_transaction(engine) as conn:  # the holder was only slow: it renews now
        assert locks.acquire(conn, image_lock_name(uuid), TASK, 60)
    assert LeaseSweeper(engine, RecordingRelay(), image_store)._end(seen) is None
    assert image(engine, uuid).lock_owner == TASK
    assert [e["type"] for e in task_events(engine)] == ["image.imported", "task.started"]


def test_after_a_sweep_the_image_is_no_longer_its_holders(engine, owner):
    uuid, _ = begin(engine, "image.delete")
    LeaseSweeper(engine, RecordingRelay(), None).sweep_once()
    # The holder comes back: it renews a lock of an image that is no longer PENDING under it, and
    # its final transaction finds the image not its own (it fails with image_locked).
    current = image(engine, uuid)
    assert current.status == images.STATUS_OK and current.lock_owner is None


def test_sweeping_again_changes_nothing(engine, owner, image_store):
    begin(engine, "image.import")
    sweeper = LeaseSweeper(engine, RecordingRelay(), image_store)
    assert len(sweeper.sweep_once()) == 1
    before = task_events(engine)
    assert sweeper.sweep_once() == []
    assert task_events(engine) == before


def test_a_sweep_that_died_after_taking_the_lease_over_is_finished_by_the_next(engine, owner):
    uuid, command_id = begin(engine, "image.delete")
    with write_transaction(engine) as conn:  # a sweeper took it over, then died (its claim ran out)
        assert locks.take_over(conn, image_lock_name(uuid), owner=TASK, new_owner="swept:" + TASK,
                               lease_seconds=-1)
    LeaseSweeper(engine, RecordingRelay(), None).sweep_once()
    assert image(engine, uuid).status == images.STATUS_OK
    the_failure(engine, command_id)


def test_an_expired_lock_whose_image_is_settled_is_only_removed(engine, owner):
    uuid, _ = begin(engine, "image.update", status=images.STATUS_OK)
    assert LeaseSweeper(engine, RecordingRelay(), None).sweep_once() == []
    assert lock_names(engine) == []
    assert image(engine, uuid).status == images.STATUS_OK
    assert [e["type"] for e in task_events(engine)] == ["image.imported", "task.started"]


def test_the_read_model_of_swept_tasks_is_the_same_after_a_rebuild(engine, owner, image_store):
    """``imagesvc projector rebuild`` leaves the read model identical (covered in general by
    test_command_handling); here with the sweeper's events in the log."""
    from imagesvc.services.projector.handlers import apply, rebuild
    from imagesvc.shared.db.models import ReadImage, ReadStream, ReadTask
    from imagesvc.shared.handling import EventConsumer
    from tests.support.projection import project

    for index, command in enumerate(["image.import", "image.update", "image.delete", "image.snapshot"]):
        uuid, _ = begin(engine, command, task_id=f"1e1u1-{index:08d}-bbbb-cccc-dddd")
        if command == "image.delete":
            image_store.write_manifest(uuid, {"uuid": uuid})  # still there: the delete is undone
    begin(engine, "image.update", lease_left=+120, task_id="1e1u1-live0000-bbbb-cccc-dddd")
    assert len(LeaseSweeper(engine, RecordingRelay(), image_store).sweep_once()) == 4
    projector = EventConsumer(name="projector", engine=engine, apply=apply, notify=lambda note: None)
    with read_transaction(engine) as conn:
        bodies = [body for _, body in store.all_events(conn)]
    project(projector, bodies)

    def read_model():
        with read_transaction(engine) as conn:
            tasks = ReadTask.__table__
            return (sorted(tuple(r) for r in conn.execute(select(ReadImage.__table__))),
                    sorted(tuple(r) for r in conn.execute(select(ReadStream.__table__))),
                    sorted(tuple(r) for r in conn.execute(select(*[c for c in tasks.c if c.name != "updated_at"]))))

    live = read_model()
    assert len(live[0]) == 3  # the update's, the delete's and the live update's images
    assert sum(1 for row in live[2] if "FAILURE" in row) == 4
    with write_transaction(engine) as conn:
        assert rebuild(conn) == len(bodies)
    assert read_model() == live


def test_each_sweeper_action_is_counted_once(engine, owner):
    from prometheus_client import REGISTRY

    def counted(action):
        return REGISTRY.get_sample_value("imagesvc_sweeper_actions_total", {"action": action}) or 0.0

    before = {action: counted(action) for action in ("task_failed", "stale_lock_removed", "removal_finished")}
    begin(engine, "image.delete")  # its holder died: the task fails, the image stays
    sweeper = LeaseSweeper(engine, RecordingRelay(), None)
    sweeper.sweep_once()
    sweeper.sweep_once()  # nothing left to do: nothing counted
    begin(engine, "image.update", status=images.STATUS_OK, task_id=TASK + "-b")  # settled: only its lock goes
    sweeper.sweep_once()
    assert {action: counted(action) - before[action] for action in before} == \
        {"task_failed": 1, "stale_lock_removed": 1, "removal_finished": 0}
