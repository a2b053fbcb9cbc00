"""A task id belongs to the command that first used it (reliability row T2 at unit level): another
command claiming it, on any path (handled, refused, poison, untrusted), changes nothing under it
and gets no outcome there; the owner's own redeliveries still work."""

from __future__ import annotations

import dataclasses
import functools

import orjson
import pytest

from services.updater.handlers import update_image
from shared import contracts
from shared.broker.consumer import Delivery, Outcome
from shared.contracts import DeleteImage, UpdateImage
from shared.db import task_owners
from shared.db.engine import write_transaction
from shared.handling import CommandConsumer
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
