"""Images in use, in both modes: a VM in the inventory (``imagesvc admin vm``, and in the
distributed mode a ``vm.updated`` published with pika) keeps an image attached to its datacenter
from being deleted (428), and ``GET /api/image/<name>/vm/`` lists such VMs (reference §3.7)."""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit
from dataclasses import dataclass

import httpx
import orjson
import pytest

from tests.support.polling import eventually
from tests.support.tap import publish

pytestmark = pytest.mark.e2e

USED = {"detail": "Image is used by some VMs"}


@dataclass
class World:
    system: object
    tag: str
    image_admin_key: str
    plain_key: str

    @property
    def dc(self) -> str:
        return f"vm{self.tag}"

    @property
    def other_dc(self) -> str:
        return f"vmo{self.tag}"

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.system.url, headers={"ES-API-KEY": key or self.system.api_key}, timeout=30)


@pytest.fixture(scope="module")
def world(system) -> World:
    tag = uuid.uuid4().hex[:6]
    system.admin("dc", "create", f"vm{tag}")
    system.admin("dc", "create", f"vmo{tag}")
    image_admin = f"vmadmin{tag}"
    image_admin_key = system.new_user(image_admin)
    system.admin("role", "create", f"vmrole{tag}", "--permission=admin", "--permission=image_admin")
    system.admin("role", "add-user", f"vmrole{tag}", image_admin)
    system.admin("role", "attach", f"vmrole{tag}", f"vm{tag}")
    return World(system, tag, image_admin_key, system.new_user(f"vmplain{tag}"))


def image_in(world: World, origin, dc: str) -> tuple[str, str]:
    """A fresh image bound to (and attached to) ``dc``: (name, uuid)."""
    name = f"used-{uuid.uuid4().hex[:8]}"
    url, manifest = origin.add_manifest()
    with world.client() as root:
        response = root.post(f"/image/{name}/", json={"manifest_url": url, "dc": dc})
    assert response.status_code == 200, response.text
    return name, manifest["uuid"]


def vm_uuid() -> str:
    return str(uuid.uuid4())


def set_vm(world: World, uuid_: str, hostname: str, dc: str, image_uuid: str, *more: str) -> None:
    world.system.admin("vm", "set", uuid_, "--hostname", hostname, "--dc", dc, "--node", "cn1.example.com",
                       "--status", "running", "--ostype", "1", "--disk", f"1:10240:{image_uuid}", "--disk", "2:512",
                       *more)


def publish_vm_updated(world: World, payload: dict) -> None:
    """Publish a ``vm.updated`` with pika, as the compute management system would."""
    message_id = str(uuid.uuid4())
    envelope = {"id": message_id, "type": "vm.updated", "schema_version": 1, "time": "2026-11-27T10:00:00Z",
                "correlation_id": message_id, "causation_id": None, "actor": None, "payload": payload}
    system = world.system
    publish(system.broker_url, f"{system.prefix}imagesvc.inventory", "vm.updated", orjson.dumps(envelope),
            content_type="application/json", delivery_mode=2, message_id=message_id, correlation_id=message_id,
            type="vm.updated", user_id=urlsplit(system.broker_url).username or "guest")


def exists(world: World, name: str) -> bool:
    with world.client() as root:
        return root.get(f"/image/{name}/").status_code == 200


def test_an_image_used_by_a_vm_in_its_dc_is_not_deleted_until_the_vm_is_removed(world, origin):
    name, image_uuid = image_in(world, origin, world.dc)
    vm = vm_uuid()
    set_vm(world, vm, f"web-{world.tag}", world.dc, image_uuid)
    with world.client() as root:
        refused = root.delete(f"/image/{name}/")
    assert (refused.status_code, refused.json()) == (428, USED)
    assert exists(world, name)

    world.system.admin("vm", "remove", vm)
    with world.client() as root:
        deleted = root.delete(f"/image/{name}/")
    assert deleted.status_code == 200, deleted.text
    assert not exists(world, name)


def test_a_vm_in_a_datacenter_the_image_is_not_attached_to_does_not_block(world, origin):
    name, image_uuid = image_in(world, origin, world.dc)
    set_vm(world, vm_uuid(), f"elsewhere-{world.tag}", world.other_dc, image_uuid)
    with world.client() as root:
        assert root.get(f"/image/{name}/vm/").json()["result"] == []
        deleted = root.delete(f"/image/{name}/")
    assert deleted.status_code == 200, deleted.text


def test_the_vms_using_an_image_are_listed_for_its_image_admins_only(world, origin):
    name, image_uuid = image_in(world, origin, world.dc)
    first, second = vm_uuid(), vm_uuid()
    set_vm(world, second, f"b-{world.tag}", world.dc, image_uuid)
    set_vm(world, first, f"a-{world.tag}", world.dc, image_uuid)
    with world.client() as root:
        listed = root.get(f"/image/{name}/vm/")
        reversed_ = root.get(f"/image/{name}/vm/", params={"order_by": "-hostname"})
        full = root.get(f"/image/{name}/vm/", params={"full": "true"})
        bad_order = root.get(f"/image/{name}/vm/", params={"order_by": "name"})
        missing = root.get("/image/no-such-image-here/vm/")
    assert listed.status_code == 200, listed.text
    assert listed.json()["status"] == "SUCCESS"
    assert listed.json()["result"] == [f"a-{world.tag}", f"b-{world.tag}"]
    assert reversed_.json()["result"] == [f"b-{world.tag}", f"a-{world.tag}"]
    assert full.json()["result"][0] == {
        "hostname": f"a-{world.tag}", "uuid": first, "dc": world.dc, "node": "cn1.example.com", "status": "running",
        "ostype": 1, "disks": [{"disk_id": 1, "size": 10240, "image_uuid": image_uuid},
                               {"disk_id": 2, "size": 512, "image_uuid": None}]}
    assert (bad_order.status_code, bad_order.json()) == (
        412, {"detail": "Invalid order_by; Possible sort fields are: hostname"})
    assert (missing.status_code, missing.json()) == (404, {"detail": "Image not found"})

    with world.client(world.image_admin_key) as image_admin:
        assert image_admin.get(f"/image/{name}/vm/").json()["result"] == [f"a-{world.tag}", f"b-{world.tag}"]
    with world.client(world.plain_key) as plain:
        refused = plain.get(f"/image/{name}/vm/")
    assert (refused.status_code, refused.json()) == (403, {"detail": "Permission denied"})

    global_name, _ = image_in(world, origin, world.other_dc)  # bound to a DC they hold nothing in
    with world.client(world.image_admin_key) as image_admin:
        not_theirs = image_admin.get(f"/image/{global_name}/vm/")
    assert (not_theirs.status_code, not_theirs.json()) == (
        403, {"detail": "You do not have permission to perform this action."})


def test_admin_vm_list_shows_what_was_set(world):
    vm = vm_uuid()
    set_vm(world, vm, f"listed-{world.tag}", world.dc, str(uuid.uuid4()))
    listed = {row["uuid"]: row for row in map(json.loads, world.system.admin("vm", "list").splitlines())}
    assert listed[vm]["hostname"] == f"listed-{world.tag}" and listed[vm]["changed_at"].endswith("Z")
    world.system.admin("vm", "snapshot", "set", f"listed-{world.tag}", "daily", "--disk", "1")
    snapshots = [json.loads(line) for line in world.system.admin("vm", "snapshot", "list", vm).splitlines()]
    assert [(s["disk_id"], s["name"], s["status"]) for s in snapshots] == [(1, "daily", "ok")]


def test_a_vm_updated_event_published_with_pika_blocks_the_deletion(world, origin):
    if world.system.mode != "distributed":
        pytest.skip("nobody outside the process can publish on memory://")
    name, image_uuid = image_in(world, origin, world.dc)
    hostname = f"pika-{world.tag}"
    publish_vm_updated(world, {"uuid": vm_uuid(), "hostname": hostname, "dc": world.dc, "node": "cn1.example.com",
                               "status": "stopped", "ostype": 1, "changed_at": "2026-11-27T10:00:00Z",
                               "disks": [{"disk_id": 1, "size": 10240, "image_uuid": image_uuid}]})

    def listed() -> None:
        with world.client() as root:
            assert root.get(f"/image/{name}/vm/").json()["result"] == [hostname]

    eventually(listed, timeout=20, interval=0.2)
    with world.client() as root:
        refused = root.delete(f"/image/{name}/")
    assert (refused.status_code, refused.json()) == (428, USED)
    assert exists(world, name)


def test_a_detach_is_refused_while_a_vm_of_that_datacenter_uses_the_image(world, origin):
    """Reference §3.8: DELETE /dc/<dc>/image/<name>/ answers 428 ``Image is used by some VMs``
    while a VM of that datacenter uses the image, and detaches nothing."""
    name, image_uuid = image_in(world, origin, world.dc)
    with world.client() as root:
        assert root.post(f"/dc/{world.other_dc}/image/{name}/").status_code == 201
    vm = vm_uuid()
    set_vm(world, vm, f"detach-{world.tag}", world.other_dc, image_uuid)
    with world.client() as root:
        refused = root.delete(f"/dc/{world.other_dc}/image/{name}/")
        assert (refused.status_code, refused.json()) == (428, USED)
        assert root.get(f"/dc/{world.other_dc}/image/{name}/").status_code == 200  # still attached
        detached = root.delete(f"/dc/{world.dc}/image/{name}/")  # no VM of that datacenter uses it
        assert detached.status_code == 200, detached.text
    world.system.admin("vm", "remove", vm)
    with world.client() as root:
        assert root.delete(f"/dc/{world.other_dc}/image/{name}/").status_code == 200
        assert root.get(f"/dc/{world.other_dc}/image/{name}/").status_code == 404


def test_a_replica_keeps_the_image_in_use_but_is_not_listed(world, origin):
    """Reference §3.7: the VMs of an image are listed without replicas; a replica's disks still
    hold the image, so its deletion and its detach are refused (428)."""
    name, image_uuid = image_in(world, origin, world.dc)
    master, replica = vm_uuid(), vm_uuid()
    set_vm(world, master, f"master-{world.tag}", world.dc, image_uuid)
    set_vm(world, replica, f"replica-master-{world.tag}", world.dc, image_uuid, "--replica-of", master)
    with world.client() as root:
        assert root.get(f"/image/{name}/vm/").json()["result"] == [f"master-{world.tag}"]
        full = root.get(f"/image/{name}/vm/", params={"full": "true"}).json()["result"]
        assert [vm["uuid"] for vm in full] == [master]
    world.system.admin("vm", "remove", master)
    with world.client() as root:
        assert root.get(f"/image/{name}/vm/").json()["result"] == []
        refused = root.delete(f"/image/{name}/")
        assert (refused.status_code, refused.json()) == (428, USED)
        refused = root.delete(f"/dc/{world.dc}/image/{name}/")
        assert (refused.status_code, refused.json()) == (428, USED)
    world.system.admin("vm", "remove", replica)
    with world.client() as root:
        assert root.delete(f"/image/{name}/").status_code == 200


def test_a_replica_published_with_pika_is_not_listed_but_blocks_the_deletion(world, origin):
    if world.system.mode != "distributed":
        pytest.skip("nobody outside the process can publish on memory://")
    name, image_uuid = image_in(world, origin, world.dc)
    master = vm_uuid()
    hostname = f"replica-pika-{world.tag}"
    publish_vm_updated(world, {"uuid": vm_uuid(), "hostname": hostname, "dc": world.dc, "node": "cn2.example.com",
                               "status": "stopped", "ostype": 1, "changed_at": "2026-11-27T10:00:00Z",
                               "replica_of": master,
                               "disks": [{"disk_id": 1, "size": 10240, "image_uuid": image_uuid}]})
    system = world.system

    def stored() -> None:
        listed = {json.loads(line)["hostname"]: json.loads(line) for line in system.admin("vm", "list").splitlines()}
        assert listed[hostname]["replica_of"] == master

    eventually(stored, timeout=20, interval=0.2)
    with world.client() as root:
        assert root.get(f"/image/{name}/vm/").json()["result"] == []
        refused = root.delete(f"/image/{name}/")
    assert (refused.status_code, refused.json()) == (428, USED)
    assert exists(world, name)
