"""With an image server: imports download and verify real files into the store, updates rewrite
the stored manifest, deletes remove the data before the record (reference §7.3-7.5, deviations
#6, #9, #11). Both modes; the importer killed mid-download in the distributed mode."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import launch
from tests.support.origin import Origin
from tests.support.polling import eventually

pytestmark = pytest.mark.e2e

IDLE_TIMEOUT = 2


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def system(request, tmp_path_factory, store_dir):
    started = launch(request.param, request, tmp_path_factory, IMAGESVC_IMAGE_STORE=str(store_dir),
                     IMAGESVC_DOWNLOAD_IDLE_TIMEOUT=str(IDLE_TIMEOUT))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def origin():
    served = Origin()
    yield served
    served.close()


def finished(client, task_id: str, timeout: float = 30.0):
    """The task's final status answer."""
    def done():
        answer = client.get(f"/task/{task_id}/status/")
        assert answer.status_code != 201, answer.text
        return answer

    return eventually(done, timeout=timeout)


def accepted(answer) -> str:
    """The task id of a long-running command's answer: 201 PENDING, or, by the gateway's answer
    rule, its final answer when it finished within the answer window."""
    assert answer.status_code in (200, 201, 400), answer.text
    assert answer.json()["status"] in ("PENDING", "SUCCESS", "FAILURE"), answer.text
    return answer.json()["task_id"]


def start_import(client, name: str, manifest_url: str) -> str:
    return accepted(client.post(f"/image/{name}/", json={"manifest_url": manifest_url, "dc": "main"}))


def leftovers(store_dir: Path, uuid: str) -> list[str]:
    """Anything of ``uuid`` in the store: its directory, partial files, trash."""
    return sorted(str(p.relative_to(store_dir)) for p in store_dir.rglob(f"{uuid}*"))


def test_import_streams_the_file_into_the_store_and_verifies_it(system, origin, store_dir, name):
    content = os.urandom(3 * 1024 * 1024 + 17)
    url, manifest = origin.add_image(content)
    with system.client() as client:
        task_id = start_import(client, name, url)
        status = finished(client, task_id)
        assert status.status_code == 200, status.text
        result = status.json()["result"]
        assert result["returncode"] == 0
        assert result["message"].startswith(f"Successfully imported image {name} (transferred {len(content)} bytes")
        image = client.get(f"/image/{name}/").json()["result"]
        assert image["status"] == 1 and image["uuid"] == manifest["uuid"]
    stored = store_dir / manifest["uuid"]
    assert (stored / "file").read_bytes() == content
    written = json.loads((stored / "manifest").read_text())
    assert written["uuid"] == manifest["uuid"] and written["name"] == name
    assert written["files"][0]["sha1"] == hashlib.sha1(content).hexdigest()
    assert written["files"][0]["sha256"] == hashlib.sha256(content).hexdigest()
    assert not list((store_dir / ".partial").glob(f"{manifest['uuid']}*"))


@pytest.mark.parametrize("case", ["checksum", "short", "long"])
def test_a_file_that_does_not_match_its_manifest_is_rolled_back(system, origin, store_dir, name, case):
    content = os.urandom(256 * 1024)
    if case == "checksum":
        url, manifest = origin.add_image(content, sha1="ab" * 20)
        code = "checksum_mismatch"
    elif case == "short":
        url, manifest = origin.add_image(content, size=len(content) + 10)
        code = "size_mismatch"
    else:
        url, manifest = origin.add_image(content, size=len(content) - 10)
        code = "size_mismatch"
    with system.client() as client:
        task_id = start_import(client, name, url)
        status = finished(client, task_id)
        assert status.status_code == 400, status.text
        body = status.json()
        assert body["status"] == "FAILURE"
        result = body["result"]
        assert result["returncode"] == 8 and result["code"] == code
        assert result["message"].startswith("ERROR: Image file ")
        assert result["detail"] == f"Got bad return code (8). Error: {result['message']}"
        assert client.get(f"/image/{name}/").status_code == 404  # the original's rollback: row removed
    assert leftovers(store_dir, manifest["uuid"]) == []


def test_a_stalled_download_times_out_and_leaves_nothing(system, origin, store_dir, name):
    content = os.urandom(512 * 1024)
    url, manifest = origin.add_image(content, stall_after=64 * 1024)
    with system.client() as client:
        task_id = start_import(client, name, url)
        status = finished(client, task_id, timeout=IDLE_TIMEOUT + 20)
        assert status.status_code == 400
        assert status.json()["result"]["code"] == "timeout"
        assert client.get(f"/image/{name}/").status_code == 404
    assert leftovers(store_dir, manifest["uuid"]) == []


def test_a_running_import_shows_its_progress(system, origin, name):
    content = os.urandom(40 * 65536)  # 40 pieces, 0.1 s apart: about 4 s
    url, _ = origin.add_image(content, pace=0.1)
    with system.client() as client:
        task_id = start_import(client, name, url)

        def progressing():
            answer = client.get(f"/task/{task_id}/status/")
            assert answer.status_code == 201
            progress = answer.json().get("progress")
            assert progress and 0 < progress["done"] <= len(content) and progress["total"] == len(content)

        eventually(progressing, timeout=20)
        assert finished(client, task_id).status_code == 200
        image = client.get(f"/image/{name}/").json()["result"]
        assert image["status"] == 1


def imported(system, origin, name) -> dict:
    url, manifest = origin.add_image(os.urandom(64 * 1024))
    with system.client() as client:
        assert finished(client, start_import(client, name, url)).status_code == 200
    return manifest


def test_an_update_of_manifest_attributes_rewrites_the_stored_manifest(system, origin, store_dir, name):
    manifest = imported(system, origin, name)
    with system.client() as client:
        answer = client.put(f"/image/{name}/", json={"desc": "rewritten", "version": "2.0"})
        status = finished(client, accepted(answer))
        assert status.status_code == 200, status.text
        image = client.get(f"/image/{name}/").json()["result"]
        assert (image["desc"], image["version"], image["status"]) == ("rewritten", "2.0", 1)
    written = json.loads((store_dir / manifest["uuid"] / "manifest").read_text())
    assert (written["description"], written["version"]) == ("rewritten", "2.0")


def test_an_update_without_manifest_attributes_stays_immediate(system, origin, name):
    imported(system, origin, name)
    with system.client() as client:
        # Only dc_bound/owner: database-level even with an image server (reference §7.8).
        answer = client.put(f"/image/{name}/", json={"dc_bound": False})
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"]["dc_bound"] is False


def test_delete_removes_the_data_then_the_record(system, origin, store_dir, name):
    manifest = imported(system, origin, name)
    assert (store_dir / manifest["uuid"] / "file").exists()
    with system.client() as client:
        status = finished(client, accepted(client.delete(f"/image/{name}/")))
        assert status.status_code == 200, status.text
        assert status.json()["result"]["message"] == f"Successfully deleted image {name}"
        assert client.get(f"/image/{name}/").status_code == 404
    assert leftovers(store_dir, manifest["uuid"]) == []


def test_delete_of_an_image_whose_data_is_already_gone_completes(system, origin, store_dir, name):
    manifest = imported(system, origin, name)
    for path in sorted((store_dir / manifest["uuid"]).iterdir()):
        path.unlink()
    (store_dir / manifest["uuid"]).rmdir()
    with system.client() as client:
        assert finished(client, accepted(client.delete(f"/image/{name}/"))).status_code == 200
        assert client.get(f"/image/{name}/").status_code == 404


def test_the_importer_killed_mid_download_still_ends_the_import_once(system, origin, store_dir, name):
    if system.mode != "distributed":
        pytest.skip("the importer is its own process only in the distributed mode")
    content = os.urandom(60 * 65536)  # about 6 s at 0.1 s per piece
    url, manifest = origin.add_image(content, pace=0.1)
    with system.client() as client:
        task_id = start_import(client, name, url)

        def downloading():
            partial = list((store_dir / ".partial").glob(f"{manifest['uuid']}*"))
            assert partial and partial[0].stat().st_size > 0

        eventually(downloading, timeout=20)
        system.kill("importer")
        system.start_worker("importer")
        status = finished(client, task_id, timeout=90)
        assert status.status_code == 200, status.text
        assert client.get(f"/image/{name}/").json()["result"]["status"] == 1
    assert (store_dir / manifest["uuid"] / "file").read_bytes() == content
    assert not list((store_dir / ".partial").glob(f"{manifest['uuid']}*"))
    outcomes = [line for line in system.log("importer").splitlines() if task_id in line and '"task.failed"' in line]
    assert outcomes == []


def test_a_file_that_is_really_a_container_format_is_refused(system, origin, store_dir, name):
    """Reliability plan S11: a qcow2 (backing_file, data_file) served as a raw image never becomes one."""
    content = b"QFI\xfb\x00\x00\x00\x03" + os.urandom(128 * 1024)
    url, manifest = origin.add_image(content)
    with system.client() as client:
        status = finished(client, start_import(client, name, url))
        assert status.status_code == 400
        result = status.json()["result"]
        assert (result["code"], result["returncode"]) == ("unsafe_image", 8)
        assert client.get(f"/image/{name}/").status_code == 404
    assert leftovers(store_dir, manifest["uuid"]) == []


def test_a_store_that_fails_its_health_check_is_428(system, origin, store_dir, name):
    """Last in the module: it takes the store away for a moment. Every command that needs the
    image server is refused, also a PUT that changes only the owner (reference §13.27)."""
    manifest_url, _ = origin.add_image(os.urandom(1024))
    existing = f"{name}-kept"
    new_owner = f"o{uuid.uuid4().hex[:8]}"
    system.new_user(new_owner)
    with system.client() as client:
        assert finished(client, start_import(client, existing, origin.add_image(os.urandom(1024))[0])
                        ).status_code == 200
        owner = client.get(f"/image/{existing}/").json()["result"]["owner"]
    aside = store_dir.with_name(store_dir.name + "-aside")
    store_dir.rename(aside)
    store_dir.write_text("not a directory")
    try:
        with system.client() as client:
            answer = client.post(f"/image/{name}/", json={"manifest_url": manifest_url, "dc": "main"})
            assert answer.status_code == 428, answer.text
            assert answer.json() == {"detail": "Image server is not available"}
            assert client.get(f"/image/{name}/").status_code == 404
            answer = client.put(f"/image/{existing}/", json={"owner": new_owner})
            assert (answer.status_code, answer.json()) == (428, {"detail": "Image server is not available"})
            assert client.get(f"/image/{existing}/").json()["result"]["owner"] == owner
    finally:
        store_dir.unlink()
        aside.rename(store_dir)
