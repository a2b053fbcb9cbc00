"""The image API over HTTP, end to end, in the embedded and the distributed mode.

Each command travels HTTP -> command on the broker -> consumer -> events -> projector -> read
model -> HTTP; the answers are those of the original API (reference-behaviour.md §3, §5, §6)
with deviations.md applied.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest

from imagesvc.domain import tasks
from tests.support.origin import sample_manifest

pytestmark = pytest.mark.e2e

TASK_ID = re.compile(r"^\d+e\d+u\d+-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}$")
DUMMY_ID = re.compile(r"^1d1u1-6f75849b-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}$")


def import_image(client, origin, name, **fields):
    manifest_url, manifest = origin.add_manifest()
    response = client.post(f"/image/{name}/", json={"manifest_url": manifest_url, "dc": "main", **fields})
    return response, manifest


class TestImport:
    def test_import_records_the_image_with_defaults_from_the_manifest(self, system, origin, name):
        with system.client() as client:
            before = datetime.now(timezone.utc)
            response, manifest = import_image(client, origin, name)
            assert response.status_code == 200, response.text
            body = response.json()
            assert TASK_ID.match(body["task_id"]) and body["status"] == "SUCCESS"
            assert response.headers["es_task_id"] == body["task_id"]
            image = body["result"]
            assert list(image) == ["dc_bound", "name", "uuid", "alias", "version", "owner", "access", "desc",
                                   "ostype", "size", "resize", "deploy", "tags", "status", "created"]
            assert image == {
                "dc_bound": True, "name": name, "uuid": manifest["uuid"], "alias": name, "version": "20200101",
                "owner": image["owner"], "access": 3, "desc": "CentOS 7 64-bit", "ostype": 1, "size": 10240,
                "resize": True, "deploy": False, "tags": ["linux"], "status": 1, "created": image["created"],
            }
            assert image["owner"] in ("admin", "root")
            created = datetime.fromisoformat(image["created"].replace("Z", "+00:00"))
            assert created >= before.replace(microsecond=0)

            shown = client.get(f"/image/{name}/")
            assert shown.status_code == 200
            assert DUMMY_ID.match(shown.json()["task_id"])
            assert shown.json()["result"] == image
            extended = client.get(f"/image/{name}/", params={"extended": "True"}).json()["result"]
            assert extended == {**image, "dcs": ["main"]}

    def test_request_fields_override_the_manifest(self, system, origin, name):
        with system.client() as client:
            response, _ = import_image(client, origin, name, alias="My-Alias", version="2.0", desc="mine",
                                       access="1", resize="false", deploy=True, tags="web, db")
            assert response.status_code == 200, response.text
            image = response.json()["result"]
            assert (image["alias"], image["version"], image["desc"], image["access"]) == ("My-Alias", "2.0", "mine", 1)
            assert (image["resize"], image["deploy"], image["tags"]) == (False, True, ["web", "db"])

    def test_a_global_image_is_bound_to_no_datacenter(self, system, origin, name):
        with system.client() as client:
            manifest_url, _ = origin.add_manifest()
            response = client.post(f"/image/{name}/", json={"manifest_url": manifest_url, "dc_bound": False})
            assert response.status_code == 200, response.text
            assert response.json()["result"]["dc_bound"] is False
            assert client.get(f"/image/{name}/?extended=true").json()["result"]["dcs"] == []

    def test_zone_images_resize_by_default(self, system, origin, name):
        with system.client() as client:
            url, _ = origin.add_manifest(sample_manifest(type="zone-dataset", tags={}))
            response = client.post(f"/image/{name}", json={"manifest_url": url, "dc": "main"})
            assert response.status_code == 200, response.text
            assert (response.json()["result"]["ostype"], response.json()["result"]["resize"]) == (5, True)


class TestUpdateAndDelete:
    def test_update_changes_only_the_supplied_fields_and_is_read_back_at_once(self, system, origin, name):
        with system.client() as client:
            original = import_image(client, origin, name)[0].json()["result"]
            response = client.put(f"/image/{name}/", json={"alias": "renamed", "access": "4", "tags": ["a", "b"]})
            assert response.status_code == 200, response.text
            updated = response.json()["result"]
            assert updated == {**original, "alias": "renamed", "access": 4, "tags": ["a", "b"]}
        # Read-your-writes: any gateway already serves the new state.
        for index in range(len(system.gateway_urls)):
            with system.client(index) as other:
                assert other.get(f"/image/{name}/").json()["result"] == updated

    def test_an_empty_update_is_a_no_op_success(self, system, origin, name):
        with system.client() as client:
            original = import_image(client, origin, name)[0].json()["result"]
            response = client.put(f"/image/{name}/", json={})
            assert (response.status_code, response.json()["result"]) == (200, original)

    def test_dc_bound_false_makes_an_image_global_and_true_binds_it_back(self, system, origin, name):
        with system.client() as client:
            import_image(client, origin, name)
            assert client.put(f"/image/{name}/", json={"dc_bound": False}).json()["result"]["dc_bound"] is False
            assert client.put(f"/image/{name}/", json={"dc_bound": True}).json()["result"]["dc_bound"] is True

    def test_delete_removes_the_image(self, system, origin, name):
        with system.client() as client:
            import_image(client, origin, name)
            response = client.delete(f"/image/{name}/")
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "SUCCESS" and response.json()["result"] is None
            assert client.get(f"/image/{name}/").json() == {"detail": "Image not found"}
            assert name not in client.get("/image/").json()["result"]
            # The name is free again.
            assert import_image(client, origin, name)[0].status_code == 200

    def test_owner_can_be_changed_to_another_user_only_if_it_exists(self, system, origin, name):
        with system.client() as client:
            import_image(client, origin, name)
            response = client.put(f"/image/{name}/", json={"owner": "nobody"})
            assert response.status_code == 400
            assert response.json()["result"] == {"owner": ["Object with username=nobody does not exist."]}


class TestList:
    def test_list_orders_and_expands(self, system, origin):
        with system.client() as client:
            names = [f"lst-{i}-{origin.port}" for i in (3, 1, 2)]
            for name in names:
                if client.get(f"/image/{name}/").status_code == 404:
                    assert import_image(client, origin, name)[0].status_code == 200
            listed = client.get("/image/").json()["result"]
            assert listed == sorted(listed)
            mine = [n for n in listed if n in names]
            assert mine == sorted(names)
            desc = [n for n in client.get("/image/", params={"order_by": "-name"}).json()["result"] if n in names]
            assert desc == sorted(names, reverse=True)
            by_created = [n for n in client.get("/image/", params={"order_by": "created"}).json()["result"]
                          if n in names]
            assert by_created == names  # imported in this order
            assert [n for n in client.get("/image/?order_by=%2Bname").json()["result"] if n in names] == sorted(names)
            full = client.get("/image/", params={"full": "true"}).json()["result"]
            assert {item["name"] for item in full} >= set(names)
            assert all("dcs" not in item for item in full)
            extended = client.get("/image/", params={"extended": "1"}).json()["result"]
            assert all(item["dcs"] == ["main"] for item in extended if item["name"] in names)


class TestTaskStatus:
    def test_every_command_is_a_task_that_can_be_polled(self, system, origin, name):
        with system.client() as client:
            response, _ = import_image(client, origin, name)
            task_id = response.json()["task_id"]
            status = client.get(f"/task/{task_id}/status/")
            assert status.status_code == 200
            assert status.json() == {"task_id": task_id, "status": "SUCCESS", "result": response.json()["result"]}
            assert status.headers["es_task_response"] == "true"

    def test_a_failed_task_reports_its_code_and_result(self, system, origin, name):
        with system.client() as client:
            url = origin.route(f"/missing/{name}", status=404)
            response = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"})
            assert response.status_code == 400
            task_id = response.json()["task_id"]
            assert TASK_ID.match(task_id)
            status = client.get(f"/task/{task_id}/status/")
            assert (status.status_code, status.json()) == (400, response.json())

    @pytest.mark.parametrize("task_id, code, detail", [
        ("1e1u1-00000000-0000-0000-0000", 404, tasks.TASK_NOT_FOUND),
        ("1d1u1-6f75849b-0000-0000-0000", 404, tasks.TASK_NOT_FOUND),
        ("not-a-task-id", 403, "Permission denied"),
        ("1e1u99-00000000-0000-0000-0000", 403, "Permission denied"),  # no such datacenter
        ("9" * 5000 + "e1u1-00000000-0000-0000-0000", 403, "Permission denied"),
    ])
    def test_unknown_dummy_and_malformed_ids(self, system, task_id, code, detail):
        with system.client() as client:
            response = client.get(f"/task/{task_id}/status/")
            assert (response.status_code, response.json()) == (code, {"detail": detail})


class TestProtocolDetails:
    def test_trailing_slash_is_optional_and_headers_are_set(self, system):
        with system.client() as client:
            for path in ("/image", "/image/"):
                response = client.get(path)
                assert response.status_code == 200
                assert response.headers["es_username"] in ("admin", "root")
                assert response.headers["es_dc"] == "main"
                assert "es_version" in response.headers

    def test_indentation_requested_by_the_es_client_is_honoured(self, system):
        with system.client(headers={"Accept": "application/json; indent=4"}) as client:
            text = client.get("/image/").text
            assert text.startswith('{\n    "task_id"')

    def test_openapi_description_is_published(self, system):
        with system.client() as client:
            document = client.get("/openapi.json").json()
            assert document["openapi"].startswith("3.")
            assert {"/api/image/", "/api/image/{name}/", "/api/task/{task_id}/status/"} <= set(document["paths"])
