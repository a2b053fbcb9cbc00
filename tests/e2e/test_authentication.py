"""A1: every authenticated operation refuses bad credentials with the original's 403 and body,
publishes nothing, and the raw keys are kept nowhere (reference §4.1), in both modes.

Already covered elsewhere and not repeated here: no key / a wrong key on the image routes with
the broker tapped (test_bad_input.py::test_authentication_failures), the token header's own
messages, logout and an expired token on one route (test_accounts.py), a revoked key on one
route (test_permissions.py). Here the operations come from the gateway's OpenAPI description,
so a route added later is checked without editing this file.
"""

from __future__ import annotations

import re
import uuid
import httpx
import pytest
from sqlalchemy import create_engine, select

from imagesvc.services.gateway import openapi
from imagesvc.shared.db.models import AuthToken, User
from imagesvc.shared.keys import key_digest
from tests.e2e.conftest import database_url, expire_token, submitted_commands
from tests.e2e.test_bad_input import broker_commands  # noqa: F401 - the fixture, shared
from tests.support.polling import eventually

pytestmark = pytest.mark.e2e

NO_CREDENTIALS = {"detail": "Authentication credentials were not provided."}
INVALID_KEY = {"detail": "Invalid API key"}
PASSWORD = "correct horse battery"


def authenticated_operations() -> list[tuple[str, str]]:
    """(method, path) of every operation the description says needs credentials."""
    document = openapi.document()
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in ("get", "post", "put", "delete") and operation.get("security", document["security"]):
                found.append((method.upper(), path))
    return found


OPERATIONS = authenticated_operations()


@pytest.fixture(scope="module")
def accounts(system, origin):
    """A SuperAdmin (so any refusal is authentication's), its replaced key, an expired token, and
    an image for the routes that name one."""
    username = f"authn{uuid.uuid4().hex[:8]}"
    replaced = system.new_user(username, "--superadmin")
    system.admin("user", "password", username, stdin=PASSWORD + "\n")
    current = system.admin("user", "key", username).strip().splitlines()[-1]
    with httpx.Client(base_url=system.url, timeout=30) as client:
        login = client.post("/accounts/login/", json={"username": username, "password": PASSWORD})
        assert login.status_code == 200, login.text
        token = login.json()["token"]
    expire_token(system, token)
    image = f"authn-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=system.url, headers={"ES-API-KEY": current}, timeout=30) as client:
        imported = client.post(f"/image/{image}/", json={"manifest_url": origin.add_manifest()[0], "dc": "main"})
        assert imported.status_code == 200, imported.text
        task_id = imported.json()["task_id"]

        def replaced_key_refused() -> None:  # the gateway may reuse a resolved key for a couple of seconds
            response = client.get("/image/", headers={"ES-API-KEY": replaced})
            assert (response.status_code, response.json()) == (403, INVALID_KEY)

        eventually(replaced_key_refused, timeout=10)
    return {"username": username, "current": current, "replaced": replaced, "token": token, "image": image,
            "task_id": task_id}


def concrete(path: str, accounts: dict) -> str:
    """The description's path with values that would be served to a valid SuperAdmin."""
    values = {"name": accounts["image"], "dc": "main", "username": accounts["username"], "uuid": str(uuid.uuid4()),
              "task_id": accounts["task_id"], "vm": str(uuid.uuid4()), "snapname": "snap1"}
    return re.sub(r"\{(\w+)\}", lambda match: values[match.group(1)], path).removeprefix("/api")


#: (what is wrong, headers sent, the original's answer). Filled in with the module's accounts.
CREDENTIALS = {
    "no credentials": lambda a: ({}, NO_CREDENTIALS),
    "empty key": lambda a: ({"ES-API-KEY": ""}, NO_CREDENTIALS),
    "malformed key": lambda a: ({"ES-API-KEY": "not a key \t with spaces"}, INVALID_KEY),
    "non-ascii key": lambda a: ({"ES-API-KEY": "ключ".encode("utf-8")}, INVALID_KEY),
    "oversized key": lambda a: ({"ES-API-KEY": "k" * 4096}, INVALID_KEY),
    "wrong key": lambda a: ({"ES-API-KEY": uuid.uuid4().hex * 2}, INVALID_KEY),
    "replaced key": lambda a: ({"ES-API-KEY": a["replaced"]}, INVALID_KEY),
    "expired token": lambda a: ({"Authorization": f"Token {a['token']}"}, NO_CREDENTIALS),
}


@pytest.mark.parametrize("credentials", list(CREDENTIALS))
def test_every_authenticated_operation_refuses_with_the_originals_403(system, broker_commands, accounts,  # noqa: F811
                                                                       credentials):
    headers, expected = CREDENTIALS[credentials](accounts)
    before = (submitted_commands(system), broker_commands.count() if broker_commands else 0)
    with httpx.Client(base_url=system.url, timeout=30) as client:
        for method, path in OPERATIONS:
            response = client.request(method, concrete(path, accounts), headers=headers, json={})
            assert (response.status_code, response.json()) == (403, expected), (method, path)
    assert (submitted_commands(system), broker_commands.count() if broker_commands else 0) == before


def methods_not_taken() -> list[tuple[str, str]]:
    """(method, path) of each of GET/POST/PUT/DELETE that an authenticated path does not take."""
    document = openapi.document()
    authenticated = {path for _method, path in OPERATIONS}
    return [(method, path) for path in sorted(authenticated) for method in ("GET", "POST", "PUT", "DELETE")
            if method.lower() not in document["paths"][path]]


def test_a_method_a_path_does_not_take_is_refused_after_authentication(system, broker_commands,  # noqa: F811
                                                                        accounts):
    """Reference §4.1, §5: the original authenticates before it looks at the method, so without
    valid credentials a method a path does not take is the authentication's 403, not 405."""
    refused = methods_not_taken()
    assert ("PUT", "/api/image/") in refused and ("POST", "/api/image/{name}/vm/") in refused
    before = (submitted_commands(system), broker_commands.count() if broker_commands else 0)
    with httpx.Client(base_url=system.url, timeout=30) as client:
        for method, path in refused:
            url = concrete(path, accounts)
            for headers, expected in (({}, NO_CREDENTIALS), ({"ES-API-KEY": "wrong"}, INVALID_KEY)):
                response = client.request(method, url, headers=headers, json={})
                assert (response.status_code, response.json()) == (403, expected), (method, path)
            response = client.request(method, url, headers={"ES-API-KEY": accounts["current"]}, json={})
            assert (response.status_code, response.json()) == (
                405, {"detail": f'Method "{method}" not allowed.'}), (method, path)
        # A path anybody may call still answers 405 to anybody.
        response = client.get("/accounts/login/")
        assert (response.status_code, response.json()) == (405, {"detail": 'Method "GET" not allowed.'})
    assert (submitted_commands(system), broker_commands.count() if broker_commands else 0) == before


def test_the_current_key_is_accepted_on_the_same_routes(system, accounts):
    """The refusals above are authentication's: the same reads with the valid key get past it
    (404 where a made-up uuid or VM names nothing)."""
    with httpx.Client(base_url=system.url, headers={"ES-API-KEY": accounts["current"]}, timeout=30) as client:
        for path in [path for method, path in OPERATIONS if method == "GET"]:
            response = client.get(concrete(path, accounts))
            assert response.status_code in (200, 404), (path, response.text)


def test_raw_keys_and_tokens_are_stored_and_logged_nowhere(system, accounts):
    secrets = [accounts["current"], accounts["replaced"], accounts["token"], system.api_key]
    engine = create_engine(database_url(system))
    try:
        with engine.connect() as conn:
            dump = "\n".join(repr(tuple(row)) for table in (User.__table__, AuthToken.__table__)
                             for row in conn.execute(select(table)))
            stored_digests = set(conn.execute(select(User.__table__.c.api_key_digest)).scalars())
    finally:
        engine.dispose()
    assert key_digest(accounts["current"]) in stored_digests  # what is kept instead of the key
    for secret in secrets:
        assert secret not in dump
    lines = [line for path in system.workdir.rglob("*.log") for line in path.read_text(errors="replace").splitlines()]
    assert lines, "no process log to search"
    for line in lines:
        for secret in secrets:
            if secret in line:
                # The one exception, by design: on its first run `imagesvc serve` shows the
                # SuperAdmin key it made on its console, once, as a banner (never a log record).
                assert secret == system.api_key and not line.startswith("{"), line
