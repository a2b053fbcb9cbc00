"""Creating an image from a VM disk snapshot (reference §3.6): the checks, in the original's order.

``POST /vm/<hostname_or_uuid>/snapshot/<snapname>/image/<name>/`` is a DC-bound call: the request
datacenter is the ``dc`` parameter or the user's current one. Precedence (reference §5): 403 entry
permission (ImageAdmin in the request DC) -> 404 VM (not in the request DC) -> 423 its node ->
412 ``disk_id`` -> 404 snapshot -> 412 ``order_by`` -> 406 name -> 400 fields -> 428/423 image server
-> 423 VM status -> 417 snapshot status (or the snapshot held by another task). The gateway runs them before it
publishes (so a refused request never becomes a command); the node agent runs them again, in the
transaction that creates the image, as the authority.

The VM and snapshot records are duck-typed (``shared.db.vms``), so this module needs no database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from imagesvc.domain import fields, images, policy
from imagesvc.shared.errors import Invalid, Refused

VM_NOT_FOUND = "VM not found"
SNAPSHOT_NOT_FOUND = "Snapshot not found"
INVALID_DISK_ID = "Invalid disk_id"
VM_NOT_OPERATIONAL = "VM is not operational"
SNAPSHOT_NOT_OK = "VM snapshot status is not OK"

#: The fields a snapshot image takes from the request (``dc_bound`` and ``dc`` are not among them:
#: the image is always bound to the VM's datacenter, reference #265/#277).
SNAPSHOT_FIELDS = ("alias", "version", "owner", "access", "desc", "resize", "deploy", "tags")
DEFAULT_VERSION = "1.0"

#: A snapshot's lease lock (deviations #4) is named this prefix + ``<vm uuid>:<disk id>:<name>``.
SNAPSHOT_LOCK_PREFIX = "snapshot:"


def snapshot_lock_name(vm_uuid: str, disk_id: int, name: str) -> str:
    return f"{SNAPSHOT_LOCK_PREFIX}{vm_uuid}:{disk_id}:{name}"


class Inventory(Protocol):
    """What the checks read: the VM and snapshot inventory, the nodes, the catalogue's names."""

    def vm(self, hostname_or_uuid: str) -> Any: ...

    def node_operational(self, hostname: str) -> bool: ...

    def snapshot(self, vm_uuid: str, disk_id: int, name: str) -> Any: ...

    def snapshot_held_by_another(self, vm_uuid: str, disk_id: int, name: str) -> bool: ...

    def image_name_exists(self, name: str) -> bool: ...

    def image_server_unavailable(self) -> str | None: ...


@dataclass(frozen=True)
class Plan:
    """A request that passed every check: what the image will be."""

    vm: Any
    disk: Any
    snapshot: Any
    values: dict[str, Any]


def parse_disk_id(raw: Any) -> int | None:
    """``disk_id`` as the original accepts it (an integer >= 1, default 1), or None if invalid."""
    if raw is None:
        return 1
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str):
        try:
            raw = fields.integer(raw)
        except fields.FieldError:
            return None
    return raw if isinstance(raw, int) and raw >= 1 else None


def check(inventory: Inventory, *, access: policy.Access, request_dc: str, vm_ref: str, snapname: str, name: str,
          data: Mapping[str, Any], users: images.Users | None = None, order_by_refusal: str | None = None) -> Plan:
    """Run every check of the snapshot-image command in the reference's order; returns the plan
    or raises Refused / Invalid with the original's code and message. With ``users`` a named
    owner must exist (a 400 with the fields); the alias check, which needs the catalogue, is the
    caller's, after this returns. ``order_by_refusal``: the HTTP layer's 412 message for the
    request's ``order_by`` (None when valid or absent), raised at its place in the order."""
    if not access.is_image_admin(request_dc):
        raise Refused(403, images.PERMISSION_DENIED, code="forbidden")
    vm = inventory.vm(vm_ref)
    if vm is None or vm.dc != request_dc:
        raise Refused(404, VM_NOT_FOUND, code="vm_not_found")
    if not inventory.node_operational(vm.node):
        raise Refused(423, images.NODE_NOT_OPERATIONAL, code="node_not_operational")
    disk_id = parse_disk_id(data.get("disk_id"))
    disk = vm.disk(disk_id) if disk_id is not None else None
    if disk is None:
        raise Refused(412, INVALID_DISK_ID, code="invalid_disk_id")
    snapshot = inventory.snapshot(vm.uuid, disk.disk_id, snapname)
    if snapshot is None:
        raise Refused(404, SNAPSHOT_NOT_FOUND, code="snapshot_not_found")
    if order_by_refusal is not None:
        raise Refused(412, order_by_refusal, code="invalid_order_by")
    if inventory.image_name_exists(name):
        raise Refused(406, images.IMAGE_EXISTS, code="image_exists")
    supplied = {k: data[k] for k in SNAPSHOT_FIELDS if k in data}
    values, errors = fields.validate(supplied, SNAPSHOT_FIELDS)
    invalid_name = images.name_errors(name)
    if invalid_name:
        errors["name"] = invalid_name
    if users is not None:
        images.check_owner(users, values, errors)
    if errors:
        raise Invalid(fields.order_errors(errors))
    images.require_image_server(inventory.image_server_unavailable())
    if not vm.operational:
        raise Refused(423, VM_NOT_OPERATIONAL, code="vm_not_operational")
    if not snapshot.ok or inventory.snapshot_held_by_another(vm.uuid, disk.disk_id, snapname):
        raise Refused(417, SNAPSHOT_NOT_OK, code="snapshot_status_not_ok")
    values.setdefault("alias", name)
    values.setdefault("version", DEFAULT_VERSION)
    return Plan(vm=vm, disk=disk, snapshot=snapshot, values=values)
