"""The store sweep and ``imagesvc store check`` on an SQLite catalogue: what no live task owns goes,
a PENDING image's temporaries stay (live lease or not), an orphaned directory is removed only
under the image's lease, a file staged by hand and names imagesvc never writes are kept, and an
OK image whose files are missing or wrong is reported."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import uuid as uuidlib
from pathlib import Path

import pytest

from imagesvc.domain import images
from imagesvc.services.sweeper import garbage
from imagesvc.shared.db import locks
from imagesvc.shared.db.catalogue import SqlCatalogue, image_lock_name
from imagesvc.shared.db.engine import read_transaction, write_transaction
from tests.support.leases import begin
from tests.support.records import image_record


def ok_image(engine, store, data: bytes = b"the image file") -> str:
    """An OK image with its files in the store, its manifest the catalogue's."""
    uuid = str(uuidlib.uuid4())
    manifest = {"uuid": uuid, "files": [{"sha1": hashlib.sha1(data).hexdigest(), "size": len(data)}]}
    with write_transaction(engine) as conn:
        SqlCatalogue(conn).insert_image(image_record(uuid=uuid, name=f"ok-{uuid[:8]}", alias=f"ok-{uuid[:8]}",
                                                     manifest=manifest, manifest_active=manifest, dcs=[]))
    with store.upload(uuid, "t") as upload:
        upload.write(data)
        upload.commit()
    store.write_manifest(uuid, manifest)
    return uuid


def leftovers(store, uuid: str) -> dict[str, Path]:
    """A partial file, a manifest's temporary and a removal left half done, of ``uuid``."""
    root = Path(store.root)
    store.upload(uuid, f"1e1u1-aaaaaaaa-bbbb-cccc-dddd.{os.urandom(4).hex()}").write(b"half")
    made = {"partial": next((root / ".partial").glob(f"{uuid}.*"))}
    made["manifest_temp"] = root / uuid / ".manifest.0123abcd"
    made["manifest_temp"].parent.mkdir(exist_ok=True)
    made["manifest_temp"].write_text("{")
    made["trash"] = root / ".trash" / f"{uuid}.4567cdef"
    made["trash"].mkdir(parents=True)
    (made["trash"] / "file").write_bytes(b"old")
    return made


def findings(check: garbage.Check, kind: str) -> dict[str, garbage.Finding]:
    return {found.path: found for found in check.findings if found.finding == kind}


def test_the_temporaries_of_settled_images_go_those_of_pending_ones_stay(engine, owner, image_store):
    ok = ok_image(engine, image_store)
    live, _ = begin(engine, "image.import", lease_left=+120, task_id="1e1u1-11111111-bbbb-cccc-dddd")
    expired, _ = begin(engine, "image.update", lease_left=-5, task_id="1e1u1-22222222-bbbb-cccc-dddd")
    gone = str(uuidlib.uuid4())  # no record: its task ended (or its record was removed)
    made = {uuid: leftovers(image_store, uuid) for uuid in (ok, live, expired, gone)}
    (Path(image_store.root) / gone / ".manifest.0123abcd").unlink()  # only .partial and .trash for it
    (Path(image_store.root) / gone).rmdir()

    swept = garbage.check(engine, image_store, repair=True, verify=False)

    removed = findings(swept, garbage.GARBAGE)
    assert all(found.removed for found in removed.values())
    relative = {uuid: {kind: str(path.relative_to(image_store.root)) for kind, path in paths.items()}
                for uuid, paths in made.items()}
    assert set(removed) == {*relative[ok].values(), relative[gone]["partial"], relative[gone]["trash"]}
    assert removed[relative[ok]["trash"]].why == "a removal left half done of an image that is OK: its writer has ended"
    assert removed[relative[gone]["partial"]].why == (
        "a partial file of an image that has no record: its writer has ended")
    for uuid in (live, expired):  # their task's, or the lease sweeper's to clean
        assert all(path.exists() for path in made[uuid].values())
    assert [(f.finding, f.image) for f in swept.findings if f.finding != garbage.GARBAGE] == [
        (garbage.STALLED, expired)]
    assert sorted(os.listdir(image_store.image_dir(ok))) == ["file", "manifest"]
    assert garbage.check(engine, image_store, repair=True, verify=False).removed == 0  # nothing left


def test_without_repair_nothing_is_removed(engine, owner, image_store):
    ok = ok_image(engine, image_store)
    made = leftovers(image_store, ok)
    found = garbage.check(engine, image_store, repair=False, verify=False)
    assert len(findings(found, garbage.GARBAGE)) == 3 and found.removed == 0 and found.problems == 3
    assert all(path.exists() for path in made.values())


def test_an_orphaned_directory_goes_a_staged_file_and_unknown_names_stay(engine, owner, image_store):
    orphan, staged = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    image_store.write_manifest(orphan, {"uuid": orphan})
    with image_store.upload(staged, "by-hand") as upload:
        upload.write(b"an operator's file")
        upload.commit()
    (Path(image_store.root) / "README").write_text("ours")

    swept = garbage.check(engine, image_store, repair=True, verify=False)

    assert [(f.path, f.removed) for f in swept.findings if f.finding == garbage.GARBAGE] == [(orphan, True)]
    assert not os.path.exists(image_store.image_dir(orphan))
    assert list(findings(swept, garbage.STAGED)) == [staged] and image_store.file_info(staged) is not None
    assert list(findings(swept, garbage.UNKNOWN)) == ["README"]
    with read_transaction(engine) as conn:  # the sweep's hold on the uuid is gone with the directory
        assert locks.owners(conn) == set()
    assert swept.problems == 0


def test_an_orphaned_directory_whose_uuid_an_import_holds_is_left_to_the_import(engine, owner, image_store):
    uuid = str(uuidlib.uuid4())
    image_store.write_manifest(uuid, {"uuid": uuid})
    with write_transaction(engine) as conn:  # recorded after the sweep looked: its lease shows it
        assert locks.acquire(conn, image_lock_name(uuid), "1e1u1-33333333-bbbb-cccc-dddd", 60)
    swept = garbage.check(engine, image_store, repair=True, verify=False)
    assert [(f.path, f.removed) for f in swept.findings] == [(uuid, False)]
    assert image_store.manifest(uuid) == {"uuid": uuid}


def test_while_the_sweep_holds_an_orphans_uuid_an_import_of_it_is_retried(engine, owner, image_store, monkeypatch):
    """The import records its image and takes the lease in one transaction: while the sweep
    holds the uuid it finds the lease taken and rolls back (to be retried); then it succeeds."""
    from imagesvc.services.importer.handlers import import_image
    from imagesvc.shared import contracts
    from imagesvc.shared.broker.consumer import Outcome
    from imagesvc.shared.contracts import Actor, ImportImage
    from imagesvc.shared.errors import Transient
    from imagesvc.shared.handling import CommandConsumer
    from imagesvc.shared.store.server import ImageServer
    from tests.support.leases import RecordingRelay
    from tests.support.origin import sample_manifest
    from tests.unit.test_superseded_delivery import CONTENT, LIMITS, GatedFetcher, delivery

    manifest = sample_manifest(files=[{"sha1": hashlib.sha1(CONTENT).hexdigest(), "size": len(CONTENT),
                                       "compression": "none"}])
    uuid = manifest["uuid"]
    image_store.write_manifest(uuid, {"uuid": uuid, "from": "an earlier life"})
    importer = CommandConsumer(name="importer", engine=engine, relay=RecordingRelay(), check_first=True, routes={
        "image.import": functools.partial(import_image, fetcher=GatedFetcher(manifest, pause_after=None),
                                          server=ImageServer(image_store), limits=LIMITS)})
    command = ImportImage(name="img", manifest_url=f"https://repo.example.com/images/{uuid}", dc="main")
    envelope = contracts.wrap(command,
                              correlation_id="1e1u1-44444444-bbbb-cccc-dddd", actor=Actor(user="admin", dc="main"))
    during = {}
    original = image_store.delete

    def delete_while_an_import_comes(target: str) -> bool:
        with pytest.raises(Transient, match="held by another owner"):  # the runner retries it
            importer(delivery(envelope, 1))
        with read_transaction(engine) as conn:
            during["recorded"] = SqlCatalogue(conn).image_by_uuid(uuid)
        return original(target)

    monkeypatch.setattr(image_store, "delete", delete_while_an_import_comes)
    garbage.check(engine, image_store, repair=True, verify=False)
    monkeypatch.undo()
    assert during["recorded"] is None  # rolled back
    assert importer(delivery(envelope, 2)).outcome is Outcome.ACK
    with read_transaction(engine) as conn:
        assert SqlCatalogue(conn).image_by_uuid(uuid).status == images.STATUS_OK
        assert locks.owners(conn) == set()
    with image_store.open_file(uuid) as handle:
        assert handle.read() == CONTENT


def test_old_scratch_files_go_young_ones_stay(engine, owner, image_store):
    ok = ok_image(engine, image_store)
    old, young = Path(image_store.image_dir(ok)) / ".file.md5.old", Path(image_store.root) / ".partial" / ".probe-young"
    old.write_text("{}")
    young.write_text("ok")
    os.utime(old, (0, os.path.getmtime(old) - 2 * garbage.SCRATCH_GRACE_SECONDS))
    swept = garbage.check(engine, image_store, repair=True, verify=False)
    assert [(f.path, f.removed) for f in swept.findings] == [(f"{ok}/.file.md5.old", True)]
    assert young.exists() and not old.exists()


def test_the_check_reports_ok_images_whose_files_are_missing_or_wrong(engine, owner, image_store):
    fine, no_file, no_dir, wrong_sha1, wrong_size, other_manifest = (ok_image(engine, image_store) for _ in range(6))
    os.unlink(os.path.join(image_store.image_dir(no_file), "file"))
    image_store.delete(no_dir)
    with open(os.path.join(image_store.image_dir(wrong_sha1), "file"), "r+b") as handle:
        handle.write(b"X")  # same size, other bytes
    with open(os.path.join(image_store.image_dir(wrong_size), "file"), "ab") as handle:
        handle.write(b"more")
    image_store.write_manifest(other_manifest, {**image_store.manifest(other_manifest), "desc": "changed"})

    found = garbage.check(engine, image_store, repair=False, verify=True)

    assert sorted((f.finding, f.image) for f in found.findings) == sorted([
        (garbage.MISSING, no_file), (garbage.MISSING, no_dir), (garbage.CORRUPT, wrong_sha1),
        (garbage.CORRUPT, wrong_size), (garbage.MANIFEST_DIFFERS, other_manifest)])
    by_image = {f.image: f for f in found.findings}
    assert by_image[no_dir].why == "an OK image without its manifest and file"
    assert by_image[wrong_sha1].why.startswith("the file's sha1 is ")
    assert by_image[wrong_size].why == "the file has 18 bytes, its manifest says 14"
    assert found.verified == 6 and found.problems == 5
    assert found.summary() == {"finding": "summary", "images": 6, "pending": 0, "verified": 6, "garbage": 0,
                               "staged": 0, "unknown": 0, "stalled": 0, "missing": 2, "corrupt": 2,
                               "manifest_differs": 1, "removed": 0, "problems": 5}
    assert fine not in by_image


@pytest.fixture
def logging_restored():
    """The command configures logging onto the sys.stderr of the moment, which capsys replaces
    and then closes: put it back once capsys has let go (requested first, torn down last)."""
    from imagesvc.shared.logging import configure_logging

    yield
    configure_logging("tests", fmt="console")


def test_store_check_prints_json_lines_and_exits_4_while_something_is_left(logging_restored, engine, owner,
                                                                           image_store, monkeypatch, capsys):
    from imagesvc.cli import main

    ok = ok_image(engine, image_store)
    made = leftovers(image_store, ok)
    monkeypatch.setenv("IMAGESVC_DATABASE_URL", str(engine.url))
    monkeypatch.setenv("IMAGESVC_IMAGE_STORE", image_store.root)
    assert main(["store", "check"]) == 4
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["finding"] for line in lines] == ["garbage"] * 3 + ["summary"]
    assert lines[0] == {"finding": "garbage", "path": str(made["partial"].relative_to(image_store.root)),
                        "image": ok, "name": f"ok-{ok[:8]}", "bytes": 4, "removed": False,
                        "why": "a partial file of an image that is OK: its writer has ended"}
    assert lines[-1]["garbage"] == 3 and lines[-1]["problems"] == 3
    assert main(["store", "check", "--repair"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["removed"] for line in lines[:-1]] == [True] * 3 and lines[-1]["removed"] == 3
    assert main(["store", "check"]) == 0
    assert [json.loads(line)["finding"] for line in capsys.readouterr().out.splitlines()] == ["summary"]
    monkeypatch.setenv("IMAGESVC_IMAGE_STORE", "none")
    assert main(["store", "check"]) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (
        "", "imagesvc: no image store is configured (IMAGESVC_IMAGE_STORE=none)\n")
