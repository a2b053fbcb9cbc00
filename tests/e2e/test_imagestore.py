"""Remote image repositories over HTTP (reference §3.8), in the embedded and the distributed mode.

The repositories are served by the loopback origin; the system is started with them configured
(``IMAGESVC_IMAGE_REPOSITORIES``) and with an image server URL, which adds the local repository
for SuperAdmins. Refreshes are fetched by the importer, never by the gateway.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass

import pytest
from sqlalchemy import create_engine

from imagesvc.shared.db import locks
from tests.e2e.conftest import database_url, launch, submitted_commands
from tests.support.origin import sample_manifest

pytestmark = pytest.mark.e2e

DENIED = {"detail": "Permission denied"}
NOT_FOUND = {"detail": "ImageStore not found"}
IMAGE_NOT_FOUND = {"detail": "Image not found"}
EXISTS = {"detail": "Image already exists"}
LOCAL = "_127.0.0.1"


@dataclass
class Repositories:
    tag: str
    urls: dict[str, str]
    #: The "good" repository's manifests, in the order it lists them.
    good: list[dict]
    flaky: list[dict]
    local_url: str


@pytest.fixture(scope="module")
def repos(origin) -> Repositories:
    tag = uuidlib.uuid4().hex[:6]
    base = f"/{tag}"
    good = [
        sample_manifest(name=f"rs-a-{tag}", published_at="2019-05-01T00:00:00Z"),
        sample_manifest(name=f"rs-b-{tag}", published_at="2021-05-01T00:00:00Z", type="zone-dataset"),
        # Same name as the first one: once that is imported, this one's name is taken.
        sample_manifest(name=f"rs-a-{tag}", published_at="2020-05-01T00:00:00Z"),
    ]
    flaky = [sample_manifest(name=f"rs-f-{tag}")]
    urls = {
        "good": origin.add_repository(f"{base}/good/", good),
        "flaky": origin.add_repository(f"{base}/flaky/", flaky),
        "broken": origin.base + f"{base}/broken/",
        "notlist": origin.base + f"{base}/notlist/",
    }
    origin.route(f"{base}/broken/images", b"oops", status=500)
    origin.route(f"{base}/notlist/images", b'{"images": []}')
    local_url = origin.add_repository(f"{base}/local/", [sample_manifest(name=f"rs-l-{tag}")])
    return Repositories(tag, urls, good, flaky, local_url)


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def system(request, tmp_path_factory, repos):
    configured = ",".join(f"{name}={url}" for name, url in repos.urls.items())
    started = launch(request.param, request, tmp_path_factory, IMAGESVC_IMAGE_REPOSITORIES=configured,
                     IMAGESVC_IMAGE_SERVER_URL=repos.local_url)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def keys(system, repos) -> dict[str, str]:
    """API keys: a user without roles, and an ImageImportAdmin of the default datacenter who is not
    its ImageAdmin."""
    tag = repos.tag
    plain = system.new_user(f"plain{tag}")
    importer = system.new_user(f"importer{tag}")
    system.admin("role", "create", f"imp{tag}", "--permission=image_import_admin")
    system.admin("role", "add-user", f"imp{tag}", f"importer{tag}")
    system.admin("role", "attach", f"imp{tag}", "main")
    return {"plain": plain, "importer": importer}


def refresh(client, name: str):
    return client.put(f"/imagestore/{name}/")


class TestRepositories:
    def test_list_names_sorted_and_objects_with_the_local_repository_for_superadmins(self, system, repos):
        with system.client() as client:
            response = client.get("/imagestore/")
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "SUCCESS"
            assert response.json()["result"] == sorted([*repos.urls, LOCAL])
            full = client.get("/imagestore", params={"full": "true"}).json()["result"]
            assert [item["name"] for item in full] == sorted([*repos.urls, LOCAL])
            for item in full:
                assert list(item) == ["name", "url", "last_update", "image_count", "error"]
                assert item["url"] == {**repos.urls, LOCAL: repos.local_url}[item["name"]]
            assert client.get("/imagestore/?extended=1").json()["result"] == full

    def test_show_one_and_unknown_is_404(self, system, repos):
        with system.client() as client:
            shown = client.get("/imagestore/good/")
            assert shown.status_code == 200
            assert (shown.json()["result"]["name"], shown.json()["result"]["url"]) == ("good", repos.urls["good"])
            for method in ("get", "put"):
                response = getattr(client, method)("/imagestore/nosuchrepo/")
                assert (response.status_code, response.json()) == (404, NOT_FOUND)
            assert client.get("/imagestore/nosuchrepo/image/").json() == NOT_FOUND

    def test_refresh_stores_the_list_newest_first(self, system, repos):
        with system.client() as client:
            response = refresh(client, "good")
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["status"] == "SUCCESS" and response.headers["es_task_id"] == body["task_id"]
            result = body["result"]
            assert (result["name"], result["image_count"], result["error"]) == ("good", 3, None)
            assert result["last_update"] is not None
            assert client.get("/imagestore/good/").json()["result"] == result
            status = client.get(f"/task/{body['task_id']}/status/")
            assert (status.status_code, status.json()["result"]) == (200, result)

            newest_first = [repos.good[1]["uuid"], repos.good[2]["uuid"], repos.good[0]["uuid"]]
            assert client.get("/imagestore/good/image/").json()["result"] == newest_first
            full = client.get("/imagestore/good/image/", params={"full": "True"}).json()["result"]
            assert [item["uuid"] for item in full] == newest_first
            zone = full[0]
            assert zone["manifest"] == repos.good[1]
            assert zone["manifest_url"] == f"{repos.urls['good']}images/{repos.good[1]['uuid']}"
            assert (zone["name"], zone["ostype"], zone["size"], zone["download_size"], zone["created"]) == (
                repos.good[1]["name"], 5, 10240, 64, "2021-05-01T00:00:00Z")
            one = client.get(f"/imagestore/good/image/{repos.good[1]['uuid']}/")
            assert (one.status_code, one.json()["result"]) == (200, zone)
            missing = client.get(f"/imagestore/good/image/{uuidlib.uuid4()}/")
            assert (missing.status_code, missing.json()) == (404, IMAGE_NOT_FOUND)

    def test_a_repository_never_refreshed_lists_no_images(self, system):
        with system.client() as client:
            assert client.get(f"/imagestore/{LOCAL}/image/").json()["result"] == []

    def test_a_failing_repository_answers_400_and_records_its_error(self, system, repos):
        with system.client() as client:
            response = refresh(client, "broken")
            assert response.status_code == 400, response.text
            assert response.json()["status"] == "FAILURE"
            result = response.json()["result"]
            assert result["name"] == "broken" and result["error"].startswith("500 Server Error")
            assert client.get("/imagestore/broken/").json()["result"] == result

            response = refresh(client, "notlist")
            assert response.status_code == 400
            assert response.json()["result"]["error"] == "Unexpected output from image server (<class 'dict'>)"

    def test_refreshing_all_fails_when_any_fails_and_still_refreshes_the_others(self, system, repos):
        with system.client() as client:
            response = client.put("/imagestore/")
            assert response.status_code == 400, response.text
            result = {item["name"]: item for item in response.json()["result"]}
            assert list(result) == sorted([*repos.urls, LOCAL])
            assert result["good"]["error"] is None and result[LOCAL]["image_count"] == 1
            assert result["broken"]["error"] and result["notlist"]["error"]

    def test_a_failed_refresh_keeps_the_previous_list(self, system, repos, origin):
        path = repos.urls["flaky"][len(origin.base):] + "images"
        listed = origin.routes[path]
        with system.client() as client:
            assert refresh(client, "flaky").status_code == 200
            origin.route(path, b"", status=503)
            try:
                response = refresh(client, "flaky")
            finally:
                origin.routes[path] = listed
            assert response.status_code == 400
            result = response.json()["result"]
            assert result["image_count"] == 1 and result["error"].startswith("503 Server Error")
            assert client.get("/imagestore/flaky/image/").json()["result"] == [repos.flaky[0]["uuid"]]

    def test_a_held_lock_refuses_the_refresh_with_423(self, system):
        engine = create_engine(database_url(system))
        try:
            with engine.begin() as conn:
                assert locks.acquire(conn, "imagestore-update", "another-task", 600)
            with system.client() as client:
                response = refresh(client, "good")
                assert (response.status_code, response.json()) == (423, {"detail": "Task is already running"})
            with engine.begin() as conn:
                locks.release(conn, "imagestore-update", "another-task")
            with system.client() as client:
                assert refresh(client, "good").status_code == 200
        finally:
            engine.dispose()


class TestImport:
    def test_import_a_repository_image_under_its_manifest_name_then_406(self, system, repos):
        first, _, same_name = repos.good
        with system.client() as client:
            assert refresh(client, "good").status_code == 200
            response = client.post(f"/imagestore/good/image/{first['uuid']}/",
                                   json={"dc": "main", "file_url": "http://127.0.0.1:1/ignored"})
            assert response.status_code == 200, response.text
            image = response.json()["result"]
            assert (image["name"], image["uuid"], image["desc"]) == (first["name"], first["uuid"], "CentOS 7 64-bit")
            assert client.get(f"/image/{first['name']}/").json()["result"] == image

            before = submitted_commands(system)
            # The uuid is taken (under another name), and the name is taken (by another uuid).
            again = client.post(f"/imagestore/good/image/{first['uuid']}/", json={"dc": "main", "name": "x" + repos.tag})
            assert (again.status_code, again.json()) == (406, EXISTS)
            taken = client.post(f"/imagestore/good/image/{same_name['uuid']}/", json={"dc": "main"})
            assert (taken.status_code, taken.json()) == (406, EXISTS)
            assert submitted_commands(system) == before

    def test_the_requested_name_wins_and_the_import_rules_apply(self, system, repos):
        zone = repos.good[1]
        with system.client() as client:
            assert refresh(client, "good").status_code == 200
            missing_dc = client.post(f"/imagestore/good/image/{zone['uuid']}/", json={"name": "own-" + repos.tag})
            assert missing_dc.status_code == 400
            assert set(missing_dc.json()["result"]) == {"dc", "dc_bound"}
            response = client.post(f"/imagestore/good/image/{zone['uuid']}/",
                                   json={"dc": "main", "name": "own-" + repos.tag, "alias": "mine"})
            assert response.status_code == 200, response.text
            assert (response.json()["result"]["name"], response.json()["result"]["alias"],
                    response.json()["result"]["ostype"]) == ("own-" + repos.tag, "mine", 5)


class TestRefusals:
    def test_users_without_the_import_permission_are_refused(self, system, keys):
        before = submitted_commands(system)
        with system.client(headers={"ES-API-KEY": keys["plain"]}) as client:
            for method, path in [("get", "/imagestore/"), ("put", "/imagestore/"), ("get", "/imagestore/good/"),
                                 ("put", "/imagestore/good/"), ("get", "/imagestore/good/image/"),
                                 ("post", f"/imagestore/good/image/{uuidlib.uuid4()}/")]:
                response = client.request(method.upper(), path)
                assert (response.status_code, response.json()) == (403, DENIED), (method, path)
        assert submitted_commands(system) == before

    def test_an_import_admin_sees_no_local_repository_and_needs_image_admin_to_import(self, system, repos, keys):
        with system.client() as root:
            assert refresh(root, "good").status_code == 200
        before = submitted_commands(system)
        with system.client(headers={"ES-API-KEY": keys["importer"]}) as client:
            assert client.get("/imagestore/").json()["result"] == sorted(repos.urls)
            assert client.get(f"/imagestore/{LOCAL}/").json() == NOT_FOUND
            assert client.put(f"/imagestore/{LOCAL}/").json() == NOT_FOUND
            assert client.get("/imagestore/good/image/").status_code == 200
            fresh = repos.good[2]["uuid"]
            response = client.post(f"/imagestore/good/image/{fresh}/", json={"dc": "main", "name": "n" + repos.tag})
            assert (response.status_code, response.json()) == (403, DENIED)
        assert submitted_commands(system) == before
        with system.client(headers={"ES-API-KEY": keys["importer"]}) as client:
            response = refresh(client, "good")
            assert response.status_code == 200, response.text

    @pytest.mark.parametrize("method, path, kwargs, code", [
        ("GET", "/imagestore/", {"params": {"full": "maybe"}}, 400),
        ("GET", "/imagestore/good/image/", {"params": {"extended": "no way"}}, 400),
        ("PUT", "/imagestore/good/", {"content": b"x=1", "headers": {"Content-Type": "text/plain"}}, 415),
        ("PUT", "/imagestore/", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400),
        ("POST", "/imagestore/good/image/GOOD/", {"json": {}}, 404),
        ("POST", "/imagestore/nosuchrepo/image/x/", {"json": {}}, 404),
        ("GET", "/imagestore/good/image/" + "a" * 5000 + "/", {}, 404),
        ("GET", "/imagestore/bad%00name/", {}, 404),
        ("DELETE", "/imagestore/good/", {}, 405),
    ])
    def test_bad_input_is_a_clear_4xx_and_publishes_nothing(self, system, method, path, kwargs, code):
        before = submitted_commands(system)
        with system.client() as client:
            response = client.request(method, path, **kwargs)
            assert response.status_code == code, response.text
            assert "detail" in response.json() or response.json()["status"] == "FAILURE"
        assert submitted_commands(system) == before

    @pytest.mark.parametrize("body, errors", [
        ({"dc": "main", "name": "bad name!"}, {"name": ["Invalid value."]}),
        ({"dc": "main", "name": ["x"]}, {"name": ["Not a valid string."]}),
        ({"dc": "main", "name": "n" * 40}, {"name": ["Ensure this value has at most 32 characters (it has 40)."]}),
        ({"dc": "main", "name": "a\u0000b"}, {"name": ["Invalid value."]}),
    ])
    def test_a_bad_image_name_is_a_field_error(self, system, repos, body, errors):
        with system.client() as client:
            assert refresh(client, "good").status_code == 200
            before = submitted_commands(system)
            response = client.post(f"/imagestore/good/image/{repos.good[2]['uuid']}/", json=body)
            assert (response.status_code, response.json()["result"]) == (400, errors)
        assert submitted_commands(system) == before
