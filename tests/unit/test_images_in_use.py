"""The deleter refuses an image used by a live VM in one of its attached datacenters (reference
§5: 428 ``Image is used by some VMs``), after 404 and 403 and before the image server's checks."""

from __future__ import annotations

import functools
from datetime import timedelta

from services.deleter.handlers import delete_image
from shared.contracts import AttachImage, DeleteImage
from shared.db import accounts, vms
from shared.db.catalogue import SqlCatalogue
from shared.db.engine import read_transaction, write_transaction
from shared.db.models import utcnow
from shared.handling import CommandConsumer
from shared.store.server import STORE_DOWN
from tests.unit.test_command_handling import world  # noqa: F401 - the fixture

USED = {"detail": "Image is used by some VMs"}
VM = "11111111-2222-4333-8444-555555555501"


def put_vm(world, image_uuid: str, dc: str = "main", *, removed: bool = False) -> None:
    at = utcnow() - timedelta(seconds=5)
    with write_transaction(world.engine) as conn:
        vms.put_vm(conn, vms.VmRecord(uuid=VM, hostname="web01", dc=dc, node="cn1", status="stopped", ostype=1,
                                      disks=(vms.Disk(1, 10240, image_uuid),), changed_at=at))
        if removed:
            vms.remove_vm(conn, VM, at + timedelta(seconds=1))


def result(world, envelope) -> tuple[int, object]:
    outcome = world.outcome(envelope)["payload"]
    return outcome.get("http_code", 200), outcome["result"]


def image_exists(world, name: str) -> bool:
    with read_transaction(world.engine) as conn:
        return SqlCatalogue(conn).image_by_name(name) is not None


def test_a_vm_in_an_attached_datacenter_keeps_the_image(world):  # noqa: F811
    manifest = world.imported("used")
    put_vm(world, manifest["uuid"])
    envelope = world.run("deleter", DeleteImage(name="used"))
    assert result(world, envelope) == (428, USED)
    assert world.outcome(envelope)["payload"]["code"] == "image_used_by_vms"
    assert image_exists(world, "used")


def test_a_vm_elsewhere_or_removed_does_not(world):  # noqa: F811
    with write_transaction(world.engine) as conn:
        accounts.create_datacenter(conn, "far")
    manifest = world.imported("elsewhere")
    put_vm(world, manifest["uuid"], dc="far")
    assert result(world, world.run("deleter", DeleteImage(name="elsewhere")))[0] == 200
    manifest = world.imported("was-used")
    put_vm(world, manifest["uuid"], removed=True)
    assert result(world, world.run("deleter", DeleteImage(name="was-used")))[0] == 200


def test_every_attached_datacenter_counts(world):  # noqa: F811
    with write_transaction(world.engine) as conn:
        accounts.create_datacenter(conn, "second")
    manifest = world.imported("attached")
    world.run("updater", AttachImage(name="attached", dc="second"))
    put_vm(world, manifest["uuid"], dc="second")
    assert result(world, world.run("deleter", DeleteImage(name="attached"))) == (428, USED)


def test_not_found_and_forbidden_come_first(world):  # noqa: F811
    manifest = world.imported("guarded")
    put_vm(world, manifest["uuid"])
    assert result(world, world.run("deleter", DeleteImage(name="missing")))[0] == 404
    assert result(world, world.run("deleter", DeleteImage(name="guarded"), user="bob"))[0] == 403


class DownServer:
    """An image server whose store does not answer."""

    store = None

    def unavailable(self, conn):
        return STORE_DOWN


def test_used_by_vms_comes_before_the_image_servers_428(world):  # noqa: F811
    world.consumers["deleter"] = CommandConsumer(
        name="deleter", engine=world.engine, relay=world.relay,
        routes={"image.delete": functools.partial(delete_image, server=DownServer())})
    manifest = world.imported("served")
    assert result(world, world.run("deleter", DeleteImage(name="served"))) == (
        428, {"detail": "Image server is not available"})
    put_vm(world, manifest["uuid"])
    assert result(world, world.run("deleter", DeleteImage(name="served"))) == (428, USED)
