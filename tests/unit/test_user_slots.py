"""The per-user cap on long-running commands: ``UserSlots`` itself, and ``CommandConsumer``
deferring a user's long-running command where its long part would begin while that user is at
the cap (SQLite, a handler that blocks until the test lets it end)."""

from __future__ import annotations

import threading

import pytest

from imagesvc.shared.broker.consumer import Outcome
from imagesvc.shared.contracts import ImportImage, UpdateImage
from imagesvc.shared.db import accounts
from imagesvc.shared.db.engine import write_transaction
from imagesvc.shared.errors import CommandFailed, Refused, Superseded
from imagesvc.shared.handling import CommandConsumer
from imagesvc.shared.user_slots import UserSlots
from tests.unit.test_command_handling import RecordingRelay, World


def test_a_user_gets_at_most_its_slots_and_others_are_not_counted():
    slots = UserSlots(2, ["image.import"])
    assert slots.claim("image.import", "alice") and slots.claim("image.import", "alice")
    assert not slots.claim("image.import", "alice")
    assert slots.claim("image.import", "bob")
    assert slots.claim("image.update", "alice")  # not long-running: never counted
    slots.release("image.update", "alice")
    assert not slots.claim("image.import", "alice")
    slots.release("image.import", "alice")
    assert slots.claim("image.import", "alice")
    assert not slots.claim("image.import", "alice")


def test_commands_without_an_actor_share_one_count():
    slots = UserSlots(1, ["image.import"])
    assert slots.claim("image.import", None)
    assert not slots.claim("image.import", None)
    assert slots.claim("image.import", "alice")


def test_a_cap_below_one_is_refused():
    with pytest.raises(ValueError):
        UserSlots(0, ["image.import"])


class Handler:
    """Refuses a name starting with ``refused`` (before its long part, as the real handlers'
    checks do); otherwise begins its long part, and for a name starting with ``slow`` waits there
    for ``release`` and then ends as ``ending`` says; anything else succeeds at once."""

    def __init__(self):
        self.calls: list[str] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.ending = "success"

    def __call__(self, command, ctx):
        self.calls.append(command.name)
        if command.name.startswith("refused"):
            raise Refused(406, "Object already exists", code="image_exists")
        ctx.begin_long_work()
        if command.name.startswith("slow"):
            self.entered.set()
            assert self.release.wait(10)
            if self.ending == "failure":
                raise CommandFailed({"detail": "no"}, http_code=400, code="refused")
            if self.ending == "exception":
                raise RuntimeError("boom")
            if self.ending == "superseded":
                raise Superseded()
        with ctx.writing() as tx:
            tx.finish([], result={}, owner=None, dc=None)


@pytest.fixture
def world(engine):
    with write_transaction(engine) as conn:
        for user in ("alice", "bob"):
            accounts.create_user(conn, user, api_key=None, is_superadmin=True)
    handler = Handler()
    consumer = CommandConsumer(name="importer", engine=engine, relay=RecordingRelay(), check_first=True,
                               routes={"image.import": handler, "image.update": handler},
                               slots=UserSlots(1, ["image.import"], defer_seconds=0.5))
    world = World(engine, None, None, {"importer": consumer})
    world.handler = handler
    return world


def start_slow(world, name: str = "slow-1"):
    """Deliver alice's slow import on a thread of its own; returns once its long part runs."""
    envelope = world.envelope(ImportImage(name=name, manifest_url="https://x.test/m"), user="alice")
    verdict: list = []
    thread = threading.Thread(target=lambda: verdict.append(_deliver_catching(world, envelope)), daemon=True)
    thread.start()
    assert world.handler.entered.wait(10)
    return thread, verdict


def _deliver_catching(world, envelope):
    try:
        return world.deliver("importer", envelope)
    except RuntimeError as exc:  # what the runner would retry
        return exc


def import_of(name: str) -> ImportImage:
    return ImportImage(name=name, manifest_url="https://x.test/m")


@pytest.mark.parametrize("ending", ["success", "failure", "exception", "superseded"])
def test_a_users_command_at_the_cap_is_deferred_until_its_slot_is_released(world, ending):
    world.handler.ending = ending
    thread, verdict = start_slow(world)

    waiting = world.envelope(import_of("second"), user="alice")
    deferred = world.deliver("importer", waiting)
    assert (deferred.outcome, deferred.delay) == (Outcome.DEFER, 0.5)
    assert world.events(correlation_id=waiting.correlation_id) == []  # no outcome: it did not happen yet

    # Another user's import, and the same user's short commands, run meanwhile.
    assert world.outcome(world.run("importer", import_of("bobs"), user="bob"))["type"] == "task.succeeded"
    assert world.outcome(world.run("importer", UpdateImage(name="any", desc="x"), user="alice"))["type"] == \
        "task.succeeded"

    world.handler.release.set()
    thread.join(10)
    assert verdict and (isinstance(verdict[0], RuntimeError) if ending == "exception"
                        else verdict[0].outcome is Outcome.ACK)
    again = world.deliver("importer", waiting)
    assert again.outcome is Outcome.ACK
    assert world.outcome(waiting)["type"] == "task.succeeded"


def test_a_refusal_before_the_long_part_is_not_deferred(world):
    """A "busy now" refusal (the reference's 406, 417) stays an answer now, not a success later."""
    thread, _ = start_slow(world)
    try:
        refused = world.run("importer", import_of("refused"), user="alice")
        assert world.outcome(refused)["payload"]["http_code"] == 406
    finally:
        world.handler.release.set()
        thread.join(10)


def test_a_duplicate_is_recognised_before_the_cap_is_applied(world):
    done = world.run("importer", import_of("first"), user="alice")
    thread, _ = start_slow(world)
    try:
        again = world.deliver("importer", done)
        assert (again.outcome, again.reason) == (Outcome.ACK, "duplicate")
        assert world.handler.calls.count("first") == 1
    finally:
        world.handler.release.set()
        thread.join(10)
