"""Every PUT on a system with an image server runs the image server's checks (reference §13.27,
the PUT chain of §5): a change of database-only fields (owner) too, though nothing is sent to the
server. 428 while its store is down, 423 while its node is not online; nothing changes."""

from __future__ import annotations

import functools

import pytest

from imagesvc.services.updater.handlers import update_image
from imagesvc.shared.contracts import UpdateImage
from imagesvc.shared.db.catalogue import SqlCatalogue
from imagesvc.shared.db.engine import read_transaction
from imagesvc.shared.handling import CommandConsumer
from imagesvc.shared.store.server import NODE_DOWN, STORE_DOWN
from tests.unit.test_command_handling import world  # noqa: F401 - the fixture


class Server:
    """An image server that says why it cannot take a command (None: it can)."""

    store = None

    def __init__(self, why: str | None):
        self.why = why

    def unavailable(self, conn):
        return self.why


def with_server(world, why):  # noqa: F811
    world.consumers["updater"] = CommandConsumer(
        name="updater", engine=world.engine, relay=world.relay,
        routes={"image.update": functools.partial(update_image, server=Server(why))})


def answer(world, command) -> tuple[int, object]:  # noqa: F811
    payload = world.outcome(world.run("updater", command))["payload"]
    return payload.get("http_code", 200), payload["result"]


def owner_of(world, name: str) -> str:  # noqa: F811
    with read_transaction(world.engine) as conn:
        return SqlCatalogue(conn).image_by_name(name).owner


@pytest.mark.parametrize("why, expected", [
    (STORE_DOWN, (428, {"detail": "Image server is not available"})),
    (NODE_DOWN, (423, {"detail": "Node is not operational"})),
])
def test_an_owner_only_put_is_refused_while_the_image_server_cannot_take_it(world, why, expected):  # noqa: F811
    world.imported("owned")
    with_server(world, why)
    assert answer(world, UpdateImage(name="owned", owner="bob")) == expected
    assert answer(world, UpdateImage(name="owned")) == expected  # a PUT that changes nothing, too
    assert owner_of(world, "owned") == "root"


def test_an_owner_only_put_changes_the_owner_when_the_image_server_is_up(world):  # noqa: F811
    world.imported("owned")
    with_server(world, None)
    code, result = answer(world, UpdateImage(name="owned", owner="bob"))
    assert (code, result["owner"]) == (200, "bob")
    assert owner_of(world, "owned") == "bob"


def test_validation_comes_before_the_image_servers_checks(world):  # noqa: F811
    world.imported("owned")
    with_server(world, STORE_DOWN)
    code, result = answer(world, UpdateImage(name="owned", owner="nobody-at-all"))
    assert code == 400 and "owner" in result
