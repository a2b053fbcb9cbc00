"""T7 embedded_crash_recovery: ``imagesvc serve`` is SIGKILLed while an import fetches its manifest,
two imports download their files and a snapshot image is exported, then started again on the
same data. Every task accepted before the kill ends, none stays PENDING: the three whose 201 the
gateway gave are resumed (their commands published again from the journal) and succeed, each
exactly once; the fourth, whose journal row the test removes (as if the process had died before
answering), ends FAILURE ``interrupted`` as soon as serve is back, its image and data gone. The
store then holds exactly the three images: no partial file, no orphan.

The slowness is the origin's (a manifest answered after 4 s, files sent in paced pieces, the
first two requests of each only) and the snapshot's (bytes of a two-letter alphabet, which gzip
level 9 compresses at well under 1 MB/s; serve restarts with level 1)."""

from __future__ import annotations

import gzip
import os
import time
import uuid as uuidlib
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine, delete, select

from imagesvc.domain import images
from imagesvc.shared.contracts import TERMINAL_TASK_EVENTS
from imagesvc.shared.db.models import Image, Lock, StoredEvent, SubmittedCommand
from imagesvc.shared.snapshots.files import FileSnapshotDriver, take_snapshot
from tests.e2e.conftest import database_url
from tests.support.polling import eventually
from tests.support.services import free_port
from tests.support.systems import restart_embedded, start_embedded

pytestmark = pytest.mark.e2e

NODE = "node1"
SWEEP_SECONDS = 2
PIECES = 160  # 10 MiB sent in 64 KiB pieces 0.05 s apart: 8 s per paced download
#: The resumed tasks do their work again (unpaced downloads, an export at gzip level 1): well
#: under a second here, this much on a loaded machine.
REDO_SECONDS = 10


@pytest.fixture
def dirs(tmp_path) -> dict[str, Path]:
    found = {"store": tmp_path / "store", "vms": tmp_path / "vms"}
    for path in found.values():
        path.mkdir()
    return found


@pytest.fixture
def serve(tmp_path, dirs):
    (tmp_path / "serve").mkdir()
    system = start_embedded(tmp_path / "serve", {
        "IMAGESVC_IMAGE_STORE": str(dirs["store"]), "IMAGESVC_SNAPSHOT_DIR": str(dirs["vms"]),
        "IMAGESVC_LOCAL_NODE": NODE, "IMAGESVC_SNAPSHOT_GZIP_LEVEL": "9",
        "IMAGESVC_SWEEP_SECONDS": str(SWEEP_SECONDS), "IMAGESVC_ANSWER_WINDOW": "1"})
    system.admin("node", "set", NODE, "--status", "online")
    yield system
    system.stop()


def new_vm(system, dirs) -> dict:
    """A VM whose snapshot gzip level 9 compresses slowly (random bytes of a two-letter alphabet)."""
    vm_uuid = str(uuidlib.uuid4())
    data = os.urandom(4 * 1024 * 1024).translate(bytes(b"ab"[i & 1] for i in range(256)))
    disk = Path(FileSnapshotDriver(str(dirs["vms"])).disk_path(vm_uuid, 1))
    disk.parent.mkdir(parents=True)
    disk.write_bytes(data)
    take_snapshot(str(dirs["vms"]), vm_uuid, 1, "daily")
    system.admin("vm", "set", vm_uuid, "--hostname", f"vm-{vm_uuid[:8]}", "--dc", "main", "--node", NODE,
                 "--status", "running", "--ostype", "1", "--disk", "1:10")
    system.admin("vm", "snapshot", "set", vm_uuid, "daily", "--disk", "1", "--status", "ok")
    return {"uuid": vm_uuid, "hostname": f"vm-{vm_uuid[:8]}", "data": data}


def slow_file(origin) -> tuple[str, dict, bytes]:
    content = os.urandom(PIECES * 65536)
    url, manifest = origin.add_image(content, pace=0.05)
    origin.routes[f"/images/{manifest['uuid']}/file"].paced_requests = 2  # the probe and the first download
    return url, manifest, content


def accepted(answer) -> str:
    assert answer.status_code == 201, answer.text
    return answer.json()["task_id"]


def partial_of(store: Path, uuid: str) -> list[Path]:
    return [p for p in (store / ".partial").glob(f"{uuid}.*") if p.stat().st_size > 0]


def test_t7_every_task_accepted_before_a_kill_ends_once_after_the_restart(serve, dirs, origin):
    store = dirs["store"]
    vm = new_vm(serve, dirs)
    file_url, file_manifest, file_content = slow_file(origin)
    lost_url, lost_manifest, _ = slow_file(origin)
    manifest_content = os.urandom(256 * 1024)
    manifest_url, manifest_manifest = origin.add_image(manifest_content, delay=4.0)  # FETCH_TIMEOUT is 5 s
    with serve.client() as client:
        tasks = {
            "snapshot": accepted(client.post(f"/vm/{vm['hostname']}/snapshot/daily/image/t7-snapshot/", json={})),
            "download": accepted(client.post("/image/t7-download/", json={"manifest_url": file_url, "dc": "main"})),
            "unanswered": accepted(client.post("/image/t7-unanswered/", json={"manifest_url": lost_url,
                                                                              "dc": "main"})),
        }

        def under_way() -> None:
            exporting = client.get("/image/t7-snapshot/").json()["result"]
            assert exporting["status"] == images.STATUS_PENDING
            assert list((store / ".partial").glob(f"{exporting['uuid']}.*")), "the export has not begun"
            assert partial_of(store, file_manifest["uuid"]) and partial_of(store, lost_manifest["uuid"])

        eventually(under_way, timeout=30)
        tasks["manifest"] = accepted(client.post("/image/t7-manifest/",
                                                 json={"manifest_url": manifest_url, "dc": "main"}))
        assert f"/images/{manifest_manifest['uuid']}" in origin.hits  # the importer waits for the manifest
        serve.kill("serve")  # SIGKILL
    engine = create_engine(database_url(serve))
    try:
        with engine.connect() as conn:
            assert ended(conn, tasks.values()) == {}, "the kill must find every task under way"
        with engine.begin() as conn:  # as if serve had died before answering this one
            conn.execute(delete(SubmittedCommand.__table__).where(
                SubmittedCommand.__table__.c.task_id == tasks["unanswered"]))
        origin.routes[f"/images/{manifest_manifest['uuid']}"].delay = 0.0

        log_before = len(serve.log("serve"))
        restarted = time.monotonic()
        restart_embedded(serve, {"IMAGESVC_SNAPSHOT_GZIP_LEVEL": "1"})
        up = time.monotonic()
        finished_after: dict[str, float] = {}
        with serve.client() as client:

            def all_ended() -> None:
                for kind, task_id in tasks.items():
                    if kind not in finished_after:
                        status = client.get(f"/task/{task_id}/status/")
                        assert status.status_code in (200, 201, 500), status.text
                        if status.status_code != 201:
                            finished_after[kind] = time.monotonic() - up
                assert len(finished_after) == len(tasks), finished_after

            eventually(all_ended, timeout=120, interval=0.1)
            statuses = {kind: client.get(f"/task/{task_id}/status/") for kind, task_id in tasks.items()}
            shown = {name: client.get(f"/image/{name}/") for name in ("t7-snapshot", "t7-download", "t7-manifest",
                                                                       "t7-unanswered")}
        print(f"\nT7: serve up {up - restarted:.2f} s after its restart; tasks ended "
              + ", ".join(f"{kind} {seconds:.2f} s" for kind, seconds in finished_after.items()) + " after that")

        # The three answered 201 were resumed and succeeded; the unanswered one failed at once.
        assert {kind: s.status_code for kind, s in statuses.items()} == {
            "snapshot": 200, "download": 200, "manifest": 200, "unanswered": 500}
        failure = statuses["unanswered"].json()["result"]
        assert failure["detail"].startswith("Internal error: the image.import task stopped (imagesvc serve stopped")
        assert finished_after["unanswered"] <= SWEEP_SECONDS
        assert max(finished_after.values()) <= SWEEP_SECONDS + REDO_SECONDS
        assert shown["t7-unanswered"].status_code == 404
        made = {name: shown[name].json()["result"] for name in ("t7-snapshot", "t7-download", "t7-manifest")}
        assert {name: image["status"] for name, image in made.items()} == dict.fromkeys(made, 1)
        assert gzip.decompress((store / made["t7-snapshot"]["uuid"] / "file").read_bytes()) == vm["data"]
        for name, content in (("t7-download", file_content), ("t7-manifest", manifest_content)):
            assert (store / made[name]["uuid"] / "file").read_bytes() == content, name

        # Nothing doubled, nothing left behind.
        with engine.connect() as conn:
            outcomes = ended(conn, tasks.values())
            assert {kind: outcomes[task_id] for kind, task_id in tasks.items()} == {
                "snapshot": ["task.succeeded"], "download": ["task.succeeded"], "manifest": ["task.succeeded"],
                "unanswered": ["task.failed"]}
            failed = orjson.loads(conn.execute(select(StoredEvent.body).where(
                StoredEvent.correlation_id == tasks["unanswered"], StoredEvent.type == "task.failed")).scalar_one())
            assert (failed["payload"]["code"], failed["payload"]["http_code"]) == ("interrupted", 500)
            imported = conn.execute(select(StoredEvent.stream_id).where(StoredEvent.type == "image.imported")).scalars()
            assert sorted(imported) == sorted(f"image:{i['uuid']}" for i in [*made.values(), lost_manifest])
            assert conn.execute(select(Lock.__table__.c.name)).all() == []
            statuses_in_catalogue = conn.execute(select(Image.__table__.c.name, Image.__table__.c.status)).all()
            assert sorted(statuses_in_catalogue) == sorted((name, images.STATUS_OK) for name in made)
        assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == sorted(
            image["uuid"] for image in made.values())
        assert not list((store / ".partial").iterdir())
        assert not (store / ".trash").exists() or not list((store / ".trash").iterdir())
        log = serve.log("serve")[log_before:]
        assert log.count('"recovery.resumed"') == 3 and '"recovery.done"' in log
    finally:
        engine.dispose()


def ended(conn, task_ids) -> dict[str, list[str]]:
    """The terminal events of these tasks, by task id (tasks without one are left out)."""
    rows = conn.execute(select(StoredEvent.correlation_id, StoredEvent.type).where(
        StoredEvent.correlation_id.in_(list(task_ids)), StoredEvent.type.in_(sorted(TERMINAL_TASK_EVENTS)))
        .order_by(StoredEvent.id)).all()
    found: dict[str, list[str]] = {}
    for task_id, type_ in rows:
        found.setdefault(task_id, []).append(type_)
    return found


def test_a_second_serve_on_the_same_database_refuses_to_start(serve):
    # Its start-up recovery would take the first one's leases and commands for abandoned.
    second = serve.spawn("serve2", "serve", "--port", str(free_port()))
    assert second.wait(timeout=60) == 2
    assert "another imagesvc serve is running on this database" in serve.log("serve2")
    with serve.client() as client:
        assert client.get("/image/").status_code == 200
