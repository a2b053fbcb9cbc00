"""Events: facts in the past tense, published on the events exchange for any number of listeners.

Image events carry the image's full new state and its stream version (1, 2, 3, ... per image
uuid, never reused, not even after a delete and re-import), so a subscriber can order and
deduplicate them without asking anyone. Task events tell how a command ended; a task's terminal
event names the image stream version it produced (``stream``/``stream_version``), so a reader can
wait for that image state before it trusts the task's outcome.

Node events come from other systems (whatever watches the compute nodes): the state of a node as
its source saw it at ``changed_at``. They have no stream position; readers keep the newest
``changed_at`` per hostname instead. VM and VM snapshot events (from the compute management
system) work the same way, keyed by the VM's uuid and by (VM uuid, disk id, snapshot name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar

from imagesvc.shared.contracts.base import UNSET, Message
from imagesvc.shared.errors import PoisonMessage


class Event(Message):
    KIND: ClassVar[str] = "event"

    def stream_position(self) -> tuple[str, int] | None:
        """(stream id, version) for versioned aggregate events; None for the others."""
        return None


def image_stream(uuid: str) -> str:
    return f"image:{uuid}"


@dataclass(frozen=True, kw_only=True)
class ImageImported(Event):
    TYPE: ClassVar[str] = "image.imported"
    image: dict[str, Any]
    version: int

    def stream_position(self) -> tuple[str, int]:
        return image_stream(self.image["uuid"]), self.version


@dataclass(frozen=True, kw_only=True)
class ImageUpdated(Event):
    """``previous_dc_bound``: present only when the change moved the image to another datacenter
    or out of one (``dc_bound`` changed): the datacenter it was bound to (null: it was global)."""

    TYPE: ClassVar[str] = "image.updated"
    image: dict[str, Any]
    version: int
    changed: list[str]
    previous_dc_bound: str | None = UNSET

    def stream_position(self) -> tuple[str, int]:
        return image_stream(self.image["uuid"]), self.version


@dataclass(frozen=True, kw_only=True)
class ImageDeleted(Event):
    """``dc_bound``: the datacenter the image was bound to (null: global); absent from events
    stored before it was added."""

    TYPE: ClassVar[str] = "image.deleted"
    uuid: str
    name: str
    version: int
    dc_bound: str | None = UNSET

    def stream_position(self) -> tuple[str, int]:
        return image_stream(self.uuid), self.version


@dataclass(frozen=True, kw_only=True)
class TaskEvent(Event):
    """Common fields of the task events. ``dc``/``owner`` place the task (task log, permissions)."""

    task_id: str
    command: str
    object_name: str
    user: str | None = None
    owner: str | None = None
    dc: str | None = None
    stream: str | None = None
    stream_version: int | None = None


@dataclass(frozen=True, kw_only=True)
class TaskStarted(TaskEvent):
    """The consumer accepted long-running work; the gateway answers 201 PENDING."""

    TYPE: ClassVar[str] = "task.started"


@dataclass(frozen=True, kw_only=True)
class TaskProgress(TaskEvent):
    """A running task's progress (an import's bytes transferred), a few per second at most.
    ``total`` is None when unknown. Only informative: readers may drop any of them."""

    TYPE: ClassVar[str] = "task.progress"
    done: int
    total: int | None = None


@dataclass(frozen=True, kw_only=True)
class TaskSucceeded(TaskEvent):
    TYPE: ClassVar[str] = "task.succeeded"
    http_code: int = 200
    result: Any = None


@dataclass(frozen=True, kw_only=True)
class TaskFailed(TaskEvent):
    """``http_code`` and ``result`` are what the original API answers; ``code`` is machine-readable."""

    TYPE: ClassVar[str] = "task.failed"
    http_code: int
    result: Any
    code: str


TERMINAL_TASK_EVENTS = frozenset({TaskSucceeded.TYPE, TaskFailed.TYPE})


# --- compute nodes ------------------------------------------------------------------------------

#: Storable lengths of a node's fields (the ``nodes`` table's columns).
NODE_HOSTNAME_MAX = 255
NODE_STATUS_MAX = 32
NODE_ADDRESS_MAX = 255

_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
# Statuses are stored as given (an unknown one is simply not operational), but must be a word.
_STATUS = re.compile(r"[A-Za-z0-9._-]+\Z")
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\Z")
_ADDRESS = re.compile(r"[^\s\x00]+\Z")


def node_hostname_problem(hostname: object) -> str | None:
    """Why ``hostname`` cannot name a node, or None."""
    if not isinstance(hostname, str) or not hostname:
        return "hostname must be a non-empty string"
    if len(hostname) > NODE_HOSTNAME_MAX:
        return f"hostname must be at most {NODE_HOSTNAME_MAX} characters"
    if not _HOSTNAME.match(hostname):
        return "hostname may hold letters, digits and . _ - only, starting with a letter or digit"
    return None


def node_problem(*, hostname: object, status: object, uuid: object = None, address: object = None) -> str | None:
    """Why these node fields could not be stored, or None. The one rule for events and the CLI."""
    problem = node_hostname_problem(hostname)
    if problem:
        return problem
    if not isinstance(status, str) or not status:
        return "status must be a non-empty string"
    if len(status) > NODE_STATUS_MAX or not _STATUS.match(status):
        return f"status must be at most {NODE_STATUS_MAX} letters, digits and . _ -"
    if uuid is not None and (not isinstance(uuid, str) or not _UUID.match(uuid)):
        return "uuid must be null or a UUID (8-4-4-4-12 hexadecimal digits)"
    if address is not None and (not isinstance(address, str) or len(address) > NODE_ADDRESS_MAX
                                or not _ADDRESS.match(address)):
        return f"address must be null or at most {NODE_ADDRESS_MAX} characters without spaces"
    return None


def parse_node_time(value: object) -> datetime:
    """An ISO-8601 timestamp with its timezone (``Z`` or an offset) as an aware UTC datetime.

    Raises ValueError otherwise: a time without a zone cannot be ordered against other sources'.
    """
    if not isinstance(value, str):
        raise ValueError("changed_at must be an ISO-8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"changed_at {value[:64]!r} is not an ISO-8601 timestamp") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"changed_at {value[:64]!r} has no timezone")
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:  # the first or last day of year 1 or 9999, shifted out of range
        raise ValueError(f"changed_at {value[:64]!r} is out of range") from None


class SourceTimed:
    """An inventory fact: ``changed_at`` is when it was true at its source (validated on parse)."""

    changed_at: str

    @property
    def changed_time(self) -> datetime:
        return parse_node_time(self.changed_at)


@dataclass(frozen=True, kw_only=True)
class NodeUpdated(SourceTimed, Event):
    """A compute node's whole state as its source saw it at ``changed_at`` (an absent ``uuid`` or
    ``address`` is unknown, and stored as null). Raises PoisonMessage for fields that could not be
    stored."""

    TYPE: ClassVar[str] = "node.updated"
    hostname: str
    status: str
    changed_at: str
    uuid: str | None = UNSET
    address: str | None = UNSET

    def __post_init__(self) -> None:
        _refuse(self.TYPE, node_problem(hostname=self.hostname, status=self.status, uuid=_given(self.uuid),
                                        address=_given(self.address)) or _time_problem(self.changed_at))


@dataclass(frozen=True, kw_only=True)
class NodeRemoved(SourceTimed, Event):
    """A compute node left the inventory at ``changed_at``. Raises PoisonMessage for a hostname that
    could not be stored or an unreadable time."""

    TYPE: ClassVar[str] = "node.removed"
    hostname: str
    changed_at: str

    def __post_init__(self) -> None:
        _refuse(self.TYPE, node_hostname_problem(self.hostname) or _time_problem(self.changed_at))


def _given(value: Any) -> Any:
    return None if value is UNSET else value


def _time_problem(changed_at: object) -> str | None:
    try:
        parse_node_time(changed_at)
    except ValueError as exc:
        return str(exc)
    return None


def _refuse(event_type: str, problem: str | None) -> None:
    if problem is not None:
        raise PoisonMessage(f"{event_type}: {problem}")


# --- VMs and their disk snapshots ----------------------------------------------------------------

#: Storable lengths of a VM's and a snapshot's fields (the ``vms`` / ``vm_snapshots`` columns).
VM_DC_MAX = 16
VM_STATUS_MAX = 32
SNAPSHOT_NAME_MAX = 64
#: Most disks a VM fact may list (a VM's row and every answer listing it carry them all).
VM_DISKS_MAX = 64
#: Danube Cloud's ostypes: LINUX=1, SUNOS=2, BSD=3, WINDOWS=4, SUNOS_ZONE=5, LINUX_ZONE=6.
VM_OSTYPES = range(1, 7)

_SNAPSHOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


def is_uuid(value: object) -> bool:
    """A canonical UUID (8-4-4-4-12 hexadecimal digits, either case)."""
    return isinstance(value, str) and _UUID.match(value) is not None


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def vm_uuid_problem(uuid: object, field: str = "uuid") -> str | None:
    return None if is_uuid(uuid) else f"{field} must be a UUID (8-4-4-4-12 hexadecimal digits)"


def vm_hostname_problem(hostname: object) -> str | None:
    """Why ``hostname`` cannot name a VM, or None. A UUID is refused: ``get_vm`` reads a UUID as
    the VM's uuid, so a VM so named could never be found by its hostname."""
    problem = node_hostname_problem(hostname)
    if problem is None and is_uuid(hostname):
        return "hostname must not be a UUID"
    return problem


def disk_problem(disk_id: object, size: object, image_uuid: object) -> str | None:
    """Why these disk fields could not be stored, or None."""
    if not _int(disk_id) or disk_id < 1:  # type: ignore[operator]
        return "disk_id must be an integer of at least 1"
    if not _int(size) or size < 0:  # type: ignore[operator]
        return f"disk {disk_id}: size must be a non-negative integer (MiB)"
    if image_uuid is not None and not is_uuid(image_uuid):
        return f"disk {disk_id}: image_uuid must be null or a UUID"
    return None


def vm_problem(*, uuid: object, hostname: object, dc: object, node: object, status: object, ostype: object,
               disks: object, replica_of: object = None) -> str | None:
    """Why these VM fields could not be stored, or None. The one rule for events and the CLI.
    ``disks``: a list of ``(disk_id, size, image_uuid)`` triples."""
    problem = vm_uuid_problem(uuid) or vm_hostname_problem(hostname)
    if problem:
        return problem
    if replica_of is not None:
        problem = vm_uuid_problem(replica_of, "replica_of")
        if problem:
            return problem
        if str(replica_of).lower() == str(uuid).lower():
            return "replica_of must name another VM"
    if not isinstance(dc, str) or not dc or len(dc) > VM_DC_MAX:
        return f"dc must be a datacenter name of 1 to {VM_DC_MAX} characters"
    problem = node_hostname_problem(node)
    if problem:
        return "node: " + problem
    problem = status_problem(status)
    if problem:
        return problem
    if not _int(ostype) or ostype not in VM_OSTYPES:
        return f"ostype must be an integer from {VM_OSTYPES.start} to {VM_OSTYPES.stop - 1}"
    if not isinstance(disks, (list, tuple)):
        return "disks must be a list"
    if len(disks) > VM_DISKS_MAX:
        return f"disks must list at most {VM_DISKS_MAX} disks"
    seen: set[object] = set()
    for disk in disks:
        problem = disk_problem(*disk)
        if problem:
            return problem
        if disk[0] in seen:
            return f"disk_id {disk[0]} is given twice"
        seen.add(disk[0])
    return None


def snapshot_key_problem(vm_uuid: object, disk_id: object, name: object) -> str | None:
    """Why this key cannot name a VM disk snapshot, or None."""
    problem = vm_uuid_problem(vm_uuid, "vm_uuid")
    if problem:
        return problem
    if not _int(disk_id) or disk_id < 1:  # type: ignore[operator]
        return "disk_id must be an integer of at least 1"
    return snapshot_name_problem(name)


def snapshot_name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not name or len(name) > SNAPSHOT_NAME_MAX or not _SNAPSHOT_NAME.match(name):
        return (f"name must be 1 to {SNAPSHOT_NAME_MAX} letters, digits and . _ -, "
                "starting with a letter or digit")
    return None


def snapshot_problem(*, vm_uuid: object, disk_id: object, name: object, status: object) -> str | None:
    return snapshot_key_problem(vm_uuid, disk_id, name) or status_problem(status)


def status_problem(status: object) -> str | None:
    if not isinstance(status, str) or not status:
        return "status must be a non-empty string"
    if len(status) > VM_STATUS_MAX or not _STATUS.match(status):
        return f"status must be at most {VM_STATUS_MAX} letters, digits and . _ -"
    return None


def _disk_triples(disks: object) -> object:
    """The wire's disk objects as ``(disk_id, size, image_uuid)`` triples (anything else as is,
    for ``vm_problem`` to name)."""
    if not isinstance(disks, list):
        return disks
    triples = []
    for disk in disks:
        if not isinstance(disk, dict) or "disk_id" not in disk or "size" not in disk:
            return "disks must be objects with disk_id and size (and optionally image_uuid)"
        triples.append((disk["disk_id"], disk["size"], disk.get("image_uuid")))
    return triples


@dataclass(frozen=True, kw_only=True)
class VmUpdated(SourceTimed, Event):
    """A VM's whole state as its source saw it at ``changed_at``: where it runs (``dc``, ``node``),
    its ``status`` and its ``disks`` (``[{"disk_id", "size" (MiB), "image_uuid" (null: no image)}]``).
    Raises PoisonMessage for fields that could not be stored."""

    TYPE: ClassVar[str] = "vm.updated"
    uuid: str
    hostname: str
    dc: str
    node: str
    status: str
    ostype: int
    disks: list[dict[str, Any]]
    changed_at: str
    #: The uuid of the VM this one is a replica of (a standby copy kept in sync with it on
    #: another node); absent or null for an ordinary VM. A replica's disks count for an image in
    #: use, but ``GET /api/image/<name>/vm/`` leaves it out (reference §3.7).
    replica_of: str | None = None

    def __post_init__(self) -> None:
        triples = _disk_triples(self.disks)
        if isinstance(triples, str):
            _refuse(self.TYPE, triples)
        _refuse(self.TYPE, vm_problem(uuid=self.uuid, hostname=self.hostname, dc=self.dc, node=self.node,
                                      status=self.status, ostype=self.ostype, disks=triples,
                                      replica_of=self.replica_of)
                or _time_problem(self.changed_at))


@dataclass(frozen=True, kw_only=True)
class VmRemoved(SourceTimed, Event):
    """A VM left the inventory at ``changed_at`` (its snapshots with it). Raises PoisonMessage for
    a uuid that is not one or an unreadable time."""

    TYPE: ClassVar[str] = "vm.removed"
    uuid: str
    changed_at: str

    def __post_init__(self) -> None:
        _refuse(self.TYPE, vm_uuid_problem(self.uuid) or _time_problem(self.changed_at))


@dataclass(frozen=True, kw_only=True)
class VmSnapshotUpdated(SourceTimed, Event):
    """A VM disk snapshot's state at ``changed_at`` (``ok`` is the usable one). Raises
    PoisonMessage for fields that could not be stored."""

    TYPE: ClassVar[str] = "vm.snapshot.updated"
    vm_uuid: str
    disk_id: int
    name: str
    status: str
    changed_at: str

    def __post_init__(self) -> None:
        _refuse(self.TYPE, snapshot_problem(vm_uuid=self.vm_uuid, disk_id=self.disk_id, name=self.name,
                                            status=self.status) or _time_problem(self.changed_at))


@dataclass(frozen=True, kw_only=True)
class VmSnapshotRemoved(SourceTimed, Event):
    """A VM disk snapshot was deleted at ``changed_at``. Raises PoisonMessage for a key that could
    not be stored or an unreadable time."""

    TYPE: ClassVar[str] = "vm.snapshot.removed"
    vm_uuid: str
    disk_id: int
    name: str
    changed_at: str

    def __post_init__(self) -> None:
        _refuse(self.TYPE, snapshot_key_problem(self.vm_uuid, self.disk_id, self.name)
                or _time_problem(self.changed_at))
