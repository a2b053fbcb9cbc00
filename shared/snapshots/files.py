"""Snapshots as read-only files in a directory: the driver for tests, the embedded mode and nodes
whose VM disks are plain files.

Layout::

    <dir>/<vm uuid>/disk-<disk id>              the VM's disk (a raw image file; disk ids from 1)
    <dir>/<vm uuid>/disk-<disk id>@<snapname>   a snapshot: a read-only (0444) copy of the disk

A snapshot is taken by copying the disk file under a temporary name and linking it into place
(``take_snapshot``, or by hand, with the VM's disk quiet)::

    cd <dir>/<vm uuid> && cp --reflink=auto disk-1 .disk-1@snap1.tmp && chmod 0444 .disk-1@snap1.tmp \\
        && ln .disk-1@snap1.tmp disk-1@snap1 && rm .disk-1@snap1.tmp

(``ln`` refuses to replace an existing snapshot; on a filesystem with reflinks, such as XFS or
Btrfs, the copy shares the disk's blocks and takes no time.)
"""

from __future__ import annotations

import os
import shutil
import uuid as uuidlib
from typing import BinaryIO

from imagesvc.shared.snapshots.base import SnapshotError, SnapshotMissing, check_snapshot_ref


class FileSnapshotDriver:
    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.location = self.directory

    def disk_path(self, vm_uuid: str, disk_id: int) -> str:
        vm_uuid, disk_id, _ = check_snapshot_ref(vm_uuid, disk_id, "x")
        return os.path.join(self.directory, vm_uuid, f"disk-{disk_id}")

    def snapshot_path(self, vm_uuid: str, disk_id: int, snapname: str) -> str:
        vm_uuid, disk_id, snapname = check_snapshot_ref(vm_uuid, disk_id, snapname)
        return os.path.join(self.directory, vm_uuid, f"disk-{disk_id}@{snapname}")

    def snapshot_size(self, vm_uuid: str, disk_id: int, snapname: str) -> int | None:
        path = self.snapshot_path(vm_uuid, disk_id, snapname)
        try:
            stats = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise SnapshotMissing(f"snapshot {snapname} of disk {disk_id} of VM {vm_uuid} does not exist") from None
        except OSError as exc:
            raise SnapshotError(f"cannot read snapshot {path}: {exc.strerror or exc}") from None
        if not os.path.isfile(path):
            raise SnapshotError(f"snapshot {path} is not a file")
        return stats.st_size

    def open_snapshot(self, vm_uuid: str, disk_id: int, snapname: str) -> BinaryIO:
        path = self.snapshot_path(vm_uuid, disk_id, snapname)
        try:
            handle = open(path, "rb", buffering=0)
        except (FileNotFoundError, NotADirectoryError):
            raise SnapshotMissing(f"snapshot {snapname} of disk {disk_id} of VM {vm_uuid} does not exist") from None
        except OSError as exc:  # a directory, no permission
            raise SnapshotError(f"cannot read snapshot {path}: {exc.strerror or exc}") from None
        # The export reads it once, front to back: let the kernel read ahead generously.
        try:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (AttributeError, OSError):
            pass
        return handle  # type: ignore[return-value]


def take_snapshot(directory: str, vm_uuid: str, disk_id: int, snapname: str) -> str:
    """Snapshot ``<directory>/<vm uuid>/disk-<disk id>`` as ``...@<snapname>`` (see the module
    docstring); returns the snapshot's path. The snapshot appears whole or not at all. Raises
    SnapshotError with code ``disk_missing`` when there is no such disk and ``snapshot_exists``
    when the snapshot is already taken (it is never replaced)."""
    driver = FileSnapshotDriver(directory)
    disk = driver.disk_path(vm_uuid, disk_id)
    target = driver.snapshot_path(vm_uuid, disk_id, snapname)
    temporary = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{uuidlib.uuid4().hex}.tmp")
    try:
        shutil.copyfile(disk, temporary)
    except FileNotFoundError:
        raise SnapshotError(f"VM {vm_uuid} has no disk {disk_id} ({disk})", "disk_missing") from None
    try:
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o444)
        os.link(temporary, target)  # unlike a rename, never replaces an existing snapshot
    except FileExistsError:
        raise SnapshotError(f"snapshot {target} already exists", "snapshot_exists") from None
    finally:
        os.unlink(temporary)
    return target
