"""What every snapshot driver offers (see ``shared.snapshots`` for the contract)."""

from __future__ import annotations

import re
import uuid as uuidlib
from typing import BinaryIO, Protocol

#: A snapshot name as it may reach a driver: it becomes part of a file name or a ZFS snapshot
#: name, so it can never hold a separator, ``@`` or start with a dot.
_SNAPNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
#: Disks are numbered from 1, as the API's ``disk_id`` (reference §3.6).
MAX_DISK_ID = 1024


class SnapshotError(Exception):
    """A snapshot cannot be read; ``code`` is the stable machine-readable reason."""

    def __init__(self, message: str, code: str = "snapshot_read_failed"):
        super().__init__(message)
        self.code = code


class SnapshotMissing(SnapshotError):
    """The VM disk has no snapshot of that name (reference: esimg's return code 5)."""

    def __init__(self, message: str):
        super().__init__(message, "snapshot_missing")


class InvalidSnapshotRef(SnapshotError, ValueError):
    """A VM uuid, disk id or snapshot name that could never name a snapshot."""

    def __init__(self, message: str):
        super().__init__(message, "invalid_snapshot_ref")


def check_snapshot_ref(vm_uuid: str, disk_id: int, snapname: str) -> tuple[str, int, str]:
    """The reference in canonical form (lower-case uuid); raises InvalidSnapshotRef otherwise.
    Every driver calls it first: nothing from a message reaches a path or a command line unchecked."""
    try:
        canonical = str(uuidlib.UUID(str(vm_uuid)))
    except (ValueError, AttributeError, TypeError):
        raise InvalidSnapshotRef(f"not a VM uuid: {vm_uuid!r}") from None
    if canonical != str(vm_uuid).lower():
        raise InvalidSnapshotRef(f"not a canonical VM uuid: {vm_uuid!r}")
    if isinstance(disk_id, bool) or not isinstance(disk_id, int) or not 1 <= disk_id <= MAX_DISK_ID:
        raise InvalidSnapshotRef(f"disk_id must be an integer from 1 to {MAX_DISK_ID}: {disk_id!r}")
    if not isinstance(snapname, str) or not _SNAPNAME.match(snapname):
        raise InvalidSnapshotRef(f"snapshot name must be 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or "
                                 f"digit: {snapname!r}")
    return canonical, disk_id, snapname


class SnapshotDriver(Protocol):
    #: For logs and messages: where the snapshots are (a directory, ``zfs``).
    location: str

    def snapshot_size(self, vm_uuid: str, disk_id: int, snapname: str) -> int | None:
        """Bytes that ``open_snapshot`` will stream (exact or an estimate), or None when the driver
        cannot tell. Raises SnapshotMissing when there is no such snapshot."""

    def open_snapshot(self, vm_uuid: str, disk_id: int, snapname: str) -> BinaryIO:
        """The raw bytes of the disk snapshot as a stream to ``read(n)`` and ``close()``.

        Raises SnapshotMissing when there is no such snapshot. ``read`` returns ``b""`` only once
        the whole snapshot was read; a stream that cannot be read to its end raises SnapshotError
        (or OSError) instead, so a truncated snapshot is never taken for a complete one."""
