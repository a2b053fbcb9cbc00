"""Images from VM disk snapshots (reference §3.6, §7.5): the node agent exports the snapshot,
gzip-compressed, into the image store. Both modes: embedded (the agent of ``IMAGESVC_LOCAL_NODE``
is a thread of serve) and distributed (``imagesvc node-agent`` is its own process)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
import uuid as uuidlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert

from imagesvc.domain import snapshots
from imagesvc.shared.db.models import Lock
from imagesvc.shared.snapshots.files import FileSnapshotDriver, take_snapshot
from tests.e2e.conftest import database_url, launch
from tests.support.polling import eventually
from tests.support.systems import start_embedded

pytestmark = pytest.mark.e2e

NODE = "node1"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    return {"store": tmp_path_factory.mktemp("store"), "vms": tmp_path_factory.mktemp("vms")}


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def system(request, tmp_path_factory, dirs):
    env = {"IMAGESVC_IMAGE_STORE": str(dirs["store"]), "IMAGESVC_SNAPSHOT_DIR": str(dirs["vms"])}
    if request.param == "embedded":
        env["IMAGESVC_LOCAL_NODE"] = NODE
    started = launch(request.param, request, tmp_path_factory, **env)
    started.admin("node", "set", NODE, "--status", "online")
    if request.param == "distributed":
        start_agent(started)
    yield started
    started.stop()


def start_agent(system) -> None:
    marker = system.log("node-agent").count('"consumer.ready"')
    process = system.spawn("node-agent", "node-agent", "--node", NODE)

    def ready() -> None:
        assert process.poll() is None, system.log("node-agent")[-2000:]
        assert system.log("node-agent").count('"consumer.ready"') > marker

    eventually(ready, timeout=30)


def new_vm(system, dirs, *, size_bytes: int = 256 * 1024, status: str = "running", snapname: str = "daily",
           content: bytes | None = None) -> dict:
    """A VM on the node with one disk (a file) and one snapshot of it, in the inventory."""
    vm_uuid = str(uuidlib.uuid4())
    hostname = f"vm-{vm_uuid[:8]}"
    disk = FileSnapshotDriver(str(dirs["vms"])).disk_path(vm_uuid, 1)
    Path(disk).parent.mkdir(parents=True, exist_ok=True)
    data = content if content is not None else os.urandom(size_bytes // 2) + b"\0" * (size_bytes - size_bytes // 2)
    Path(disk).write_bytes(data)
    take_snapshot(str(dirs["vms"]), vm_uuid, 1, snapname)
    system.admin("vm", "set", vm_uuid, "--hostname", hostname, "--dc", "main", "--node", NODE, "--status", status,
                 "--ostype", "1", "--disk", "1:10")
    system.admin("vm", "snapshot", "set", vm_uuid, snapname, "--disk", "1", "--status", "ok")
    return {"uuid": vm_uuid, "hostname": hostname, "data": data, "snapname": snapname}


def post(client, vm: str, snapname: str, name: str, **body):
    return client.post(f"/vm/{vm}/snapshot/{snapname}/image/{name}/", json=body)


def finished(client, answer, timeout: float = 60.0):
    assert answer.status_code in (200, 201), answer.text
    task_id = answer.json()["task_id"]

    def done():
        status = client.get(f"/task/{task_id}/status/")
        assert status.status_code != 201, status.text
        return status

    return eventually(done, timeout=timeout)


def test_an_image_is_made_from_a_snapshot(system, dirs, name):
    vm = new_vm(system, dirs)
    with system.client() as client:
        status = finished(client, post(client, vm["hostname"], vm["snapname"], name, desc="nightly"))
        assert status.status_code == 200, status.text
        assert status.json()["result"]["message"].startswith(f"Successfully created image {name}")
        image = client.get(f"/image/{name}/").json()["result"]
    assert (image["status"], image["desc"], image["ostype"], image["size"], image["dc_bound"]) == (
        1, "nightly", 1, 10, True)
    assert (image["alias"], image["version"]) == (name, "1.0")
    stored = dirs["store"] / image["uuid"]
    compressed = (stored / "file").read_bytes()
    assert gzip.decompress(compressed) == vm["data"]
    described = json.loads((stored / "manifest").read_text())["files"][0]
    assert described == {"sha1": hashlib.sha1(compressed).hexdigest(), "size": len(compressed), "compression": "gzip"}


def test_refusals_follow_the_references_order(system, dirs, name):
    vm = new_vm(system, dirs)
    with system.client() as client:
        assert post(client, "no-such-vm", "daily", name).json() == {"detail": "VM not found"}
        answer = post(client, vm["hostname"], vm["snapname"], name, disk_id=2)
        assert (answer.status_code, answer.json()) == (412, {"detail": "Invalid disk_id"})
        answer = post(client, vm["hostname"], "weekly", name)
        assert (answer.status_code, answer.json()) == (404, {"detail": "Snapshot not found"})
        answer = post(client, vm["hostname"], vm["snapname"], name, access=7)
        assert answer.status_code == 400 and "access" in answer.json()["result"]
        assert client.get(f"/image/{name}/").status_code == 404


def test_order_by_is_checked_after_the_vm_disk_and_snapshot(system, dirs, name):
    """Reference §5, the snapshot-image chain: 404 VM / 412 disk / 404 snapshot come before a bad
    ``order_by`` (412), which comes before the fields' 400."""
    vm = new_vm(system, dirs)
    bad_order = {"detail": "Invalid order_by; Possible sort fields are: name, created"}
    with system.client() as client:
        answer = post(client, str(uuidlib.uuid4()), "daily", name, order_by="size")
        assert (answer.status_code, answer.json()) == (404, {"detail": "VM not found"})
        answer = post(client, vm["hostname"], vm["snapname"], name, order_by="size", disk_id=2)
        assert (answer.status_code, answer.json()) == (412, {"detail": "Invalid disk_id"})
        answer = post(client, vm["hostname"], "weekly", name, order_by="size")
        assert (answer.status_code, answer.json()) == (404, {"detail": "Snapshot not found"})
        answer = post(client, vm["hostname"], vm["snapname"], name, order_by="size", access=7)
        assert (answer.status_code, answer.json()) == (412, bad_order)
        assert client.get(f"/image/{name}/").status_code == 404


def test_a_vm_that_is_not_operational_is_423(system, dirs, name):
    vm = new_vm(system, dirs, status="notcreated")
    with system.client() as client:
        answer = post(client, vm["hostname"], vm["snapname"], name)
        assert (answer.status_code, answer.json()) == (423, {"detail": "VM is not operational"})


def test_a_snapshot_held_by_another_task_is_417(system, dirs, name):
    vm = new_vm(system, dirs)
    engine = create_engine(database_url(system))
    lock = snapshots.snapshot_lock_name(vm["uuid"], 1, vm["snapname"])
    now = datetime.now(timezone.utc)
    try:
        with engine.begin() as conn:
            conn.execute(insert(Lock.__table__).values(name=lock, owner="another-task", acquired_at=now,
                                                        expires_at=now + timedelta(minutes=5)))
        with system.client() as client:
            answer = post(client, vm["hostname"], vm["snapname"], name)
            assert (answer.status_code, answer.json()) == (417, {"detail": "VM snapshot status is not OK"})
    finally:
        with engine.begin() as conn:
            conn.execute(Lock.__table__.delete().where(Lock.__table__.c.name == lock))
        engine.dispose()


def test_concurrent_images_of_one_snapshot_one_proceeds(system, dirs, name):
    # Incompressible, so the export takes a while: the others arrive while it runs.
    vm = new_vm(system, dirs, content=os.urandom(48 * 1024 * 1024))
    names = [f"{name}-{i}" for i in range(4)]
    with system.client() as client, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda n: post(client, vm["hostname"], vm["snapname"], n), names))
        outcomes = []
        for answer in answers:
            if answer.status_code == 417:
                outcomes.append(417)
                continue
            status = finished(client, answer, timeout=120)
            outcomes.append(status.status_code if status.status_code != 200 else 200)
        assert outcomes.count(200) >= 1
        assert sorted(set(outcomes)) in ([200], [200, 417])
        refused = [n for n, outcome in zip(names, outcomes) if outcome == 417]
        for refused_name in refused:
            assert client.get(f"/image/{refused_name}/").status_code == 404
    assert outcomes.count(417) >= 1, "the others arrived while the first export ran"


def test_an_offline_node_is_423_and_nothing_is_published(system, dirs, name):
    vm = new_vm(system, dirs)
    system.admin("node", "set", NODE, "--status", "maintenance")
    try:
        with system.client() as client:
            answer = post(client, vm["hostname"], vm["snapname"], name)
            assert (answer.status_code, answer.json()) == (423, {"detail": "Node is not operational"})
    finally:
        system.admin("node", "set", NODE, "--status", "online")


def test_the_agent_killed_mid_export_still_ends_the_task_once(system, dirs, name):
    if system.mode != "distributed":
        pytest.skip("the node agent is its own process only in the distributed mode")
    vm = new_vm(system, dirs, content=os.urandom(96 * 1024 * 1024))
    with system.client() as client:
        answer = post(client, vm["hostname"], vm["snapname"], name)
        assert answer.status_code == 201, answer.text

        def exporting():
            partial = list((dirs["store"] / ".partial").glob("*"))
            assert partial and partial[0].stat().st_size > 0

        eventually(exporting, timeout=30)
        system.kill("node-agent")
        start_agent(system)
        status = finished(client, answer, timeout=180)
        assert status.status_code == 200, status.text
        image = client.get(f"/image/{name}/").json()["result"]
    assert gzip.decompress((dirs["store"] / image["uuid"] / "file").read_bytes()) == vm["data"]
    assert not list((dirs["store"] / ".partial").glob(f"{image['uuid']}*"))


def test_a_snapshot_image_can_be_imported_by_another_instance(system, dirs, name, tmp_path):
    if system.mode != "embedded":
        pytest.skip("one round trip is enough: the embedded instance serves its store on its own port")
    vm = new_vm(system, dirs)
    with system.client() as client:
        assert finished(client, post(client, vm["hostname"], vm["snapname"], name)).status_code == 200
        image = client.get(f"/image/{name}/").json()["result"]
    (tmp_path / "other").mkdir()
    other = start_embedded(tmp_path / "other", {"IMAGESVC_IMAGE_STORE": str(tmp_path / "other-store")})
    try:
        manifest_url = f"{system.url.removesuffix('/api')}/images/{image['uuid']}"
        with other.client() as client:
            answer = client.post(f"/image/{name}/", json={"manifest_url": manifest_url, "dc": "main"})
            assert finished(client, answer).status_code == 200
        copied = (tmp_path / "other-store" / image["uuid"] / "file").read_bytes()
        assert gzip.decompress(copied) == vm["data"]
    finally:
        other.stop()


def test_images_of_two_snapshots_of_one_vm_both_proceed(system, dirs, name):
    vm = new_vm(system, dirs)
    take_snapshot(str(dirs["vms"]), vm["uuid"], 1, "hourly")
    system.admin("vm", "snapshot", "set", vm["uuid"], "hourly", "--disk", "1", "--status", "ok")
    with system.client() as client, ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda snap: post(client, vm["hostname"], snap, f"{name}-{snap}"), ["daily", "hourly"]))
        assert [finished(client, answer).status_code for answer in answers] == [200, 200]


def test_one_users_images_leave_the_agent_a_thread_for_another_user(system, dirs, name):
    """The agent has 2 threads and runs 1 long-running command per user (the default cap): a
    user's image of a second snapshot is deferred until the first one's export has ended, and
    another user's image, asked for after it, is made before it."""
    if system.mode != "embedded":
        pytest.skip("the cap is the consumer's own; one mode shows it (T5 runs the importer's in both)")
    vm = new_vm(system, dirs, content=os.urandom(96 * 1024 * 1024), snapname="s1")
    take_snapshot(str(dirs["vms"]), vm["uuid"], 1, "s2")
    system.admin("vm", "snapshot", "set", vm["uuid"], "s2", "--disk", "1", "--status", "ok")
    small = new_vm(system, dirs)
    other_key = system.new_user(f"other-{name}", "--superadmin")
    deferred_before = system.log("serve").count('"command.deferred"')
    with system.client() as client, system.client(headers={"ES-API-KEY": other_key}) as other:
        first = post(client, vm["hostname"], "s1", f"{name}-1").json()["task_id"]

        def exporting():
            answer = client.get(f"/task/{first}/status/")
            assert answer.status_code == 201 and answer.json().get("progress", {}).get("done"), answer.text

        eventually(exporting, timeout=60)
        second = post(client, vm["hostname"], "s2", f"{name}-2").json()["task_id"]
        eventually(lambda: _more(system.log("serve").count('"command.deferred"'), deferred_before), timeout=30)
        others = post(other, small["hostname"], small["snapname"], f"{name}-other").json()["task_id"]
        ended: dict[str, float] = {}

        def all_ended():
            for task_id, asker in ((first, client), (second, client), (others, other)):
                if task_id not in ended:
                    answer = asker.get(f"/task/{task_id}/status/")
                    if answer.status_code != 201:
                        assert answer.status_code == 200, answer.text
                        ended[task_id] = time.monotonic()
            assert len(ended) == 3, ended

        eventually(all_ended, timeout=180, interval=0.1)
    assert ended[others] < ended[second]
    # The second export began only once the first had ended (the agent's log: when each was handled).
    lines = [json.loads(line) for line in system.log("serve").splitlines() if '"message.handled"' in line]
    handled = {line["task_id"]: line for line in lines
               if line["outcome"] == "ack" and line.get("task_id") in (first, second)}
    first_end = datetime.fromisoformat(handled[first]["timestamp"].replace("Z", "+00:00"))
    second_start = datetime.fromisoformat(handled[second]["timestamp"].replace("Z", "+00:00")) - timedelta(
        milliseconds=handled[second]["duration_ms"])
    assert second_start >= first_end, (second_start, first_end)


def _more(actual: int, than: int) -> None:
    assert actual > than, actual
