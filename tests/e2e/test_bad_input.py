"""Bad input gets the original's status code and message, never a 500, never a half-done effect,
and no command on the broker when the gateway refuses the request.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import submitted_commands
from tests.support.origin import sample_manifest

pytestmark = pytest.mark.e2e

DC_REQUIRED = ('You have to specify to which datacenter shall the image be bound. Either use the "dc" parameter or '
               'set the "dc_bound" parameter to false.')


@pytest.fixture(scope="module")
def existing(system, origin):
    """An image that exists in the system (for 406 and the update/delete cases)."""
    url, _ = origin.add_manifest()
    with system.client() as client:
        response = client.post("/image/existing-image/", json={"manifest_url": url, "dc": "main"})
        assert response.status_code == 200, response.text
    return "existing-image"


@pytest.fixture(scope="module")
def broker_commands(system):
    """In the distributed mode, a count of the commands on the broker itself."""
    if system.mode != "distributed":
        yield None
        return
    from imagesvc.shared.broker.topology import COMMAND_ROUTES
    from tests.support.tap import CommandCounter

    counter = CommandCounter(system.broker_url, f"{system.prefix}imagesvc.commands",
                             [key for keys in COMMAND_ROUTES.values() for key in keys])
    yield counter
    counter.close()


@pytest.fixture
def refused_by_gateway(broker_commands):
    def send_and_check(system, send):
        """Send a request; assert the gateway published nothing for it; return the response."""
        before = (submitted_commands(system), broker_commands.count() if broker_commands else 0)
        with system.client() as client:
            response = send(client)
        assert response.status_code < 500, response.text
        after = (submitted_commands(system), broker_commands.count() if broker_commands else 0)
        assert after == before, "a refused request reached the broker"
        return response

    return send_and_check


def envelope_errors(response):
    body = response.json()
    assert set(body) == {"task_id", "status", "result"} and body["status"] == "FAILURE"
    return body["result"]


@pytest.mark.parametrize("method", ["post", "put"])
def test_malformed_json(refused_by_gateway, system, existing, method):
    response = refused_by_gateway(system, lambda c: c.request(
        method.upper(), f"/image/{existing}/", content=b'{"alias": ', headers={"Content-Type": "application/json"}))
    assert response.status_code == 400
    assert response.json()["detail"].startswith("JSON parse error - ")


def test_json_that_is_not_an_object(refused_by_gateway, system, existing):
    response = refused_by_gateway(system, lambda c: c.put(f"/image/{existing}/", json=[1, 2]))
    assert response.status_code == 400 and response.json()["detail"].startswith("JSON parse error - ")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type(refused_by_gateway, system, existing, content_type):
    response = refused_by_gateway(system, lambda c: c.put(
        f"/image/{existing}/", content=b"alias=x", headers={"Content-Type": content_type}))
    assert (response.status_code, response.json()) == (415, {"detail": f'Unsupported media type "{content_type}" in request.'})


def test_body_too_large(refused_by_gateway, system, existing):
    response = refused_by_gateway(system, lambda c: c.put(f"/image/{existing}/", json={"desc": "x" * 2_000_000}))
    assert response.status_code == 413


@pytest.mark.parametrize("params", [{"order_by": "size"}, {"order_by": "name,-uuid"}])
def test_unknown_order_by(refused_by_gateway, system, params):
    response = refused_by_gateway(system, lambda c: c.get("/image/", params=params))
    assert (response.status_code, response.json()) == (
        412, {"detail": "Invalid order_by; Possible sort fields are: name, created"})


def test_order_by_in_a_body_is_checked_too(refused_by_gateway, system, existing):
    response = refused_by_gateway(system, lambda c: c.put(f"/image/{existing}/", json={"order_by": "bogus"}))
    assert response.status_code == 412


def test_bad_flag(refused_by_gateway, system):
    response = refused_by_gateway(system, lambda c: c.get("/image/", params={"full": "no"}))
    assert response.status_code == 400
    assert envelope_errors(response) == {"full": ["Must be a valid boolean."]}


def test_existing_name_is_refused_before_anything_else(refused_by_gateway, system, existing):
    response = refused_by_gateway(system, lambda c: c.post(f"/image/{existing}/", json={"alias": "<bad>"}))
    assert (response.status_code, response.json()) == (406, {"detail": "Image already exists"})


def test_unknown_datacenter(refused_by_gateway, system, name):
    response = refused_by_gateway(system, lambda c: c.post(
        f"/image/{name}/", json={"manifest_url": "http://example.com/images/x", "dc": "nowhere"}))
    assert (response.status_code, response.json()) == (404, {"detail": "Datacenter not found"})


@pytest.mark.parametrize("body, errors", [
    ({}, {"manifest_url": ["This field is required."]}),
    ({"manifest_url": "ftp://example.com/x", "dc": "main"}, {"manifest_url": ["Enter a valid URL."]}),
    ({"manifest_url": "http://example.com/x"}, {"dc_bound": [DC_REQUIRED], "dc": [DC_REQUIRED]}),
    ({"manifest_url": "http://example.com/x", "dc": "main", "alias": "a<b", "version": "x" * 17, "access": 2,
      "resize": "no", "tags": ["ok", "not.ok"], "owner": "nobody"},
     {"alias": ["Invalid value."], "version": ["Ensure this value has at most 16 characters (it has 17)."],
      "owner": ["Object with username=nobody does not exist."],
      "access": ["Select a valid choice. 2 is not one of the available choices."],
      "resize": ["Must be a valid boolean."], "tags": ["Invalid value."]}),
    ({"manifest_url": "http://example.com/x", "dc": "main", "access": "public"}, {"access": ["Enter a whole number."]}),
    ({"manifest_url": "http://10.1.2.3/images/x", "dc": "main"},
     {"manifest_url": ["Image manifest URL is unreachable (URL not allowed: 10.1.2.3 is not a public address)."]}),
    ({"manifest_url": "http://93.184.216.34:22/images/x", "dc": "main"},
     {"manifest_url": ["Image manifest URL is unreachable (URL not allowed: port 22)."]}),
])
def test_invalid_import_fields(refused_by_gateway, system, name, body, errors):
    response = refused_by_gateway(system, lambda c: c.post(f"/image/{name}/", json=body))
    assert response.status_code == 400
    assert envelope_errors(response) == errors


@pytest.mark.parametrize("bad_name, errors", [
    ("-starts-with-dash", ["Invalid value."]),
    ("x" * 33, ["Ensure this value has at most 32 characters (it has 33)."]),
])
def test_invalid_image_name_on_import(refused_by_gateway, system, bad_name, errors):
    response = refused_by_gateway(system, lambda c: c.post(
        f"/image/{bad_name}/", json={"manifest_url": "http://example.com/x", "dc": "main"}))
    assert response.status_code == 400 and envelope_errors(response) == {"name": errors}


@pytest.mark.parametrize("body, errors", [
    ({"alias": ""}, {"alias": ["This field is required."]}),
    ({"desc": "x" * 129}, {"desc": ["Ensure this value has at most 128 characters (it has 129)."]}),
    ({"deploy": "maybe", "tags": 5}, {"deploy": ["Must be a valid boolean."], "tags": ["Invalid value."]}),
])
def test_invalid_update_fields(refused_by_gateway, system, existing, body, errors):
    response = refused_by_gateway(system, lambda c: c.put(f"/image/{existing}/", json=body))
    assert response.status_code == 400 and envelope_errors(response) == errors


@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_missing_image(refused_by_gateway, system, method):
    response = refused_by_gateway(system, lambda c: c.request(method.upper(), "/image/no-such-image/"))
    assert (response.status_code, response.json()) == (404, {"detail": "Image not found"})


@pytest.mark.parametrize("headers, detail", [
    ({}, "Authentication credentials were not provided."),
    ({"ES-API-KEY": "wrong"}, "Invalid API key"),
])
def test_authentication_failures(system, broker_commands, existing, headers, detail):
    import httpx

    before = (submitted_commands(system), broker_commands.count() if broker_commands else 0)
    for method, path in (("GET", "/image/"), ("PUT", f"/image/{existing}/"), ("DELETE", f"/image/{existing}/")):
        response = httpx.request(method, system.url + path, headers=headers, json={})
        assert (response.status_code, response.json()) == (403, {"detail": detail})
    assert (submitted_commands(system), broker_commands.count() if broker_commands else 0) == before


def test_unknown_route_and_method_answer_json(system):
    with system.client() as client:
        assert (client.get("/nothing/").status_code, client.get("/nothing/").json()) == (404, {"detail": "Not found."})
        response = client.patch("/image/")
        assert (response.status_code, response.json()) == (405, {"detail": 'Method "PATCH" not allowed.'})
        assert client.get("/image/bad name/").status_code == 404


# --- decided by the importer (the manifest is fetched there, never in the gateway) ---------------


@pytest.mark.parametrize("route, message", [
    (dict(status=404), "Image manifest URL is unreachable (404 Client Error: Not Found for url: {url})."),
    (dict(status=500), "Image manifest URL is unreachable (500 Server Error: Internal Server Error for url: {url})."),
    (dict(body=b"<html>not json</html>"), "Could not parse image manifest."),
    (dict(body=b"{" + b'"a": "' + b"x" * 9000 + b'"}'), "Image manifest URL is unreachable (Response is too large)."),
    (dict(body=b'{"uuid": "7c5b4c1e-0000-4000-8000-000000000001", "version": "1"}'), "Invalid image manifest."),
    (dict(body=b'{"uuid": "7c5b4c1e-0000-4000-8000-000000000002", "version": "1", "type": "zvol", "os": "linux",'
               b' "files": [{}, {}]}'), "Multiple files inside manifest are not supported."),
])
def test_bad_manifests(system, broker_commands, origin, name, route, message):
    url = origin.route(f"/bad/{name}", **route)
    before = (submitted_commands(system), broker_commands.count() if broker_commands else 0)
    with system.client() as client:
        response = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"})
        # These are decided by the importer: the command did reach the broker (which also shows
        # that the detectors used by refused_by_gateway see published commands).
        after = (submitted_commands(system), broker_commands.count() if broker_commands else 0)
        assert after == (before[0] + 1, before[1] + (1 if broker_commands else 0))
        assert response.status_code == 400, response.text
        assert envelope_errors(response) == {"manifest_url": [message.format(url=url)]}
        assert client.get(f"/image/{name}/").status_code == 404  # no half-done effect


def test_unreachable_manifest_host(system, name):
    from tests.support.services import free_port

    url = f"http://127.0.0.1:{free_port()}/images/x"
    with system.client() as client:
        response = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"})
        assert response.status_code == 400
        assert envelope_errors(response) == {
            "manifest_url": ["Image manifest URL is unreachable (Connection refused)."]}


def test_unreachable_file_url(system, origin, name):
    manifest = sample_manifest()
    url = origin.route(f"/images/{manifest['uuid']}", __import__("orjson").dumps(manifest))
    with system.client() as client:
        response = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"})
        assert response.status_code == 400
        assert envelope_errors(response) == {"file_url": [
            f"Image file URL is unreachable (404 Client Error: Not Found for url: {url}/file)."]}


def test_manifest_uuid_already_registered(system, origin, existing, name):
    with system.client() as client:
        uuid = client.get(f"/image/{existing}/").json()["result"]["uuid"]
        url = origin.route(f"/dup/{name}", __import__("orjson").dumps(sample_manifest(uuid=uuid)))
        origin.route(f"/dup/{name}/file", b"x")
        response = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"})
        assert envelope_errors(response) == {"manifest_url": [f'Image UUID is already registered by image "{existing}".']}


def test_alias_and_version_must_be_unique_case_insensitively(system, origin, existing, name):
    with system.client() as client:
        current = client.get(f"/image/{existing}/").json()["result"]
        url, _ = origin.add_manifest()
        response = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main",
                                                        "alias": current["alias"].upper(), "version": current["version"]})
        assert envelope_errors(response) == {
            "alias": ["This alias is already in use. Please supply a different alias or version."]}
        assert client.get(f"/image/{name}/").status_code == 404


def test_update_reports_dc_bound_and_field_errors_together(refused_by_gateway, system, origin, name):
    url, _ = origin.add_manifest()
    with system.client() as client:
        assert client.post(f"/image/{name}/", json={"manifest_url": url, "dc_bound": False}).status_code == 200
    response = refused_by_gateway(system, lambda c: c.put(f"/image/{name}/", json={"dc_bound": True, "alias": "bad<"}))
    assert response.status_code == 400
    assert envelope_errors(response) == {"dc_bound": ["Image is not attached into any datacenters."],
                                         "alias": ["Invalid value."]}


@pytest.mark.parametrize("method, body, status, expected", [
    ("put", {"desc": "a\u0000b"}, 400, {"desc": ["Invalid value."]}),
    ("put", {"owner": "a\u0000b"}, 400, {"owner": ["Invalid value."]}),
    ("put", {"alias": "x" * 5000}, 400, {"alias": ["Ensure this value has at most 32 characters (it has 5000)."]}),
])
def test_unstorable_values_are_refused_not_crashed_on(refused_by_gateway, system, existing, method, body, status,
                                                     expected):
    response = refused_by_gateway(system, lambda c: c.request(method.upper(), f"/image/{existing}/", json=body))
    assert response.status_code == status
    assert envelope_errors(response) == expected


def test_an_unstorable_datacenter_name_is_not_found(refused_by_gateway, system, name):
    response = refused_by_gateway(system, lambda c: c.post(
        f"/image/{name}/", json={"manifest_url": "http://example.com/x", "dc": "a\u0000b"}))
    assert (response.status_code, response.json()) == (404, {"detail": "Datacenter not found"})


@pytest.mark.parametrize("dc", ["", None])
def test_an_empty_or_null_datacenter_is_not_found(refused_by_gateway, system, name, dc):
    """As the original, which looks up ``data.get("dc", <request DC>)``: only an absent dc is the default."""
    response = refused_by_gateway(system, lambda c: c.post(
        f"/image/{name}/", json={"manifest_url": "http://example.com/x", "dc": dc}))
    assert (response.status_code, response.json()) == (404, {"detail": "Datacenter not found"})


def test_a_bound_import_without_a_datacenter_is_400(refused_by_gateway, system, name):
    response = refused_by_gateway(system, lambda c: c.post(f"/image/{name}/", json={"manifest_url": "http://example.com/x"}))
    assert response.status_code == 400
    assert envelope_errors(response) == {"dc_bound": [DC_REQUIRED], "dc": [DC_REQUIRED]}
