"""More of the image store, end to end, in both modes: an import from another imagesvc's image
server, an import from the system's own image server ("esimg update -c", reference §7.3,
deviations #8), an import given up after its last attempt and undone, the fetch rules applied to
the file URL and its redirects (deviations #6; reliability plan S1-S3, S5), the size limit and a
body shorter than its Content-Length, and the image server's node (423, reference §5).

The module's system has a store of its own, ``IMAGESVC_MAX_IMAGE_BYTES``, two attempts per
command and an image server node (kept ``online`` except inside the node test). In the
distributed mode its image server URL is a real ``imagesvc image-server`` over the same store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from imagesvc.shared.contracts.events import image_stream
from tests.e2e.conftest import database_url, launch
from tests.e2e.test_image_store import accepted, finished, leftovers, start_import
from tests.support.origin import Origin
from tests.support.systems import System, start_embedded, start_image_server

pytestmark = pytest.mark.e2e

MAX_IMAGE_BYTES = 4 * 1024 * 1024
MAX_ATTEMPTS = 2
NODE = "node1"


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def system(request, tmp_path_factory):
    store = tmp_path_factory.mktemp(f"store-{request.param}")
    env = {"IMAGESVC_IMAGE_STORE": str(store), "IMAGESVC_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
           "IMAGESVC_MAX_ATTEMPTS": str(MAX_ATTEMPTS), "IMAGESVC_RETRY_BACKOFF": "0.2",
           "IMAGESVC_IMAGE_SERVER_NODE": NODE}
    image_server = None
    if request.param == "distributed":
        # The image server compute nodes and other instances reach: its own process, same store.
        image_server = start_image_server(tmp_path_factory.mktemp("image-server"), store)
        env["IMAGESVC_IMAGE_SERVER_URL"] = image_server.url
    try:
        started = launch(request.param, request, tmp_path_factory, **env)
        started.admin("node", "set", NODE, "--status", "online")
    except BaseException:
        if image_server is not None:
            image_server.stop()
        raise
    yield started
    started.stop()
    if image_server is not None:
        image_server.stop()


@pytest.fixture(scope="module")
def store_dir(system) -> Path:
    return Path(system.env["IMAGESVC_IMAGE_STORE"])


@pytest.fixture(scope="module")
def sentinel():
    """A listener on 127.0.0.2, which the allow-list (127.0.0.1) does not admit: it must never
    be asked anything."""
    listening = Origin(host="127.0.0.2")
    yield listening
    listening.close()


def own_image_server(system: System) -> str:
    """The system's own image server URL (in the embedded mode, serve's address)."""
    return system.env.get("IMAGESVC_IMAGE_SERVER_URL") or system.url.removesuffix("/api")


def envelope_errors(response) -> dict:
    body = response.json()
    assert set(body) == {"task_id", "status", "result"} and body["status"] == "FAILURE", response.text
    return body["result"]


def _events(system: System, sql: str, **params) -> list[dict]:
    engine = create_engine(database_url(system))
    try:
        with engine.connect() as conn:
            return [json.loads(row.body) for row in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def failure_code(system: System, task_id: str) -> str:
    """The stable code of the task's ``task.failed`` event (deviations #9)."""
    failed = _events(system, "SELECT body FROM events WHERE type = 'task.failed' AND correlation_id = :task",
                     task=task_id)
    assert len(failed) == 1, failed
    return failed[0]["payload"]["code"]


def image_events(system: System, uuid: str) -> list[str]:
    """Types of the events ever stored on the image's stream."""
    return [e["type"] for e in _events(system, "SELECT body FROM events WHERE stream_id = :stream ORDER BY id",
                                       stream=image_stream(uuid))]


def partials(store_dir: Path, uuid: str) -> list[Path]:
    return list((store_dir / ".partial").glob(f"{uuid}*"))


# --- an import from another imagesvc ---------------------------------------------------------


@dataclass
class FirstInstance:
    system: System
    store: Path
    uuid: str
    content: bytes


@pytest.fixture(scope="module")
def first_instance(tmp_path_factory, origin):
    """Another imagesvc (embedded, its own store) that holds one imported image."""
    store = tmp_path_factory.mktemp("first-store")
    first = start_embedded(tmp_path_factory.mktemp("first"), {"IMAGESVC_IMAGE_STORE": str(store)})
    try:
        content = os.urandom(2 * 1024 * 1024 + 5)
        url, manifest = origin.add_image(content)
        with first.client() as client:
            status = finished(client, start_import(client, "img-first", url))
            assert status.status_code == 200, status.text
        yield FirstInstance(first, store, manifest["uuid"], content)
    finally:
        first.stop()


def test_an_image_is_imported_from_another_instance_s_image_server(system, first_instance, store_dir, name):
    first = first_instance
    manifest_url = f"{first.system.url.removesuffix('/api')}/images/{first.uuid}"
    with system.client() as client:
        status = finished(client, start_import(client, name, manifest_url))
        assert status.status_code == 200, status.text
        assert status.json()["result"]["message"].startswith(
            f"Successfully imported image {name} (transferred {len(first.content)} bytes")
        image = client.get(f"/image/{name}/").json()["result"]
        assert (image["uuid"], image["status"]) == (first.uuid, 1)
    copied = (store_dir / first.uuid / "file").read_bytes()
    assert hashlib.sha1(copied).hexdigest() == hashlib.sha1(first.content).hexdigest()
    mine = json.loads((store_dir / first.uuid / "manifest").read_text())["files"][0]
    theirs = json.loads((first.store / first.uuid / "manifest").read_text())["files"][0]
    assert (mine["sha1"], mine["size"]) == (theirs["sha1"], theirs["size"]) == (
        hashlib.sha1(first.content).hexdigest(), len(first.content))


# --- an import from the system's own image server (reference §7.3, "esimg update -c") ---------


def placed_by_hand(store_dir: Path, content: bytes) -> str:
    """An image file put into the store by hand, without a manifest; returns its uuid."""
    uuid = str(uuidlib.uuid4())
    (store_dir / uuid).mkdir()
    (store_dir / uuid / "file").write_bytes(content)
    return uuid


def import_from_own_server(system, client, name, origin, uuid: str, *, sha1: str, size: int):
    manifest_url, _ = origin.add_manifest(uuid=uuid, files=[{"sha1": sha1, "size": size, "compression": "none"}])
    file_url = f"{own_image_server(system)}/images/{uuid}/file"
    return client.post(f"/image/{name}/", json={"manifest_url": manifest_url, "file_url": file_url, "dc": "main"})


def test_an_import_from_the_own_image_server_verifies_the_file_in_place(system, origin, store_dir, name):
    content = os.urandom(512 * 1024 + 3)
    uuid = placed_by_hand(store_dir, content)
    with system.client() as client:
        answer = import_from_own_server(system, client, name, origin, uuid, sha1=hashlib.sha1(content).hexdigest(),
                                        size=len(content))
        status = finished(client, accepted(answer))
        assert status.status_code == 200, status.text
        # Reference §7.3, §9.2: the in-place import is the original's `esimg update -c`, with its message.
        assert status.json()["result"] == {"returncode": 0, "message": f"Successfully updated image {name}"}
        image = client.get(f"/image/{name}/").json()["result"]
        assert (image["uuid"], image["status"]) == (uuid, 1)
    assert (store_dir / uuid / "file").read_bytes() == content
    written = json.loads((store_dir / uuid / "manifest").read_text())
    assert written["files"][0]["sha256"] == hashlib.sha256(content).hexdigest()
    assert f"/images/{uuid}/file" not in origin.hits  # nothing was downloaded from the manifest's origin
    assert partials(store_dir, uuid) == []


def test_a_failed_verification_on_the_own_image_server_keeps_the_file(system, origin, store_dir, name):
    content = os.urandom(256 * 1024)
    uuid = placed_by_hand(store_dir, content)
    with system.client() as client:
        answer = import_from_own_server(system, client, name, origin, uuid, sha1="ab" * 20, size=len(content))
        status = finished(client, accepted(answer))
        assert status.status_code == 400, status.text
        result = status.json()["result"]
        assert (result["returncode"], result["code"]) == (8, "checksum_mismatch")
        assert client.get(f"/image/{name}/").status_code == 404
    # The file was there before the import: the rollback is not allowed to take it.
    assert (store_dir / uuid / "file").read_bytes() == content
    assert not (store_dir / uuid / "manifest").exists()
    assert partials(store_dir, uuid) == []


def test_an_import_from_the_own_image_server_without_the_file_is_refused(system, origin, store_dir, name):
    uuid = str(uuidlib.uuid4())
    with system.client() as client:
        answer = import_from_own_server(system, client, name, origin, uuid, sha1="ab" * 20, size=10)
        assert answer.status_code == 400, answer.text
        file_url = f"{own_image_server(system)}/images/{uuid}/file"
        assert envelope_errors(answer) == {
            "file_url": [f"Image file URL is unreachable (404 Client Error: Not Found for url: {file_url})."]}
        assert client.get(f"/image/{name}/").status_code == 404
    assert leftovers(store_dir, uuid) == []


def test_an_unreadable_file_on_the_own_image_server_fails_without_retries(system, origin, store_dir, name):
    """A store entry that cannot be read (here ``file`` is a directory) fails the verification
    at once, like a missing file; it is no reason to try again."""
    uuid = str(uuidlib.uuid4())
    (store_dir / uuid / "file").mkdir(parents=True)
    with system.client() as client:
        answer = import_from_own_server(system, client, name, origin, uuid, sha1="ab" * 20, size=10)
        task_id = accepted(answer)
        status = finished(client, task_id)
        assert status.status_code == 400, status.text
        result = status.json()["result"]
        assert (result["returncode"], result["code"]) == (7, "store_read_failed"), result
        assert result["message"].startswith("ERROR: Cannot read the image file (")
        assert client.get(f"/image/{name}/").status_code == 404
    assert (store_dir / uuid / "file").is_dir()  # not ours to remove
    assert image_events(system, uuid) == ["image.imported", "image.deleted"]


# --- an import given up after its last attempt ------------------------------------------------


@contextlib.contextmanager
def database_refusing_progress(system: System):
    """The system's database refuses every ``task.progress`` event (a trigger): an import's
    transfer then fails with a database error at its first progress report, on every attempt.
    The fault is the database's; imagesvc's code runs unchanged."""
    engine = create_engine(database_url(system))
    postgres = engine.dialect.name == "postgresql"
    try:
        with engine.begin() as conn:
            if postgres:
                conn.execute(text("CREATE FUNCTION test_refuse_progress() RETURNS trigger LANGUAGE plpgsql AS "
                                  "$$ BEGIN RAISE EXCEPTION 'progress refused by the test'; END $$"))
                conn.execute(text("CREATE TRIGGER test_refuse_progress BEFORE INSERT ON events FOR EACH ROW "
                                  "WHEN (NEW.type = 'task.progress') EXECUTE FUNCTION test_refuse_progress()"))
            else:
                conn.execute(text("CREATE TRIGGER test_refuse_progress BEFORE INSERT ON events "
                                  "WHEN NEW.type = 'task.progress' "
                                  "BEGIN SELECT RAISE(ABORT, 'progress refused by the test'); END"))
        yield
    finally:
        with engine.begin() as conn:
            if postgres:
                conn.execute(text("DROP TRIGGER IF EXISTS test_refuse_progress ON events"))
                conn.execute(text("DROP FUNCTION IF EXISTS test_refuse_progress()"))
            else:
                conn.execute(text("DROP TRIGGER IF EXISTS test_refuse_progress"))
        engine.dispose()


def test_an_import_given_up_after_its_last_attempt_is_undone(system, origin, store_dir, name):
    content = os.urandom(40 * 65536)  # about 4 s at 0.1 s a piece: every attempt reports progress
    url, manifest = origin.add_image(content, pace=0.1)
    file_path = f"/images/{manifest['uuid']}/file"
    with database_refusing_progress(system), system.client() as client:
        task_id = start_import(client, name, url)
        status = finished(client, task_id, timeout=90)
        assert status.status_code == 500, status.text
        assert status.json()["result"] == {"detail": "Internal error: the command could not be processed"}
        assert failure_code(system, task_id) == "retries_exhausted"
        assert client.get(f"/image/{name}/").status_code == 404
    assert origin.hits.count(file_path) == 1 + MAX_ATTEMPTS  # the probe, then one download per attempt
    assert image_events(system, manifest["uuid"]) == ["image.imported", "image.deleted"]
    assert leftovers(store_dir, manifest["uuid"]) == []


# --- the fetch rules on the file URL (deviations #6) ------------------------------------------


POLICY = "Image file URL is unreachable (URL not allowed: "
NOT_ALLOWED_FILE_URLS = [
    ("http://169.254.169.254/latest/meta-data/", POLICY),
    ("http://10.0.0.1/x", POLICY),
    ("http://[::1]:1/x", POLICY),
    ("http://[::ffff:169.254.169.254]/x", POLICY),
    # Hosts without a dot are not URLs to the field's validator (the original's): refused first.
    ("http://2852039166/", "Enter a valid URL."),  # 169.254.169.254
    ("http://2130706434/", "Enter a valid URL."),  # 127.0.0.2: loopback, but not the allow-listed address
    ("http://0x7f000002/", "Enter a valid URL."),  # the same
]


@pytest.mark.parametrize("file_url,refusal", NOT_ALLOWED_FILE_URLS)
def test_a_file_url_to_a_not_allowed_address_is_refused_before_acceptance(system, origin, store_dir, name, file_url,
                                                                          refusal):
    manifest_url, manifest = origin.add_manifest()
    with system.client() as client:
        answer = client.post(f"/image/{name}/", json={"manifest_url": manifest_url, "file_url": file_url, "dc": "main"})
        assert answer.status_code == 400, answer.text
        errors = envelope_errors(answer)
        assert list(errors) == ["file_url"]
        assert errors["file_url"][0].startswith(refusal), errors
        if refusal == POLICY:
            assert failure_code(system, answer.json()["task_id"]) == "url_not_allowed"
        assert client.get(f"/image/{name}/").status_code == 404
    assert image_events(system, manifest["uuid"]) == []
    assert leftovers(store_dir, manifest["uuid"]) == []


def test_a_file_url_to_the_sentinel_is_never_connected(system, origin, sentinel, store_dir, name):
    manifest_url, manifest = origin.add_manifest()
    file_url = sentinel.route("/x", b"secret")
    with system.client() as client:
        answer = client.post(f"/image/{name}/", json={"manifest_url": manifest_url, "file_url": file_url, "dc": "main"})
        assert answer.status_code == 400, answer.text
        assert failure_code(system, answer.json()["task_id"]) == "url_not_allowed"
    assert sentinel.hits == []
    assert leftovers(store_dir, manifest["uuid"]) == []


@pytest.mark.parametrize("case", ["to_link_local", "to_sentinel", "four_hops"])
def test_a_file_url_redirecting_out_of_bounds_is_refused_and_leaves_nothing(system, origin, sentinel, store_dir,
                                                                             name, case):
    """The file URL's probe follows redirects under the same rules as the download, so the
    refusal comes before the import is accepted (400 under ``file_url``)."""
    content = os.urandom(64 * 1024)
    manifest_url, manifest = origin.add_image(content)
    file_path = f"/images/{manifest['uuid']}/file"
    if case == "to_link_local":
        origin.route(file_path, status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        code = "url_not_allowed"
    elif case == "to_sentinel":
        origin.route(file_path, status=302, headers={"Location": sentinel.route(f"/{manifest['uuid']}", content)})
        code = "url_not_allowed"
    else:
        hops = [f"{file_path}/hop{i}" for i in range(1, 5)]
        for here, there in zip([file_path, *hops[:-1]], hops):
            origin.route(here, status=302, headers={"Location": there})
        origin.route(hops[-1], content)
        code = "too_many_redirects"
    with system.client() as client:
        answer = client.post(f"/image/{name}/", json={"manifest_url": manifest_url, "dc": "main"})
        assert answer.status_code == 400, answer.text
        assert list(envelope_errors(answer)) == ["file_url"]
        assert failure_code(system, answer.json()["task_id"]) == code
        assert client.get(f"/image/{name}/").status_code == 404
    assert sentinel.hits == []
    assert image_events(system, manifest["uuid"]) == []
    assert leftovers(store_dir, manifest["uuid"]) == []


def test_three_redirects_are_followed(system, origin, store_dir, name):
    content = os.urandom(64 * 1024)
    manifest_url, manifest = origin.add_image(content)
    file_path = f"/images/{manifest['uuid']}/file"
    hops = [f"{file_path}/hop{i}" for i in range(1, 4)]
    for here, there in zip([file_path, *hops[:-1]], hops):
        origin.route(here, status=302, headers={"Location": there})
    origin.route(hops[-1], content)
    with system.client() as client:
        status = finished(client, start_import(client, name, manifest_url))
        assert status.status_code == 200, status.text
    assert (store_dir / manifest["uuid"] / "file").read_bytes() == content


# --- size -------------------------------------------------------------------------------------


def test_a_file_larger_than_the_limit_is_refused_without_downloading_it(system, origin, store_dir, name):
    content = os.urandom(MAX_IMAGE_BYTES + 1)
    url, manifest = origin.add_image(content)
    with system.client() as client:
        status = finished(client, start_import(client, name, url))
        assert status.status_code == 400, status.text
        result = status.json()["result"]
        assert (result["returncode"], result["code"]) == (8, "too_large")
        assert result["message"] == f"ERROR: Image file is too large ({len(content)} > {MAX_IMAGE_BYTES} bytes)"
        assert client.get(f"/image/{name}/").status_code == 404
    assert origin.hits.count(f"/images/{manifest['uuid']}/file") == 1  # the probe (32 bytes), no download
    assert leftovers(store_dir, manifest["uuid"]) == []


def test_a_body_shorter_than_its_content_length_fails_and_leaves_nothing(system, origin, store_dir, name):
    content = os.urandom(256 * 1024)
    declared = len(content) + 64 * 1024
    # The origin announces more than it sends, then closes the connection.
    url, manifest = origin.add_image(content, size=declared,
                                     file_headers={"Content-Length": str(declared), "Connection": "close"})
    with system.client() as client:
        status = finished(client, start_import(client, name, url))
        assert status.status_code == 400, status.text
        result = status.json()["result"]
        assert (result["returncode"], result["code"]) == (8, "connection_error"), result
        assert result["message"].startswith("ERROR: Image file download failed (")
        assert client.get(f"/image/{name}/").status_code == 404
    assert leftovers(store_dir, manifest["uuid"]) == []


# --- the image server's node (reference §5: 423) ----------------------------------------------


def other_owner(system) -> str:
    """A user an image could be given to (made once per system)."""
    username = "storeowner"
    if not getattr(system, "_other_owner", None):
        system.new_user(username)
        system._other_owner = username
    return username


def test_image_commands_wait_for_the_image_server_node_to_be_operational(system, origin, store_dir, name):
    url, manifest = origin.add_image(os.urandom(64 * 1024))
    refused = {"detail": "Node is not operational"}
    try:
        system.admin("node", "remove", NODE)
        with system.client() as client:
            answer = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"})
            assert (answer.status_code, answer.json()) == (423, refused)
            assert client.get(f"/image/{name}/").status_code == 404

            system.admin("node", "set", NODE, "--status", "online")
            assert finished(client, start_import(client, name, url)).status_code == 200
            owner = client.get(f"/image/{name}/").json()["result"]["owner"]

            system.admin("node", "set", NODE, "--status", "maintenance")
            answer = client.put(f"/image/{name}/", json={"desc": "changed"})
            assert (answer.status_code, answer.json()) == (423, refused)
            # Reference §13.27: a PUT of database-only fields runs the image server's checks too.
            answer = client.put(f"/image/{name}/", json={"owner": other_owner(system)})
            assert (answer.status_code, answer.json()) == (423, refused)
            answer = client.delete(f"/image/{name}/")
            assert (answer.status_code, answer.json()) == (423, refused)
            image = client.get(f"/image/{name}/").json()["result"]
            assert (image["status"], image["desc"], image["owner"]) == (1, manifest["description"], owner)
        assert (store_dir / manifest["uuid"] / "file").exists()
    finally:
        system.admin("node", "set", NODE, "--status", "online")
