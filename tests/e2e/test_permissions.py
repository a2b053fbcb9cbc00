"""Who may do what, over HTTP, in both modes (reference §4.1-4.3, §5): every actor against every
image operation and the task status, on an image bound to dc1, one bound to dc2 and a global one.
A refused request changes nothing and puts no command on the broker.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.conftest import submitted_commands

pytestmark = pytest.mark.e2e

NO_CREDENTIALS = {"detail": "Authentication credentials were not provided."}
INVALID_KEY = {"detail": "Invalid API key"}
NO_API_ACCESS = {"detail": "User account is not allowed to access API"}
DENIED = {"detail": "Permission denied"}
NOT_YOURS = {"detail": "You do not have permission to perform this action."}
DC_NOT_FOUND = {"detail": "Datacenter not found"}

ACTORS = ["anonymous", "wrong key", "no api access", "no role", "dc1 admin", "dc1 image admin",
          "dc1 image+import admin", "superadmin"]
TARGETS = ["dc1", "dc2", "global"]
#: What the actors hold (reference §4.2): Admin = owner or `admin`; ImageAdmin = `image_admin` + Admin.
ROLES = {
    "dc1 admin": ["admin"],
    "dc1 image admin": ["admin", "image_admin"],
    "dc1 image+import admin": ["admin", "image_admin", "image_import_admin"],
}
#: Failures of authentication and of the entry permission, whatever the operation and the image.
BEFORE_ANYTHING = {"anonymous": NO_CREDENTIALS, "wrong key": INVALID_KEY, "no api access": NO_API_ACCESS,
                   "no role": DENIED, "dc1 admin": DENIED}


@dataclass
class World:
    system: object
    keys: dict[str, str | None]
    images: dict[str, str]
    tag: str

    def client(self, actor: str) -> httpx.Client:
        key = self.keys[actor]
        headers = {} if key is None else {"ES-API-KEY": key}
        return httpx.Client(base_url=self.system.url, headers=headers, timeout=30)

    def root(self) -> httpx.Client:
        return self.client("superadmin")


@pytest.fixture(scope="module")
def world(system, origin) -> World:
    tag = uuid.uuid4().hex[:6]
    system.admin("dc", "create", f"dc1{tag}")
    system.admin("dc", "create", f"dc2{tag}")
    keys: dict[str, str | None] = {"anonymous": None, "wrong key": "not-a-key-" + tag, "superadmin": system.api_key}
    keys["no api access"] = system.new_user(f"noapi{tag}", "--no-api-access")
    keys["no role"] = system.new_user(f"norole{tag}")
    for actor, permissions in ROLES.items():
        username = actor.replace(" ", "").replace("+", "")[:20] + tag
        keys[actor] = system.new_user(username)
        role = f"role-{username}"
        system.admin("role", "create", role, *[f"--permission={p}" for p in permissions])
        system.admin("role", "add-user", role, username)
        system.admin("role", "attach", role, f"dc1{tag}")
    world = World(system, keys, {}, tag)
    for target in TARGETS:
        world.images[target] = fresh_image(world, origin, target, name=f"perm-{target}-{tag}")
    return world


def dc(world: World, target: str) -> str:
    return f"{target}{world.tag}"


def expected_for_an_image(actor: str, target: str, allowed: int) -> tuple[int, dict | None]:
    """(status, body or None when allowed) of show, update and delete."""
    if actor in BEFORE_ANYTHING:
        return 403, BEFORE_ANYTHING[actor]
    if actor == "superadmin" or target == "dc1":
        return allowed, None
    return 403, NOT_YOURS


@pytest.mark.parametrize("actor", ACTORS)
def test_list(world, actor):
    with world.client(actor) as client:
        response = client.get("/image/")
    if actor in BEFORE_ANYTHING:
        assert (response.status_code, response.json()) == (403, BEFORE_ANYTHING[actor])
        return
    assert response.status_code == 200, response.text
    mine = {n for n in response.json()["result"] if n.endswith(world.tag)}
    if actor == "superadmin":
        assert mine == set(world.images.values())
    else:  # only images bound to a DC where they are ImageAdmin; global images are invisible
        assert mine == {world.images["dc1"]}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("actor", ACTORS)
def test_show(world, actor, target):
    with world.client(actor) as client:
        response = client.get(f"/image/{world.images[target]}/")
    status, body = expected_for_an_image(actor, target, 200)
    assert response.status_code == status, response.text
    if body is not None:
        assert response.json() == body
    else:
        assert response.json()["result"]["name"] == world.images[target]


def test_a_missing_image_is_404_before_any_object_permission(world):
    with world.client("dc1 image admin") as client:
        response = client.get("/image/no-such-image/")
    assert (response.status_code, response.json()) == (404, {"detail": "Image not found"})


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("actor", ACTORS)
def test_update(world, actor, target):
    name = world.images[target]
    desc = f"by {actor}"[:40]
    before = submitted_commands(world.system)
    with world.client(actor) as client:
        response = client.put(f"/image/{name}/", json={"desc": desc})
    status, body = expected_for_an_image(actor, target, 200)
    assert response.status_code == status, response.text
    with world.root() as root:
        shown = root.get(f"/image/{name}/").json()["result"]
    if body is not None:
        assert response.json() == body
        assert shown["desc"] != desc
        assert submitted_commands(world.system) == before  # nothing reached the broker
    else:
        assert response.json()["result"]["desc"] == desc == shown["desc"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("actor", ACTORS)
def test_delete(world, origin, actor, target):
    status, body = expected_for_an_image(actor, target, 200)
    # Allowed: delete an image of its own, the shared ones stay for the other cells.
    name = world.images[target] if body is not None else fresh_image(world, origin, target)
    before = submitted_commands(world.system)
    with world.client(actor) as client:
        response = client.delete(f"/image/{name}/")
    assert response.status_code == status, response.text
    with world.root() as root:
        still_there = root.get(f"/image/{name}/").status_code == 200
    if body is not None:
        assert response.json() == body
        assert still_there and submitted_commands(world.system) == before
    else:
        assert response.json()["status"] == "SUCCESS" and not still_there


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("actor", ACTORS)
def test_import(world, origin, actor, target):
    name = f"imp-{uuid.uuid4().hex[:8]}"
    request = {"manifest_url": origin.add_manifest()[0], **placement(world, target)}
    before = submitted_commands(world.system)
    with world.client(actor) as client:
        response = client.post(f"/image/{name}/", json=request)
    if actor in BEFORE_ANYTHING:
        expected = (403, BEFORE_ANYTHING[actor])
    elif actor == "superadmin":
        expected = (200, None)
    elif target == "dc2":
        expected = (404, DC_NOT_FOUND)  # a private DC they hold nothing in is invisible to them
    elif target == "global":
        # dc_bound is silently dropped for them: the image would be bound to the request's DC
        # (the default DC), where they hold nothing.
        expected = (403, NOT_YOURS)
    elif actor == "dc1 image+import admin":
        expected = (200, None)
    else:
        expected = (403, NOT_YOURS)  # ImageAdmin of dc1 without ImageImportAdmin there
    assert response.status_code == expected[0], response.text
    if expected[1] is not None:
        assert response.json() == expected[1]
        assert submitted_commands(world.system) == before
        with world.root() as root:
            assert root.get(f"/image/{name}/").status_code == 404
    else:
        result = response.json()["result"]
        assert result["dc_bound"] is (target != "global" or actor != "superadmin")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("actor", ACTORS)
def test_task_status(world, actor, target):
    """Readable by an Admin of the task's datacenter, or by the task's user or owner."""
    with world.root() as root:
        task_id = root.put(f"/image/{world.images[target]}/", json={}).json()["task_id"]
    with world.client(actor) as client:
        response = client.get(f"/task/{task_id}/status/")
    if actor in ("anonymous", "wrong key", "no api access"):
        assert (response.status_code, response.json()) == (403, BEFORE_ANYTHING[actor])
    elif actor == "superadmin" or (target == "dc1" and actor not in ("no role",)):
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "SUCCESS"
    else:
        assert (response.status_code, response.json()) == (403, DENIED)


def test_a_role_granted_later_takes_effect_and_a_revoked_key_stops_working(world):
    system = world.system
    username = f"late{world.tag}"
    key = system.new_user(username)
    with world.client("superadmin") as root:
        name = world.images["dc1"]
        with httpx.Client(base_url=system.url, headers={"ES-API-KEY": key}, timeout=30) as client:
            assert client.get(f"/image/{name}/").json() == DENIED
            role = f"late-role-{world.tag}"
            system.admin("role", "create", role, "--permission=admin", "--permission=image_admin")
            system.admin("role", "add-user", role, username)
            system.admin("role", "attach", role, dc(world, "dc1"))

            def granted() -> None:
                assert client.get(f"/image/{name}/").status_code == 200

            from tests.support.polling import eventually

            eventually(granted, timeout=10)  # the gateway's account cache expires within seconds
            system.admin("user", "key", username, "--revoke")

            def revoked() -> None:
                assert client.get(f"/image/{name}/").json() == INVALID_KEY

            eventually(revoked, timeout=10)
        assert root.get(f"/image/{name}/").status_code == 200


def refusal_for_a_dc(world: World, actor: str, place: str) -> tuple[int, dict]:
    """Attach/detach by anybody but a SuperAdmin: authentication first, then the URL's datacenter
    (404 unless visible to them: dc1 is, to its role holders), then 403."""
    if actor in ("anonymous", "wrong key", "no api access"):
        return 403, BEFORE_ANYTHING[actor]
    if actor == "no role" or place != dc(world, "dc1"):
        return 404, DC_NOT_FOUND
    return 403, DENIED


def placement(world: World, target: str) -> dict:
    """The import fields that bind an image to dc1 or dc2, or make it global."""
    return {"dc_bound": False} if target == "global" else {"dc": dc(world, target)}


def fresh_image(world: World, origin, target: str, name: str | None = None) -> str:
    """An image of its own for a cell that changes it, imported by the SuperAdmin."""
    name = name or f"img-{uuid.uuid4().hex[:8]}"
    with world.root() as root:
        response = root.post(f"/image/{name}/", json={"manifest_url": origin.add_manifest()[0],
                                                      **placement(world, target)})
        assert response.status_code == 200, response.text
    return name


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("actor", ACTORS)
def test_attach(world, origin, actor, target):
    """SuperAdmin only: attaching makes the image listed in that datacenter and clears dc_bound."""
    name = fresh_image(world, origin, target) if actor == "superadmin" else world.images[target]
    place = dc(world, "dc1" if target == "dc2" else "dc2")  # a datacenter it is not attached to yet
    before = submitted_commands(world.system)
    with world.client(actor) as client:
        response = client.post(f"/dc/{place}/image/{name}/", json={})
    if actor != "superadmin":
        assert (response.status_code, response.json()) == refusal_for_a_dc(world, actor, place)
        assert submitted_commands(world.system) == before
        return
    assert response.status_code == 201, response.text
    # As the original: the image as it was before its dc_bound was cleared (reference §13.30).
    assert response.json()["status"] == "SUCCESS"
    assert response.json()["result"]["dc_bound"] is (target != "global")
    with world.root() as root:
        listed = root.get(f"/dc/{place}/image/").json()["result"]
        shown = root.get(f"/image/{name}/", params={"extended": "true"}).json()["result"]
        again = root.post(f"/dc/{place}/image/{name}/", json={})
    assert name in listed
    assert shown["dc_bound"] is False and place in shown["dcs"]
    assert (again.status_code, again.json()) == (406, {"detail": "Image already exists"})


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("actor", ACTORS)
def test_detach(world, origin, actor, target):
    name = fresh_image(world, origin, target) if actor == "superadmin" else world.images[target]
    place = dc(world, "dc1")
    if actor == "superadmin":
        with world.root() as root:  # attached to dc1 in any case
            root.post(f"/dc/{place}/image/{name}/", json={})
    before = submitted_commands(world.system)
    with world.client(actor) as client:
        response = client.delete(f"/dc/{place}/image/{name}/")
    if actor != "superadmin":
        assert (response.status_code, response.json()) == refusal_for_a_dc(world, actor, place)
        assert submitted_commands(world.system) == before
        return
    assert response.status_code == 200, response.text
    assert response.json()["result"] is None
    with world.root() as root:
        assert name not in root.get(f"/dc/{place}/image/").json()["result"]
        missing = root.delete(f"/dc/{place}/image/{name}/")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Image not found"})


@pytest.mark.parametrize("actor", ACTORS)
def test_a_datacenters_image_list_is_for_its_admins(world, actor):
    with world.client(actor) as client:
        listed = client.get(f"/dc/{dc(world, 'dc1')}/image/")
        shown = client.get(f"/dc/{dc(world, 'dc1')}/image/{world.images['dc1']}/")
    if actor in ("anonymous", "wrong key", "no api access"):
        expected = (403, BEFORE_ANYTHING[actor])
    elif actor == "no role":
        expected = (404, DC_NOT_FOUND)  # dc1 is private and they hold nothing there
    else:
        expected = None  # an Admin of dc1 (owner or `admin`), or a SuperAdmin
    if expected is not None:
        assert (listed.status_code, listed.json()) == expected and (shown.status_code, shown.json()) == expected
        return
    assert listed.status_code == 200 and world.images["dc1"] in listed.json()["result"]
    assert shown.status_code == 200 and shown.json()["result"]["name"] == world.images["dc1"]
    with world.client(actor) as client:
        not_attached = client.get(f"/dc/{dc(world, 'dc1')}/image/{world.images['dc2']}/")
    assert (not_attached.status_code, not_attached.json()) == (404, {"detail": "Image not found"})


def test_a_datacenters_image_list_leaves_out_deleted_images_and_sorts_by_name_only(world, origin):
    name = fresh_image(world, origin, "dc1")
    with world.root() as root:
        place = dc(world, "dc1")
        assert name in root.get(f"/dc/{place}/image/").json()["result"]
        assert root.put(f"/image/{name}/", json={"access": 4}).status_code == 200  # DELETED
        assert name not in root.get(f"/dc/{place}/image/").json()["result"]
        assert name in root.get("/image/").json()["result"]  # the main list keeps showing it (§3.1)
        refused = root.get(f"/dc/{place}/image/", params={"order_by": "created"})
    assert (refused.status_code, refused.json()) == (412, {"detail": "Invalid order_by; Possible sort fields are: name"})


def test_an_image_requests_datacenter_is_its_bound_one(world):
    """es_dc and the (dummy) task id name the image's bound datacenter, also for a refusal."""
    with world.root() as root:
        shown = root.get(f"/image/{world.images['dc1']}/")
        invalid = root.put(f"/image/{world.images['dc1']}/", json={"access": 7})
        global_ = root.get(f"/image/{world.images['global']}/")
    assert shown.headers["es_dc"] == dc(world, "dc1") == invalid.headers["es_dc"]
    assert invalid.status_code == 400
    assert global_.headers["es_dc"] == "main"
    dc1_id = shown.json()["task_id"].split("-")[0].split("u")[1]
    assert dc1_id != "1" and invalid.json()["task_id"].split("-")[0].endswith("u" + dc1_id)


def test_the_owner_of_a_task_may_read_it_without_any_role(world, origin):
    """UserTask: the task's owner (the image's owner) reads its status, Admin of its DC or not."""
    name = fresh_image(world, origin, "dc2")
    owner = f"norole{world.tag}"
    with world.root() as root:
        assert root.put(f"/image/{name}/", json={"owner": owner}).status_code == 200
        task_id = root.put(f"/image/{name}/", json={"desc": "owned"}).json()["task_id"]
    with world.client("no role") as client:
        response = client.get(f"/task/{task_id}/status/")
    assert response.status_code == 200 and response.json()["status"] == "SUCCESS"
    with world.client("dc1 admin") as client:  # neither user, owner nor Admin of dc2
        assert client.get(f"/task/{task_id}/status/").json() == DENIED
