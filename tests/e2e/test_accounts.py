"""Logging in for a token, using it, logging out, expiry (reference §4.1, §11: the ``es`` login)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import create_engine, select

from imagesvc.shared.db.models import AuthToken
from imagesvc.shared.keys import key_digest
from tests.e2e.conftest import database_url, expire_token

pytestmark = pytest.mark.e2e


def set_password(system, username: str, password: str) -> None:
    assert password not in system.admin("user", "password", username, stdin=password + "\n")


@pytest.fixture(scope="module")
def account(system):
    username = f"jane{uuid.uuid4().hex[:6]}"
    system.new_user(username, "--superadmin")
    set_password(system, username, "correct horse")
    return username


def anonymous(system) -> httpx.Client:
    return httpx.Client(base_url=system.url, timeout=30)


def test_login_gives_a_token_that_authenticates_until_logout(system, account):
    with anonymous(system) as client:
        response = client.post("/accounts/login/", json={"username": account, "password": "correct horse"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["detail"] == "Welcome to Danube Cloud API." and len(body["token"]) >= 40
        expires = datetime.fromisoformat(body["expires"].replace("Z", "+00:00"))
        assert timedelta(minutes=59) < expires - datetime.now(timezone.utc) <= timedelta(hours=1)
        auth = {"Authorization": f"Token {body['token']}"}
        assert client.get("/image/", headers=auth).status_code == 200
        # The token is stored as its digest only.
        engine = create_engine(database_url(system))
        with engine.connect() as conn:
            digests = set(conn.execute(select(AuthToken.__table__.c.digest)).scalars())
        engine.dispose()
        assert key_digest(body["token"]) in digests and body["token"] not in digests

        logout = client.get("/accounts/logout/", headers=auth)
        assert logout.status_code == 200
        assert client.get("/image/", headers=auth).json() == {"detail": "Invalid token."}
    # Neither the token nor the password nor an API key ever reaches a log line (the JSON lines;
    # `serve` shows the first SuperAdmin's key once on its console by design).
    logs = "\n".join(line for name in system.processes for line in system.log(name).splitlines()
                     if line.startswith("{"))
    assert "request.handled" in logs
    for secret in (body["token"], "correct horse", system.api_key):
        assert secret not in logs


@pytest.mark.parametrize("credentials, status, body", [
    ({"password": "x"}, 400, {"detail": {"username": ["This field is required."]}}),
    ({"username": "nobody-here", "password": "correct horse"}, 400,
     {"detail": "Unable to log in with provided credentials."}),
    ({"username": None, "password": "wrong"}, 400, {"detail": {"username": ["This field is required."]}}),
    ({"username": "x" * 200, "password": "y"}, 400, {"detail": "Unable to log in with provided credentials."}),
])
def test_login_failures(system, credentials, status, body):
    with anonymous(system) as client:
        response = client.post("/accounts/login/", json=credentials)
    assert (response.status_code, response.json()) == (status, body)


def test_a_wrong_password_and_a_garbage_token(system, account):
    with anonymous(system) as client:
        response = client.post("/accounts/login/", json={"username": account, "password": "wrong"})
        assert (response.status_code, response.json()) == (
            400, {"detail": "Unable to log in with provided credentials."})
        response = client.get("/image/", headers={"Authorization": "Token not-a-token"})
        assert (response.status_code, response.json()) == (403, {"detail": "Invalid token."})
        for header, detail in (("Token", "Invalid token header. No credentials provided."),
                               ("Token a b", "Invalid token header. Token string should not contain spaces."),
                               ("Bearer x", "Authentication credentials were not provided.")):
            response = client.get("/image/", headers={"Authorization": header})
            assert (response.status_code, response.json()) == (403, {"detail": detail})


def test_an_expired_token_counts_as_no_credentials(system, account):
    with anonymous(system) as client:
        token = client.post("/accounts/login/", json={"username": account, "password": "correct horse"}).json()["token"]
        expire_token(system, token)
        from tests.support.polling import eventually

        def expired() -> None:  # the gateway may reuse what it resolved for a couple of seconds
            response = client.get("/image/", headers={"Authorization": f"Token {token}"})
            assert (response.status_code, response.json()) == (
                403, {"detail": "Authentication credentials were not provided."})

        eventually(expired, timeout=10)


def test_an_account_without_api_access_or_inactive_cannot_log_in(system):
    username = f"locked{uuid.uuid4().hex[:6]}"
    system.new_user(username)
    set_password(system, username, "pw")
    system.admin("user", "set", username, "--api-access", "no")
    with anonymous(system) as client:
        response = client.post("/accounts/login/", json={"username": username, "password": "pw"})
        assert (response.status_code, response.json()) == (400, {"detail": "User account is not allowed to access API."})
        system.admin("user", "set", username, "--api-access", "yes", "--active", "no")
        response = client.post("/accounts/login/", json={"username": username, "password": "pw"})
        assert (response.status_code, response.json()) == (400, {"detail": "Unable to log in with provided credentials."})


def test_logging_in_again_replaces_the_previous_token(system, account):
    with anonymous(system) as client:
        first = client.post("/accounts/login/", json={"username": account, "password": "correct horse"}).json()["token"]
        second = client.post("/accounts/login/", json={"username": account, "password": "correct horse"}).json()["token"]
        assert first != second
        from tests.support.polling import eventually

        def first_is_gone() -> None:
            assert client.get("/image/", headers={"Authorization": f"Token {first}"}).json() == {
                "detail": "Invalid token."}

        eventually(first_is_gone, timeout=10)
        assert client.get("/image/", headers={"Authorization": f"Token {second}"}).status_code == 200
