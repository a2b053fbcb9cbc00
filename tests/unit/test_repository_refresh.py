"""The importer's ``imagestore.refresh``: what it refuses before fetching, the lock, what it stores."""

from __future__ import annotations

import functools
import time

import orjson
import pytest

from imagesvc.domain import repositories
from imagesvc.services.importer.repositories import refresh_repositories
from imagesvc.shared.contracts import RefreshImageRepositories
from imagesvc.shared.db import accounts, locks
from imagesvc.shared.db import repositories as stored
from imagesvc.shared.db.engine import read_transaction, write_transaction
from imagesvc.shared.handling import CommandConsumer
from imagesvc.shared.net.fetch import FetchError, Fetcher, UrlPolicy
from tests.unit.test_command_handling import FakeFetcher, RecordingRelay, World

CONFIGURED = {"good": "https://good.test/", "bad": "https://bad.test/"}
LOCAL = ("_img01", "https://img01.test/")


@pytest.fixture
def world(engine):
    with write_transaction(engine) as conn:
        accounts.create_user(conn, "root", api_key=None, is_superadmin=True)
        accounts.create_user(conn, "bob", api_key=None, is_superadmin=False)
    fetcher = FakeFetcher()
    fetcher.responses["https://good.test/images"] = orjson.dumps([
        {"uuid": "a", "published_at": "2019-01-01T00:00:00Z"}, {"uuid": "b", "published_at": "2020-01-01T00:00:00Z"}])
    fetcher.responses["https://bad.test/images"] = FetchError("timed out", "timeout")
    handler = functools.partial(refresh_repositories, fetcher=fetcher, configured=CONFIGURED, local=LOCAL)
    relay = RecordingRelay()
    consumer = CommandConsumer(name="importer", engine=engine, relay=relay, check_first=True,
                               routes={"imagestore.refresh": handler})
    return World(engine, fetcher, relay, {"importer": consumer})


def stored_state(engine, name):
    with read_transaction(engine) as conn:
        return stored.load(conn, [name], with_images=True).get(name)


@pytest.mark.parametrize("repositories, name", [
    ({"elsewhere": "https://elsewhere.test/"}, None),  # not configured
    ({"good": "https://evil.test/"}, None),  # configured under another URL
    ({"good": "https://good.test/", "bad": "https://bad.test/"}, "good"),  # a name must be the only one
])
def test_a_repository_unknown_to_the_consumer_is_404_and_nothing_is_fetched(world, repositories, name):
    command = RefreshImageRepositories(repositories=repositories, **({"name": name} if name else {}))
    outcome = world.outcome(world.run("importer", command))
    assert outcome["type"] == "task.failed"
    assert (outcome["payload"]["http_code"], outcome["payload"]["result"]) == (404, {"detail": "ImageStore not found"})
    assert world.fetcher.calls == []


def test_the_local_repository_is_a_superadmins_only(world):
    with write_transaction(world.engine) as conn:
        accounts.create_role(conn, "imp", ["image_import_admin"])
        accounts.add_member(conn, "imp", "bob")
        accounts.attach_role(conn, "imp", "main")
    command = RefreshImageRepositories(repositories=dict([LOCAL]), name=LOCAL[0])
    refused = world.outcome(world.run("importer", command, user="bob"))
    assert (refused["payload"]["http_code"], refused["payload"]["code"]) == (404, "repository_not_found")
    assert world.fetcher.calls == []
    world.run("importer", command, user="root")
    assert world.fetcher.calls == ["https://img01.test/images"]


def test_success_stores_newest_first_and_releases_the_lock(world):
    envelope = world.run("importer", RefreshImageRepositories(repositories={"good": "https://good.test/"}, name="good"))
    outcome = world.outcome(envelope)
    assert outcome["type"] == "task.succeeded"
    assert outcome["payload"]["result"]["image_count"] == 2 and outcome["payload"]["result"]["error"] is None
    assert [e["uuid"] for e in stored_state(world.engine, "good").images] == ["b", "a"]
    with read_transaction(world.engine) as conn:
        assert locks.holder(conn, "imagestore-update") is None


def test_any_failure_is_a_400_with_every_repository_and_the_others_are_stored(world):
    envelope = world.run("importer", RefreshImageRepositories(repositories=CONFIGURED))
    outcome = world.outcome(envelope)["payload"]
    assert (outcome["http_code"], outcome["code"]) == (400, "repository_error")
    assert [(r["name"], r["error"]) for r in outcome["result"]] == [("bad", "timed out"), ("good", None)]
    assert stored_state(world.engine, "bad").error == "timed out"
    assert stored_state(world.engine, "good").image_count == 2
    with read_transaction(world.engine) as conn:
        assert locks.holder(conn, "imagestore-update") is None


def test_a_held_lock_is_423_before_anything_is_fetched(world):
    with write_transaction(world.engine) as conn:
        assert locks.acquire(conn, "imagestore-update", "another-task", 60)
    outcome = world.outcome(world.run("importer", RefreshImageRepositories(repositories=CONFIGURED)))["payload"]
    assert (outcome["http_code"], outcome["result"]) == (423, {"detail": "Task is already running"})
    assert world.fetcher.calls == []


def test_a_repository_trickling_its_answer_fails_at_the_deadline(engine, origin, monkeypatch):
    """The real fetcher over a loopback socket: the list's status line and headers come one byte
    every 0.2 s, well inside any per-read timeout; the refresh's deadline ends it."""
    monkeypatch.setattr(repositories, "FETCH_TIMEOUT", 1.0)
    with write_transaction(engine) as conn:
        accounts.create_user(conn, "root", api_key=None, is_superadmin=True)
    origin.route("/slow/images", b"[]", trickle=0.2)
    configured = {"slow": origin.base + "/slow/"}
    handler = functools.partial(refresh_repositories, fetcher=Fetcher(UrlPolicy(["127.0.0.1"])), configured=configured,
                                local=None)
    consumer = CommandConsumer(name="importer", engine=engine, relay=RecordingRelay(), routes={"imagestore.refresh": handler})
    world = World(engine, None, None, {"importer": consumer})
    started = time.monotonic()
    envelope = world.run("importer", RefreshImageRepositories(repositories=configured, name="slow"))
    assert time.monotonic() - started < 1.0 + 1.5
    outcome = world.outcome(envelope)["payload"]
    assert (outcome["http_code"], outcome["code"], outcome["result"]["error"]) == (400, "repository_error", "timed out")
