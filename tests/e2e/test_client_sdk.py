"""The SDK's HTTP half (``imagesvc.client.Client``) against the running system, in both modes.

Every method once, and each refusal the API can be made to give, as a user of the SDK meets them:
typed answers, tasks followed with ``wait`` (progress reported while a file streams in), and
refusals raised as the ApiError subclass of their status with the API's detail and field errors.

The system runs with an image store (imports download, report progress, and can fail after their
answer), a remote repository served by the loopback origin, and a compute node whose agent exports
VM disk snapshots (a thread of ``serve``; its own process in the distributed mode).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagesvc.client import ApiError, Client, Image, Repository, Task, TaskFailed
from imagesvc.client.errors import (BadRequest, ExpectationFailed, Forbidden, Locked, NotAcceptable, NotFound,
                                    PreconditionFailed, PreconditionRequired)
from imagesvc.shared.snapshots.files import FileSnapshotDriver, take_snapshot
from tests.e2e.conftest import launch
from tests.support.origin import sample_manifest
from tests.support.polling import eventually

pytestmark = pytest.mark.e2e

NODE = "sdk-node"
REPOSITORY = "sdk"
#: What the origin serves as the file of each repository image (``Origin.add_repository``).
REPOSITORY_FILE = b"\x00" * 64


@dataclass
class Setup:
    tag: str
    repository_url: str
    repository_manifest: dict


@pytest.fixture(scope="module")
def setup(origin) -> Setup:
    tag = uuid.uuid4().hex[:6]
    manifest = sample_manifest(name=f"sdk-repo-{tag}", files=[
        {"sha1": hashlib.sha1(REPOSITORY_FILE).hexdigest(), "size": len(REPOSITORY_FILE), "compression": "none"}])
    return Setup(tag, origin.add_repository(f"/{tag}/sdk/", [manifest]), manifest)


@pytest.fixture(scope="module")
def vms(tmp_path_factory) -> Path:
    """Where the VMs' disks and snapshots are (files: the snapshot driver of the tests)."""
    return tmp_path_factory.mktemp("vms")


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def system(request, tmp_path_factory, setup, vms):
    """conftest's system in each mode, started with what every SDK method needs: an image store, the
    repository, and the node whose agent exports snapshots (online)."""
    env = {"IMAGESVC_IMAGE_STORE": str(tmp_path_factory.mktemp("store")), "IMAGESVC_SNAPSHOT_DIR": str(vms),
           "IMAGESVC_IMAGE_REPOSITORIES": f"{REPOSITORY}={setup.repository_url}"}
    if request.param == "embedded":
        env["IMAGESVC_LOCAL_NODE"] = NODE  # the node agent is a thread of serve
    started = launch(request.param, request, tmp_path_factory, **env)
    try:
        started.admin("node", "set", NODE, "--status", "online")
        if request.param == "distributed":
            agent = started.spawn("node-agent", "node-agent", "--node", NODE)

            def consuming() -> None:
                assert agent.poll() is None, started.log("node-agent")[-2000:]
                assert '"consumer.ready"' in started.log("node-agent")

            eventually(consuming, timeout=30)
        yield started
    finally:
        started.stop()


@pytest.fixture
def sdk(system):
    with Client(system.url, api_key=system.api_key, backoff=0.2) as client:
        yield client


def imported(sdk: Client, origin, name: str, **fields) -> Image:
    """A fresh image, imported (its small file downloaded into the store) and waited for."""
    url, _ = origin.add_image(os.urandom(64 * 1024))
    sdk.wait(sdk.import_image(name, url, dc="main", **fields), timeout=60, poll_interval=0.1)
    return sdk.get_image(name)


def set_vm(system, vm: dict, *, status: str) -> None:
    system.admin("vm", "set", vm["uuid"], "--hostname", vm["hostname"], "--dc", "main", "--node", NODE,
                 "--status", status, "--ostype", "1", "--disk", "1:10")


def set_snapshot(system, vm: dict, *, status: str) -> None:
    system.admin("vm", "snapshot", "set", vm["uuid"], "daily", "--disk", "1", "--status", status)


def new_vm(system, vms: Path) -> dict:
    """A running VM of the node with one disk (a file) and a snapshot ``daily`` of it, whose
    state in the inventory is not OK yet (``pending``)."""
    vm = {"uuid": str(uuid.uuid4())}
    vm["hostname"] = f"sdkvm-{vm['uuid'][:8]}"
    disk = Path(FileSnapshotDriver(str(vms)).disk_path(vm["uuid"], 1))
    disk.parent.mkdir(parents=True, exist_ok=True)
    disk.write_bytes(os.urandom(64 * 1024) + b"\0" * 64 * 1024)
    take_snapshot(str(vms), vm["uuid"], 1, "daily")
    set_vm(system, vm, status="running")
    set_snapshot(system, vm, status="pending")
    return vm


# --- images: the whole life, followed with progress ---------------------------------------------


def test_import_with_progress_then_update_and_delete(sdk, origin, name):
    content = os.urandom(32 * 65536)  # 32 pieces 0.1 s apart: about 3 s of download
    url, manifest = origin.add_image(content, pace=0.1)
    task = sdk.import_image(name, url, dc="main", desc="via the SDK")
    assert isinstance(task, Task) and (task.status, task.http_code, task.done) == ("PENDING", 201, False)

    # While its file streams in the image is PENDING: another command on it is refused (417).
    with pytest.raises(ExpectationFailed) as busy:
        sdk.delete_image(name)
    assert (busy.value.status, busy.value.detail) == (417, "Image status is not OK")

    seen: list[Task] = []
    finished = sdk.wait(task, timeout=60, poll_interval=0.1, on_progress=seen.append)
    assert finished.succeeded and finished.http_code == 200 and finished.task_id == task.task_id
    assert finished.result["message"].startswith(f"Successfully imported image {name} (transferred {len(content)}")
    assert seen, "no progress was reported while the file streamed in"
    assert all(t.task_id == task.task_id and t.status in ("PENDING", "STARTED") for t in seen)
    assert all(t.progress.total == len(content) and 0 <= t.progress.done <= len(content) for t in seen)
    done = [t.progress.done for t in seen]
    assert done == sorted(set(done)), done  # called only when the progress changed

    image = sdk.get_image(name)
    assert (image.name, image.uuid, image.desc, image.status, image.dc_bound) == (
        name, manifest["uuid"], "via the SDK", 1, True)
    assert image.etag and image.created_at is not None

    updated = sdk.wait(sdk.update_image(name, desc="patched", tags=["sdk"]), timeout=30, poll_interval=0.1)
    assert updated.succeeded
    assert (sdk.get_image(name).desc, sdk.get_image(name).tags) == ("patched", ("sdk",))

    assert sdk.wait(sdk.delete_image(name), timeout=30, poll_interval=0.1).succeeded
    with pytest.raises(NotFound) as gone:
        sdk.get_image(name)
    assert (gone.value.status, gone.value.detail) == (404, "Image not found")


def test_a_download_that_fails_after_the_answer_raises_task_failed_with_its_code(sdk, origin, name):
    url, _ = origin.add_image(os.urandom(16 * 65536), sha1="ab" * 20, pace=0.05)
    task = sdk.import_image(name, url, dc="main")
    assert task.status == "PENDING"
    with pytest.raises(TaskFailed) as raised:
        sdk.wait(task, timeout=60, poll_interval=0.1)
    failed = raised.value
    assert isinstance(failed, BadRequest) and failed.status == 400
    assert failed.code == "checksum_mismatch" and failed.task_id == task.task_id
    assert failed.detail.startswith("Got bad return code (8). Error: ERROR: Image file checksum mismatch")
    assert failed.task.failed and failed.task.result["returncode"] == 8
    # The task keeps its outcome: reading it is not an error.
    assert sdk.task(task.task_id).status == "FAILURE"
    with pytest.raises(NotFound):
        sdk.get_image(name)


def test_reads_lists_and_tasks(sdk, origin, name):
    image = imported(sdk, origin, name)
    listed = sdk.list_images()
    assert image in listed and all(isinstance(item, Image) for item in listed)
    names = sdk.list_images(full=False)
    assert name in names and names == sorted(names)
    assert sdk.list_images(full=False, order_by="-name") == sorted(names, reverse=True)
    extended = {item.name: item for item in sdk.list_images(extended=True)}
    assert extended[name].dcs == ("main",)
    assert name in sdk.list_images(dc="main", full=False)
    assert sdk.get_image(name, dc="main") == image
    assert sdk.get_image(name, extended=True).dcs == ("main",)
    assert sdk.image_vms(name) == []

    # Every command is a task: the same idempotency key gets the same task, not a second import.
    key = f"sdk-{name}"
    url, _ = origin.add_image(os.urandom(4096))
    first = sdk.import_image(f"{name}-k", url, dc="main", idempotency_key=key)
    again = sdk.import_image(f"{name}-k", url, dc="main", idempotency_key=key)
    assert again.task_id == first.task_id
    finished = sdk.wait(first.task_id, timeout=30, poll_interval=0.1)
    assert sdk.task(first.task_id) == finished and finished.succeeded


def test_the_vms_of_an_image_and_a_deletion_they_block(system, sdk, origin, name):
    image = imported(sdk, origin, name)
    vm_uuid = str(uuid.uuid4())
    system.admin("vm", "set", vm_uuid, "--hostname", f"user-{name}", "--dc", "main", "--node", NODE,
                 "--status", "running", "--ostype", "1", "--disk", f"1:10:{image.uuid}")
    try:
        vms = sdk.image_vms(name)
        assert [(vm["hostname"], vm["uuid"], vm["dc"]) for vm in vms] == [(f"user-{name}", vm_uuid, "main")]
        with pytest.raises(PreconditionRequired) as used:
            sdk.delete_image(name)
        assert (used.value.status, used.value.detail) == (428, "Image is used by some VMs")
    finally:
        system.admin("vm", "remove", vm_uuid)
    assert sdk.wait(sdk.delete_image(name), timeout=30, poll_interval=0.1).succeeded


def test_attach_and_detach_in_a_second_datacenter(system, sdk, origin, name):
    other = f"sdk{uuid.uuid4().hex[:6]}"
    system.admin("dc", "create", other)
    imported(sdk, origin, name)
    attached = sdk.wait(sdk.attach_image(other, name))  # finished in its answer: no poll
    assert attached.succeeded and attached.http_code == 201
    assert name in sdk.list_images(dc=other, full=False)
    assert sdk.get_image(name, dc=other).name == name
    with pytest.raises(NotAcceptable) as again:
        sdk.attach_image(other, name)
    assert (again.value.status, again.value.detail) == (406, "Image already exists")
    assert sdk.wait(sdk.detach_image(other, name), timeout=30, poll_interval=0.1).succeeded
    with pytest.raises(NotFound) as detached:
        sdk.get_image(name, dc=other)
    assert detached.value.detail == "Image not found"


# --- remote repositories ---------------------------------------------------------------------------


def test_repositories_refresh_list_and_import(sdk, setup, name):
    repositories = {r.name: r for r in sdk.list_repositories()}
    assert isinstance(repositories[REPOSITORY], Repository)
    assert repositories[REPOSITORY].url == setup.repository_url

    refreshed = sdk.wait(sdk.refresh_repository(REPOSITORY), timeout=30, poll_interval=0.1)
    assert refreshed.succeeded and refreshed.result["image_count"] == 1
    assert sdk.wait(sdk.refresh_repositories(), timeout=30, poll_interval=0.1).succeeded
    repository = sdk.get_repository(REPOSITORY)
    assert (repository.image_count, repository.error) == (1, None) and repository.last_update_at is not None

    wanted = setup.repository_manifest["uuid"]
    assert [item["uuid"] for item in sdk.list_repository_images(REPOSITORY)] == [wanted]
    assert sdk.get_repository_image(REPOSITORY, wanted)["name"] == setup.repository_manifest["name"]

    task = sdk.import_repository_image(REPOSITORY, wanted, dc="main", name=name)
    assert sdk.wait(task, timeout=30, poll_interval=0.1).succeeded
    assert sdk.get_image(name).uuid == wanted
    with pytest.raises(NotAcceptable):
        sdk.import_repository_image(REPOSITORY, wanted, dc="main", name=f"{name}-2")
    with pytest.raises(NotFound) as unknown:
        sdk.get_repository("no-such-repository")
    assert unknown.value.detail == "ImageStore not found"


# --- images from VM disk snapshots -----------------------------------------------------------------


def test_an_image_from_a_vm_snapshot_and_its_refusals(system, vms, sdk, name):
    vm = new_vm(system, vms)
    with pytest.raises(ExpectationFailed) as busy:
        sdk.snapshot_image(vm["hostname"], "daily", name)
    assert (busy.value.status, busy.value.detail) == (417, "VM snapshot status is not OK")
    with pytest.raises(PreconditionFailed) as disk:
        sdk.snapshot_image(vm["hostname"], "daily", name, disk_id=2)
    assert (disk.value.status, disk.value.detail) == (412, "Invalid disk_id")

    set_snapshot(system, vm, status="ok")
    task = sdk.snapshot_image(vm["hostname"], "daily", name, desc="from a snapshot")
    assert sdk.wait(task, timeout=60, poll_interval=0.1).result["message"].startswith(
        f"Successfully created image {name}")
    assert sdk.get_image(name).desc == "from a snapshot"

    set_vm(system, vm, status="notcreated")
    with pytest.raises(Locked) as locked:
        sdk.snapshot_image(vm["hostname"], "daily", f"{name}-2")
    assert (locked.value.status, locked.value.detail) == (423, "VM is not operational")


def test_the_command_line_makes_an_image_from_a_vm_snapshot(system, vms, name, tmp_path):
    vm = new_vm(system, vms)
    set_snapshot(system, vm, status="ok")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESVC_")}
    env.update({"IMAGESVC_CLIENT_URL": system.url, "IMAGESVC_CLIENT_API_KEY": system.api_key,
                "IMAGESVC_CLIENT_CONFIG": str(tmp_path / "profiles.json")})
    made = subprocess.run([sys.executable, "-m", "imagesvc", "image", "snapshot", vm["hostname"], "daily", name,
                           "--set", "desc=from the cli", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["status"] == "SUCCESS"
    assert "\r" not in made.stderr  # not a terminal: no redrawn progress line
    with Client(system.url, api_key=system.api_key) as client:
        assert client.get_image(name).desc == "from the cli"


# --- accounts and refusals -------------------------------------------------------------------------


def test_login_and_logout(system):
    username = f"sdk{uuid.uuid4().hex[:8]}"
    system.new_user(username, "--superadmin")
    system.admin("user", "password", username, stdin="correct horse\n")
    with Client(system.url) as anonymous:
        with pytest.raises(Forbidden) as refused:
            anonymous.list_images()
        assert refused.value.detail == "Authentication credentials were not provided."
        with pytest.raises(BadRequest) as wrong:
            anonymous.login(username, "wrong horse")
        assert wrong.value.detail == "Unable to log in with provided credentials."

        token = anonymous.login(username, "correct horse")
        assert token and anonymous.token == token
        assert isinstance(anonymous.list_images(full=False), list)
        anonymous.logout()
        assert anonymous.token is None
        with pytest.raises(Forbidden):
            anonymous.list_images()
    with Client(system.url, token=token) as stale:
        with pytest.raises(Forbidden) as ended:
            stale.list_images()
        assert ended.value.detail == "Invalid token."


def test_refusals_raise_their_class_with_the_apis_detail(system, sdk, origin, name):
    image = imported(sdk, origin, name)

    with pytest.raises(BadRequest) as invalid:
        sdk.update_image(name, owner="nobody-at-all", access=7)
    assert invalid.value.status == 400 and invalid.value.detail is None and invalid.value.task_id
    assert invalid.value.field_errors["owner"] == ["Object with username=nobody-at-all does not exist."]
    assert set(invalid.value.field_errors) == {"owner", "access"}

    with Client(system.url, api_key="not-a-key") as wrong:
        with pytest.raises(Forbidden) as bad_key:
            wrong.get_image(name)
    assert (bad_key.value.status, bad_key.value.detail) == (403, "Invalid API key")
    with Client(system.url, api_key=system.new_user(f"norole{uuid.uuid4().hex[:6]}")) as plain:
        with pytest.raises(Forbidden) as denied:
            plain.delete_image(name)
    assert denied.value.detail == "Permission denied"

    with pytest.raises(NotFound) as missing:
        sdk.get_image(f"{name}-missing")
    assert missing.value.detail == "Image not found"
    with pytest.raises(NotFound) as no_task:
        sdk.task("1e1u1-00000000-0000-0000-0000")
    assert no_task.value.detail == "Task does not exist (anymore)"

    url, _ = origin.add_image(os.urandom(4096))
    with pytest.raises(NotAcceptable) as exists:
        sdk.import_image(name, url, dc="main")
    assert (exists.value.status, exists.value.detail) == (406, "Image already exists")

    assert sdk.wait(sdk.update_image(name, desc="moved on", if_match=image.etag), timeout=30,
                    poll_interval=0.1).succeeded
    with pytest.raises(PreconditionFailed) as stale:
        sdk.update_image(name, desc="lost update", if_match=image.etag)
    assert (stale.value.status, stale.value.detail) == (412, "Precondition failed")
    with pytest.raises(PreconditionFailed) as order:
        sdk.list_images(order_by="size")
    assert order.value.detail == "Invalid order_by; Possible sort fields are: name, created"
    assert sdk.get_image(name).desc == "moved on"
    # All of them are ApiErrors: one clause catches any refusal.
    assert all(isinstance(e.value, ApiError) for e in (invalid, bad_key, missing, exists, stale))
