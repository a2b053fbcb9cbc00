"""Account administration over HTTP by a SuperAdmin, the same as ``imagesvc admin``: users and
their API keys, groups (roles), datacenters, grants; and what it takes effect on."""

from __future__ import annotations

import uuid

import httpx
import pytest

pytestmark = pytest.mark.e2e


def test_a_superadmin_sets_up_a_datacenter_image_admin_over_http(system, origin):
    tag = uuid.uuid4().hex[:6]
    user, group, dc = f"ann{tag}", f"imgs{tag}", f"dc{tag}"
    with system.client() as root:
        created = root.post(f"/accounts/user/{user}/", json={"api_access": True, "password": "pw"})
        assert created.status_code == 201, created.text
        assert created.json()["result"]["username"] == user and created.json()["result"]["has_key"] is False
        assert (root.post(f"/accounts/user/{user}/", json={}).json()) == {"detail": "User already exists"}
        key = root.put(f"/accounts/user/{user}/apikeys/").json()["result"]["api_key"]
        assert root.get(f"/accounts/user/{user}/").json()["result"]["has_key"] is True

        made = root.post(f"/dc/{dc}/", json={"owner": user, "access": 3})
        assert made.status_code == 201 and made.json()["result"]["owner"] == user
        group_made = root.post(f"/accounts/group/{group}/",
                               json={"permissions": ["admin", "image_admin", "image_import_admin"], "users": [user]})
        assert group_made.status_code == 201 and group_made.json()["result"]["users"] == [user]
        granted = root.post(f"/dc/{dc}/group/{group}/")
        assert granted.status_code == 201 and granted.json()["result"]["dcs"] == [dc]
        assert root.get(f"/dc/{dc}/group/").json()["result"] == [group]
        assert user in root.get("/accounts/user/").json()["result"]
        assert group in root.get("/accounts/group/").json()["result"]
        assert dc in root.get("/dc/").json()["result"]

    with httpx.Client(base_url=system.url, headers={"ES-API-KEY": key}, timeout=30) as ann:
        imported = ann.post(f"/image/ann-{tag}/", json={"manifest_url": origin.add_manifest()[0], "dc": dc})
        assert imported.status_code == 200, imported.text
        assert ann.get("/image/").json()["result"] == [f"ann-{tag}"]
        # Not a SuperAdmin: the administration is not hers.
        assert ann.get("/accounts/user/").json() == {"detail": "Permission denied"}
        assert ann.post(f"/dc/other{tag}/").json() == {"detail": "Permission denied"}

    with system.client() as root:
        assert root.delete(f"/dc/{dc}/group/{group}/").status_code == 200
        assert root.get(f"/dc/{dc}/group/").json()["result"] == []
    with httpx.Client(base_url=system.url, headers={"ES-API-KEY": key}, timeout=30) as ann:
        from tests.support.polling import eventually

        eventually(lambda: _equal(ann.get("/image/").json(), {"detail": "Permission denied"}), timeout=10)


def _equal(actual, expected) -> None:
    assert actual == expected


@pytest.mark.parametrize("path, body, status, expected", [
    ("/accounts/user/u{tag}/", {"api_access": "maybe"}, 400, {"api_access": ["Must be a valid boolean."]}),
    ("/accounts/user/bad name/", {}, 400, None),
    ("/accounts/group/g{tag}/", {"permissions": ["root"]}, 400,
     {"permissions": ["Select a valid choice. root is not one of the available choices."]}),
    ("/accounts/group/g{tag}/", {"users": ["nobody-at-all"]}, 400,
     {"users": ["Object with username=nobody-at-all does not exist."]}),
    ("/dc/d{tag}/", {"access": 2}, 400, {"access": ["Select a valid choice. 2 is not one of the available choices."]}),
    ("/dc/d{tag}/", {"owner": "nobody-at-all"}, 400, {"owner": ["Object with username=nobody-at-all does not exist."]}),
    ("/dc/{tag}xxxxxxxxxxxxxxxx/", {}, 400, None),
])
def test_bad_administration_requests_are_400_and_change_nothing(system, path, body, status, expected):
    tag = uuid.uuid4().hex[:6]
    url = path.format(tag=tag)
    with system.client() as root:
        response = root.post(url, json=body)
        assert response.status_code == status, response.text
        assert response.json()["status"] == "FAILURE"
        if expected is not None:
            assert response.json()["result"] == expected
        assert root.get(url).status_code == 404  # nothing was created


@pytest.mark.parametrize("path", ["/accounts/user/nobody-x/", "/accounts/group/nobody-x/", "/dc/nowhere-x/"])
def test_unknown_objects_are_404(system, path):
    with system.client() as root:
        response = root.get(path)
    assert response.status_code == 404 and response.json()["detail"].endswith("not found")
