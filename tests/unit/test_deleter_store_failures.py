"""A removal whose store step fails: the image is OK again only if the store says the image is
still there. An object store's removal can fail after its point of no return (its manifest is
gone, or the store cannot tell); the deleter asks ``restore`` rather than assuming "nothing
changed", so no OK image is ever left without its manifest."""

from __future__ import annotations

import functools

import pytest

from imagesvc.services.deleter.handlers import delete_image
from imagesvc.shared.contracts import DeleteImage
from imagesvc.shared.errors import Transient
from imagesvc.shared.db.catalogue import SqlCatalogue
from imagesvc.shared.db.engine import read_transaction
from imagesvc.domain.images import STATUS_OK, STATUS_PENDING
from imagesvc.shared.handling import CommandConsumer
from imagesvc.shared.store import StoreError
from imagesvc.shared.store.server import ImageServer
from tests.unit.test_command_handling import world  # noqa: F401 - the fixture


class FailingDelete:
    """A store whose ``delete`` raises and whose ``restore`` answers ``there`` (or raises)."""

    location = "failing"

    def __init__(self, there: bool | None):
        self.there = there
        self.restored: list[str] = []

    def check(self) -> None:
        pass

    def delete(self, uuid: str) -> bool:
        raise StoreError("the answer to the manifest's DELETE was lost", "store_error")

    def restore(self, uuid: str) -> bool:
        self.restored.append(uuid)
        if self.there is None:
            raise StoreError("still cannot reach the store", "store_unavailable")
        return self.there


def _deleter(world, store) -> None:
    world.consumers["deleter"] = CommandConsumer(
        name="deleter", engine=world.engine, relay=world.relay,
        routes={"image.delete": functools.partial(delete_image, server=ImageServer(store))})


def _record(world, name: str):
    with read_transaction(world.engine) as conn:
        return SqlCatalogue(conn).image_by_name(name)


def test_a_removal_past_its_point_of_no_return_is_finished_not_undone(world):  # noqa: F811
    manifest = world.imported("half-removed")
    store = FailingDelete(there=False)
    _deleter(world, store)
    outcome = world.outcome(world.run("deleter", DeleteImage(name="half-removed")))
    assert outcome["type"] == "task.succeeded", outcome
    assert store.restored == [manifest["uuid"]]
    assert _record(world, "half-removed") is None


def test_a_removal_that_changed_nothing_leaves_the_image_ok(world):  # noqa: F811
    world.imported("kept")
    _deleter(world, FailingDelete(there=True))
    outcome = world.outcome(world.run("deleter", DeleteImage(name="kept")))
    assert outcome["type"] == "task.failed"
    assert _record(world, "kept").status == STATUS_OK


def test_a_store_that_cannot_tell_gets_the_command_retried_with_the_image_pending(world):  # noqa: F811
    world.imported("unsure")
    _deleter(world, FailingDelete(there=None))
    with pytest.raises(Transient):  # the broker's consumer redelivers it later
        world.deliver("deleter", world.envelope(DeleteImage(name="unsure")))
    assert _record(world, "unsure").status == STATUS_PENDING  # under the task's lease: resumed when retried
