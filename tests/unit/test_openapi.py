"""The published OpenAPI descriptions, the gateway's (``/api/openapi.json``) and the image server's
(``/openapi.json``): each names every route its app serves with its methods, lists the answers
each operation can give (its handler's, and those of the layers before it), declares shapes that
the code's real answers match, and is a valid OpenAPI 3.1 document."""

from __future__ import annotations

import re
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from kombu import Connection
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.routing import Route
from starlette.testclient import TestClient

from imagesvc import edge
from imagesvc.domain import tasks
from imagesvc.services.gateway import openapi
from imagesvc.services.gateway.app import create_app
from imagesvc.services.gateway.auth import INVALID_KEY
from imagesvc.services.gateway.dispatch import UNAVAILABLE, status_body
from imagesvc.services.gateway.queries import TaskView
from imagesvc.services.gateway.throttle import throttled
from imagesvc.services.image_server import app as image_server
from imagesvc.services.image_server import openapi as image_server_openapi
from imagesvc.shared.broker.topology import build_topology
from imagesvc.shared.config import Settings
from imagesvc.shared.db.engine import make_engine
from imagesvc.shared.store import LocalStore

#: Routes that are about the API rather than part of it: its descriptions (the OpenAPI one, and
#: any other ``/api/<name>.json``) and the interactive docs page with its assets.
ABOUT_THE_API = re.compile(r"^/api/(\w+\.json|docs(/.*)?)$")
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@pytest.fixture(scope="module")
def gateway():
    return create_app(Settings(broker_url="memory://"), engine=make_engine("sqlite://"), publisher=None,
                      topology=build_topology("doc.", quorum=False), connect=lambda: Connection("memory://"))


def served(app, *, slash: bool) -> dict[str, set[str]]:
    """{path: methods} the app's routes serve, in the descriptions' form: where a path is served
    with and without a trailing slash, the form with one (``slash``) or without; ``{name:type}``
    as ``{name}``. HEAD, which Starlette adds to every GET, is left out."""
    paths = {route.path for route in app.routes}
    found: dict[str, set[str]] = {}
    for route in app.routes:
        assert isinstance(route, Route), route
        twin = route.path[:-1] if route.path.endswith("/") else route.path + "/"
        if twin in paths and route.path.endswith("/") != slash:
            continue
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        found.setdefault(path, set()).update(m.lower() for m in route.methods - {"HEAD"})
    return found


def described(document: dict[str, Any]) -> dict[str, set[str]]:
    return {path: {m for m in item if m in METHODS} for path, item in document["paths"].items()}


def operations(document: dict[str, Any]):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A JSON Schema validator of ``schema``, whose references point into ``document``."""
    return Draft202012Validator({**schema, "components": document["components"]})


def body_schema(answer: dict[str, Any]) -> dict[str, Any]:
    return answer["content"]["application/json"]["schema"]


def admits(document: dict[str, Any], answer: dict[str, Any], body: Any) -> bool:
    return validator(document, body_schema(answer)).is_valid(body)


# --- the gateway ----------------------------------------------------------------------------------


def test_every_gateway_route_is_described(gateway):
    routes = {path: methods for path, methods in served(gateway, slash=True).items()
              if not ABOUT_THE_API.match(path)}
    # /state/ is the original's alias of /status/ and is documented under it.
    assert routes.pop("/api/task/{task_id}/state/") == {"get"}
    assert routes == described(openapi.document())


def test_the_gateway_document_declares_the_credentials_the_gateway_reads():
    document = openapi.document()
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "ES-API-KEY"}
    assert {k: v for k, v in schemes["token"].items() if k != "description"} == {
        "type": "apiKey", "in": "header", "name": "Authorization"}
    assert document["security"] == [{"apiKey": []}, {"token": []}]  # either one
    for path, method, operation in operations(document):
        assert operation["operationId"] and operation["responses"] and operation["tags"], (method, path)
    open_operations = {path for path, _method, operation in operations(document) if operation.get("security") == []}
    assert open_operations == {"/api/accounts/login/", "/healthz", "/readyz", "/metrics"}


def test_every_gateway_operation_lists_the_refusals_it_can_get():
    document = openapi.document()
    for path, method, operation in operations(document):
        responses, where = operation["responses"], (method, path)
        # The edge and the middleware answer any request.
        assert {"408", "431", "503"} <= responses.keys(), where
        if path != "/readyz":  # its own 503 is the readiness report
            assert responses["503"]["headers"]["Retry-After"]["required"], where
        if operation.get("security", document["security"]):
            assert {"403", "429"} <= responses.keys(), where
            assert "Retry-After" in responses["429"]["headers"], where
            assert admits(document, responses["403"], {"detail": INVALID_KEY}), where
        if any(parameter["in"] == "path" for parameter in [*document["paths"][path].get("parameters", []),
                                                             *operation.get("parameters", [])]):
            assert "404" in responses, where
        if "requestBody" in operation or is_command(operation):  # every command reads its body
            assert {"413", "415"} <= responses.keys(), where
            assert admits(document, responses["400"], {"detail": "JSON parse error - Expected a JSON object"}), where


def is_command(operation: dict[str, Any]) -> bool:
    """Whether the operation is a command (answered as a task; it takes an Idempotency-Key)."""
    return "Idempotency-Key" in {parameter["name"] for parameter in operation.get("parameters", [])}


def test_every_command_answers_as_a_task_and_can_be_refused_for_now():
    document = openapi.document()
    commands = [(path, method, operation) for path, method, operation in operations(document) if is_command(operation)]
    assert {operation["operationId"] for _path, _method, operation in commands} == {
        "image_import", "image_update", "image_delete", "image_snapshot", "dc_image_attach", "dc_image_detach",
        "imagestore_refresh_all", "imagestore_refresh", "imagestore_image_import"}
    for path, method, operation in commands:
        responses, where = operation["responses"], (method, path)
        assert {"200", "201", "400", "403", "413", "415", "429", "500", "503"} <= responses.keys(), where
        assert {"Location", "es_task_id"} <= responses["201"]["headers"].keys(), where
        assert admits(document, responses["201"], {"task_id": "1e1u1-x", "status": "PENDING", "result": None})
        # A malformed Idempotency-Key, and a task's field errors.
        assert admits(document, responses["400"], {"detail": "Invalid Idempotency-Key"}), where
        assert admits(document, responses["400"], {"task_id": "t", "status": "FAILURE",
                                                    "result": {"name": ["Invalid"]}}), where


def test_the_task_status_describes_running_and_finished_tasks_with_the_code_s_bodies():
    document = openapi.document()
    responses = document["paths"]["/api/task/{task_id}/status/"]["get"]["responses"]
    assert body_schema(responses["201"]) == {"$ref": "#/components/schemas/TaskStatus"}
    running = TaskView("1e1u1-t", tasks.STARTED, 201, None, "u", "u", {"done": 1048576, "total": None})
    for view in (running, TaskView("1e1u1-t", tasks.PENDING, 201, None, "u", "u"),
                 TaskView("1e1u1-t", tasks.STARTED, 201, None, "u", "u", {"done": 5, "total": 10}),
                 TaskView("1e1u1-t", tasks.SUCCESS, 200, {"returncode": 0, "message": "ok"}, "u", "u"),
                 TaskView("1e1u1-t", tasks.FAILURE, 400, {"manifest_url": ["Invalid"]}, "u", "u"),
                 TaskView("1e1u1-t", tasks.FAILURE, 404, {"detail": "Image not found"}, "u", "u"),
                 TaskView("1e1u1-t", tasks.FAILURE, 428, {"detail": "Image is used by some VMs"}, "u", "u"),
                 TaskView("1e1u1-t", tasks.FAILURE, 500, {"detail": "Internal error"}, "u", "u")):
        code, body = status_body(view)
        assert str(code) in responses, view
        assert admits(document, responses[str(code)], body), (code, body)
    progress = validator(document, {"$ref": "#/components/schemas/TaskStatus"})
    assert not progress.is_valid({"task_id": "t", "status": "STARTED", "result": None, "progress": {"done": "x",
                                                                                                      "total": 1}})
    assert not progress.is_valid({"task_id": "t", "status": "STARTED", "result": None, "progress": {"done": 1}})
    assert admits(document, responses["404"], {"detail": tasks.TASK_NOT_FOUND})


def test_the_gateway_s_refusals_carry_what_the_document_says():
    """The bodies and headers of the edge's, the throttle's and the dispatcher's refusals are the
    ones declared for them."""
    import orjson

    document = openapi.document()
    operation = document["paths"]["/api/image/{name}/"]["post"]
    for status, message in ((408, edge.HEAD_TIMEOUT), (431, edge.HEAD_TOO_LARGE.format(limit=16384)),
                            (503, edge.TOO_MANY)):
        assert admits(document, operation["responses"][str(status)], orjson.loads(edge.EdgeProtocol.error_body(
            status, message)))
    refused = throttled(2.5)
    assert refused.status == 429 and refused.headers == {"Retry-After": "3"}
    assert admits(document, operation["responses"]["429"], {"detail": refused.detail})
    assert admits(document, operation["responses"]["503"], {"detail": UNAVAILABLE})


# --- the image server -----------------------------------------------------------------------------


@pytest.fixture
def image_server_app(tmp_path):
    return image_server.create_app(LocalStore(str(tmp_path / "images")))


def test_every_image_server_route_is_described(image_server_app):
    routes = served(image_server_app, slash=False)
    assert routes.pop("/openapi.json") == {"get"}  # the description itself
    document = image_server_openapi.document()
    assert {path: methods - {"head"} for path, methods in described(document).items()} == routes
    # HEAD is described where it means something of its own: the file's headers without the file.
    assert "head" in document["paths"]["/images/{uuid}/file"]


def test_the_image_server_serves_its_description(image_server_app):
    with TestClient(image_server_app) as client:
        answer = client.get("/openapi.json")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.json() == image_server_openapi.document()
    assert image_server.serves("/openapi.json")  # and so does serve's port, beside /api/openapi.json


def test_every_image_server_operation_lists_its_errors_in_imgapi_s_shape():
    import orjson

    document = image_server_openapi.document()
    error = {"$ref": "#/components/schemas/Error"}
    for path, method, operation in operations(document):
        responses, where = operation["responses"], (method, path)
        assert {"408", "431", "500", "503"} <= responses.keys(), where
        assert "Retry-After" in responses["503"]["headers"], where
        if "{uuid}" in path:
            assert "404" in responses, where
        for code, answer in responses.items():
            if code >= "400" and "content" in answer:
                assert error in [body_schema(answer), *body_schema(answer).get("anyOf", [])], (where, code)
    for status in (400, 408, 431, 503):
        assert validator(document, error).is_valid(orjson.loads(edge.ImageServerProtocol.error_body(status, "x")))


def test_the_image_file_is_described_with_its_ranges_and_digest():
    file = image_server_openapi.document()["paths"]["/images/{uuid}/file"]
    get = file["get"]
    assert {"Range", "If-Range"} <= {parameter["name"] for parameter in get["parameters"]}
    whole = get["responses"]["200"]["headers"]
    assert {"Content-MD5", "Content-Length", "Accept-Ranges", "Last-Modified"} <= whole.keys()
    assert not whole["Content-MD5"]["required"]  # whole files, once known
    assert "Content-Range" in get["responses"]["206"]["headers"]
    assert "Content-Range" in get["responses"]["416"]["headers"]
    assert "Content-MD5" in file["head"]["responses"]["200"]["headers"]


def test_the_described_answers_are_the_image_server_s(image_server_app, tmp_path):
    """A published image's real answers (manifest, list, file, range, 416, 404) match the document."""
    import base64
    import hashlib

    store = LocalStore(str(tmp_path / "images"))
    uuid = "0c6a0b3e-5f2e-4c39-9b38-8d7c2f0e7a11"
    upload = store.upload(uuid, "test")
    upload.write(b"0123456789")
    upload.commit()
    store.write_manifest(uuid, {"uuid": uuid, "name": "img", "version": "1.0", "files": [{"sha1": "x", "size": 10}]})
    document = image_server_openapi.document()
    paths = document["paths"]
    with TestClient(image_server_app) as client:
        listed, shown = client.get("/images"), client.get(f"/images/{uuid}")
        assert admits(document, paths["/images"]["get"]["responses"]["200"], listed.json())
        assert admits(document, paths["/images/{uuid}"]["get"]["responses"]["200"], shown.json())
        missing = client.get("/images/00000000-0000-4000-8000-000000000000")
        assert missing.status_code == 404
        assert admits(document, paths["/images/{uuid}"]["get"]["responses"]["404"], missing.json())
        whole = client.get(f"/images/{uuid}/file")
        assert whole.headers["Content-MD5"] == base64.b64encode(hashlib.md5(b"0123456789").digest()).decode()
        header = paths["/images/{uuid}/file"]["get"]["responses"]["200"]["headers"]["Content-MD5"]
        assert re.fullmatch(header["schema"]["pattern"], whole.headers["Content-MD5"])
        part = client.get(f"/images/{uuid}/file", headers={"Range": "bytes=2-4"})
        assert (part.status_code, part.content) == (206, b"234")
        described_range = paths["/images/{uuid}/file"]["get"]["responses"]["206"]["headers"]["Content-Range"]
        assert re.fullmatch(described_range["schema"]["pattern"], part.headers["Content-Range"])
        past = client.get(f"/images/{uuid}/file", headers={"Range": "bytes=10-"})
        assert past.status_code == 416
        refused = paths["/images/{uuid}/file"]["get"]["responses"]["416"]
        assert re.fullmatch(refused["headers"]["Content-Range"]["schema"]["pattern"], past.headers["Content-Range"])
        assert admits(document, refused, past.json())


# --- both -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("document", [openapi.document, image_server_openapi.document], ids=["gateway", "image-server"])
def test_the_document_is_valid_openapi_3_1(document):
    described_document = document()
    assert described_document["openapi"] == "3.1.0"
    OpenAPIV31SpecValidator(described_document).validate()  # raises with the first error
    ids = [operation["operationId"] for _path, _method, operation in operations(described_document)]
    assert len(ids) == len(set(ids))
