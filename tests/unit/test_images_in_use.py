"""The deleter refuses an image used by a live VM in one of its attached datacenters (reference
§5: 428 ``Image is used by some VMs``), after 404 and 403 and before the image server's checks."""

from __future__ import annotations

import functools
from datetime import timedelta

from imagesvc.services.deleter.handlers import delete_image
from imagesvc.shared.contracts import AttachImage, DeleteImage, DetachImage
from imagesvc.shared.db import accounts, vms
from imagesvc.shared.db.catalogue import SqlCatalogue
from imagesvc.shared.db.engine import read_transaction, write_transaction
from imagesvc.shared.db.models import utcnow
from imagesvc.shared.handling import CommandConsumer
from imagesvc.shared.store.server import STORE_DOWN
from tests.unit.test_command_handling import world  # noqa: F401 - the fixture

USED = {"detail": "Image is used by some VMs"}
VM = "11111111-2222-4333-8444-555555555501"


def put_vm(world, image_uuid: str, dc: str = "main", *, removed: bool = False, replica_of: str | None = None) -> None:
    at = utcnow() - timedelta(seconds=5)
    with write_transaction(world.engine) as conn:
        vms.put_vm(conn, vms.VmRecord(uuid=VM, hostname="web01", dc=dc, node="cn1", status="stopped", ostype=1,
                                      disks=(vms.Disk(1, 10240, image_uuid),), changed_at=at, replica_of=replica_of))
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


def test_a_replica_keeps_the_image_in_use_but_is_not_listed(world):  # noqa: F811
    """Reference §3.7, §2.1: a replica's disks hold the image (the in-use checks count it); the
    list of the image's VMs leaves it out."""
    manifest = world.imported("replicated")
    put_vm(world, manifest["uuid"], replica_of="11111111-2222-4333-8444-555555555599")
    with read_transaction(world.engine) as conn:
        assert [vm.hostname for vm in vms.vms_using_image(conn, manifest["uuid"], ["main"])] == ["web01"]
        assert vms.vms_using_image(conn, manifest["uuid"], ["main"], replicas=False) == []
    assert result(world, world.run("deleter", DeleteImage(name="replicated"))) == (428, USED)


def test_a_detach_is_refused_while_a_vm_of_that_datacenter_uses_the_image(world):  # noqa: F811
    """Reference §3.8: DELETE /dc/<dc>/image/<name>/ answers 428 and detaches nothing; a VM of
    another datacenter the image is attached to does not count."""
    with write_transaction(world.engine) as conn:
        accounts.create_datacenter(conn, "third")
    manifest = world.imported("detached")
    world.run("updater", AttachImage(name="detached", dc="third"))
    put_vm(world, manifest["uuid"], dc="third")
    assert result(world, world.run("updater", DetachImage(name="detached", dc="third"))) == (428, USED)
    with read_transaction(world.engine) as conn:
        assert "third" in SqlCatalogue(conn).image_by_name("detached").dcs
    assert result(world, world.run("updater", DetachImage(name="detached", dc="main")))[0] == 200
