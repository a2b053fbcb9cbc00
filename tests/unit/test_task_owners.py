"""A task id belongs to the command that first used it (reliability row T2 at unit level): another
command claiming it, on any path (handled, refused, poison, untrusted), changes nothing under it
and gets no outcome there; the owner's own redeliveries still work. And one delivery of a command
handles it at a time (issue 12: the inbox for concurrent copies)."""

from __future__ import annotations

import dataclasses
import functools
import uuid

import orjson
import pytest
from sqlalchemy import select

from imagesvc.services.updater.handlers import update_image
from imagesvc.shared import contracts
from imagesvc.shared.broker.consumer import Delivery, Outcome
from imagesvc.shared.contracts import DeleteImage, UpdateImage
from imagesvc.shared.db import task_owners
from imagesvc.shared.db.engine import write_transaction
from imagesvc.shared.handling import CommandConsumer
from tests.support.polling import eventually
from tests.unit.test_command_handling import world  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("world")


def bind_to_another(world, task_id: str) -> None:
    """The task is another command's: it was bound by that command's first write (its import
    running, say), which has no outcome yet."""
    with write_transaction(world.engine) as conn:
        task_owners.bind(conn, task_id=task_id, message_id="the-victims-command", actor="alice",
                         command="image.import")


def stolen(world, command, **kwargs):
    envelope = world.envelope(command, **kwargs)
    bind_to_another(world, envelope.correlation_id)
    return envelope


def test_a_command_under_another_commands_task_id_changes_nothing_and_gets_no_outcome(world):
    world.imported("victim")
    envelope = stolen(world, UpdateImage(name="victim", desc="taken over"))
    disposition = world.deliver("updater", envelope)
    assert disposition.outcome is Outcome.DEAD_LETTER
    assert disposition.reason == f"task id {envelope.correlation_id} belongs to another command"
    assert world.events(correlation_id=envelope.correlation_id) == []
    assert [e for e in world.events(type="image.updated")] == []


@pytest.mark.parametrize("how", ["refused by the handler", "poison", "invalid fields"])
def test_no_failure_is_recorded_under_another_commands_task(world, how):
    """A refusal would otherwise end the victim's running task with the attacker's failure."""
    if how == "refused by the handler":
        envelope = stolen(world, DeleteImage(name="no-such-image"))
        disposition = world.deliver("deleter", envelope)
    elif how == "invalid fields":
        world.imported("victim")
        envelope = stolen(world, UpdateImage(name="victim", access="not a number"))
        disposition = world.deliver("updater", envelope)
    else:
        envelope = stolen(world, UpdateImage(name="victim"))
        body = orjson.dumps({**envelope.to_dict(), "payload": {"desc": "no name"}})
        disposition = world.deliver("updater", envelope, body=body)
    assert disposition.outcome is Outcome.DEAD_LETTER
    assert world.events(correlation_id=envelope.correlation_id) == []


def test_an_untrusted_publishers_command_cannot_end_another_commands_task(world, engine):
    consumer = CommandConsumer(name="updater", engine=engine, relay=world.relay, routes={"image.update": update_image},
                               trusted_publishers=frozenset({"imagesvc"}))
    envelope = stolen(world, UpdateImage(name="victim", desc="x"))
    delivery = Delivery(body=contracts.encode(envelope), queue="updater.commands", headers={}, message_id=envelope.id,
                        correlation_id=envelope.correlation_id, message_type=envelope.type, user_id="mallory",
                        redelivered=False, attempt=1, publisher="mallory")
    disposition = consumer(delivery)
    assert disposition.outcome is Outcome.DEAD_LETTER and "belongs to another command" in disposition.reason
    assert world.events(correlation_id=envelope.correlation_id) == []


def test_the_first_command_binds_its_task_and_its_redeliveries_remain_its_own(world):
    world.imported("centos")
    first = world.run("updater", UpdateImage(name="centos", desc="first"))
    assert world.deliver("updater", first).outcome is Outcome.ACK  # a duplicate of itself
    again = dataclasses.replace(first, id=contracts.new_message_id())
    assert world.deliver("updater", again).outcome is Outcome.DEAD_LETTER
    assert [e["payload"]["image"]["desc"] for e in world.events(type="image.updated")] == ["first"]


def test_a_command_whose_first_transaction_rolled_back_has_not_bound_its_task(world):
    """A handler that refused before committing anything binds the task only with its failure;
    until then the id is nobody's (nothing to protect yet)."""
    envelope = world.run("deleter", DeleteImage(name="missing"))
    assert world.outcome(envelope)["payload"]["http_code"] == 404
    with write_transaction(world.engine) as conn, pytest.raises(task_owners.TaskTaken):
        task_owners.bind(conn, task_id=envelope.correlation_id, message_id="other", actor=None, command="x")


def test_binding_the_same_message_twice_is_harmless(engine):
    bind = functools.partial(task_owners.bind, task_id="t-1", message_id="m-1", actor="root", command="image.update")
    for _ in range(2):
        with write_transaction(engine) as conn:
            bind(conn)


# --- claims: one delivery of a command handles it at a time ---------------------------------------


def claimed(engine, *, token: str, message_id: str = "m-1", seconds: float = 30.0) -> task_owners.Claimed:
    with write_transaction(engine) as conn:
        return task_owners.claim(conn, task_id="t-1", message_id=message_id, actor="root", command="image.update",
                                 token=token, seconds=seconds)


def claim(engine, **kwargs) -> task_owners.Claim:
    return claimed(engine, **kwargs).state


def test_a_live_claim_holds_other_deliveries_of_the_command_off(engine):
    assert claim(engine, token="a") is task_owners.Claim.FIRST
    assert claim(engine, token="b") is task_owners.Claim.HELD
    with pytest.raises(task_owners.TaskTaken):
        claim(engine, token="c", message_id="another command")


def test_a_released_or_lapsed_claim_is_taken_by_the_next_delivery(engine):
    assert claim(engine, token="a") is task_owners.Claim.FIRST
    with write_transaction(engine) as conn:
        task_owners.release(conn, "t-1", "not the holder")  # only the holder's token releases it
    assert claim(engine, token="b") is task_owners.Claim.HELD
    with write_transaction(engine) as conn:
        task_owners.release(conn, "t-1", "a")
    assert claim(engine, token="b", seconds=-1) is task_owners.Claim.AGAIN  # taken, already lapsed
    # b took over a released claim (not a death), c one that lapsed unreleased (b's process died).
    assert claimed(engine, token="c") == task_owners.Claimed(task_owners.Claim.AGAIN, lapsed=1)
    assert claimed(engine, token="d") == task_owners.Claimed(task_owners.Claim.HELD, lapsed=1)


def test_the_keeper_renews_what_it_holds_until_dropped(engine):
    from imagesvc.shared.db.models import TaskOwner

    assert claim(engine, token="a", seconds=0.6) is task_owners.Claim.FIRST
    keeper = task_owners.ClaimKeeper(engine, 0.6)
    keeper.hold("a")

    def expiry():
        with write_transaction(engine) as conn:
            return conn.execute(select(TaskOwner.__table__.c.claim_expires_at)).scalar_one()

    first = expiry()
    eventually(lambda: _later(expiry(), first), timeout=5)
    # Renewed, it outlives its first term: another delivery is still held off.
    assert claim(engine, token="b") is task_owners.Claim.HELD
    keeper.drop("a")
    eventually(lambda: _is(claim(engine, token="b"), task_owners.Claim.AGAIN), timeout=5)


def _later(value, than):
    assert value > than, (value, than)


def _is(value, expected):
    assert value is expected, value


def test_a_delivery_that_ends_without_an_outcome_releases_its_claim_for_the_next(world, engine):
    """A handler that raised (the runner retries it) must not hold the command off for a claim's
    life: the retry claims it at once."""
    from imagesvc.shared.handling import CommandConsumer

    calls = []

    def failing(command, ctx):
        calls.append(ctx.delivery.attempt)
        if len(calls) == 1:
            raise RuntimeError("the database went away")
        update_image(command, ctx)

    world.imported("centos")
    consumer = CommandConsumer(name="updater", engine=engine, relay=world.relay, routes={"image.update": failing})
    envelope = world.envelope(UpdateImage(name="centos", desc="second try"))
    delivery = Delivery(body=contracts.encode(envelope), queue="updater.commands", headers={}, message_id=envelope.id,
                        correlation_id=envelope.correlation_id, message_type=envelope.type, user_id=None,
                        redelivered=False, attempt=1)
    with pytest.raises(RuntimeError):
        consumer(delivery)
    assert consumer(dataclasses.replace(delivery, attempt=2)).outcome is Outcome.ACK
    assert calls == [1, 2] and world.outcome(envelope)["type"] == "task.succeeded"


def test_a_command_whose_handler_keeps_dying_is_given_up_after_max_runs(world, engine):
    """A crash loop counted by the claims (each run's process died holding one, so each next
    delivery found it lapsed), not by the broker's redeliveries: a copy that sat unseen in a dying
    process, or was deferred, never ran."""
    from imagesvc.shared.handling import CommandConsumer

    world.imported("centos")
    envelope = world.envelope(UpdateImage(name="centos", desc="never"))
    for _ in range(3):  # three runs that died with their process: their claims lapsed
        with write_transaction(engine) as conn:
            state = task_owners.claim(conn, task_id=envelope.correlation_id, message_id=envelope.id,
                                      actor="root", command=envelope.type, token=uuid.uuid4().hex, seconds=-1).state
        assert state in (task_owners.Claim.FIRST, task_owners.Claim.AGAIN)
    consumer = CommandConsumer(name="updater", engine=engine, relay=world.relay, routes={"image.update": update_image},
                               max_runs=3)
    disposition = consumer(_delivery(envelope))
    assert disposition.outcome is Outcome.DEAD_LETTER and "3 runs" in disposition.reason
    outcome = world.outcome(envelope)["payload"]
    assert (outcome["http_code"], outcome["code"]) == (500, "retries_exhausted")
    assert world.events(type="image.updated") == []


def _delivery(envelope) -> Delivery:
    return Delivery(body=contracts.encode(envelope), queue="updater.commands", headers={}, message_id=envelope.id,
                    correlation_id=envelope.correlation_id, message_type=envelope.type, user_id=None,
                    redelivered=True, attempt=2)


def test_released_claims_are_no_deaths(engine):
    """A delivery that released its claim (deferred for its user's cap, retried) did not die:
    however often that happens, the command is not taken for a crash loop."""
    for attempt in range(10):
        assert claim(engine, token=f"t{attempt}") in (task_owners.Claim.FIRST, task_owners.Claim.AGAIN)
        with write_transaction(engine) as conn:
            task_owners.release(conn, "t-1", f"t{attempt}")
    assert claimed(engine, token="last") == task_owners.Claimed(task_owners.Claim.AGAIN, lapsed=0)
