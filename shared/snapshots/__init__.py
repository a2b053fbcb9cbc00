"""Snapshot drivers: how a node agent reads a VM disk's snapshot (``SnapshotDriver``).

``open_driver`` builds the one a node agent is configured with (``IMAGESVC_SNAPSHOT_DRIVER``):

- ``file`` (``files.FileSnapshotDriver``): snapshots as read-only files under
  ``IMAGESVC_SNAPSHOT_DIR``, ``<dir>/<vm uuid>/disk-<id>@<snapname>``; tested here;
- ``zfs`` (``zfs.ZfsSnapshotDriver``): ``zfs send <dataset>@<snapname>`` (dataset from
  ``IMAGESVC_ZFS_DATASET``, the command from ``IMAGESVC_ZFS_COMMAND``); **not tested against
  ZFS here** (only against a stand-in script).

Contract of every driver: ``snapshot_size`` and ``open_snapshot`` raise ``SnapshotMissing`` for
a snapshot that does not exist and ``InvalidSnapshotRef`` for a reference that could not name
one; ``open_snapshot`` streams the snapshot's raw bytes (never buffering it whole), and its
``read`` returns ``b""`` only after the last byte: an incomplete read raises.
"""

from __future__ import annotations

from imagesvc.shared.snapshots.base import (InvalidSnapshotRef, SnapshotDriver, SnapshotError, SnapshotMissing,
                                   check_snapshot_ref)
from imagesvc.shared.snapshots.files import FileSnapshotDriver, take_snapshot
from imagesvc.shared.snapshots.zfs import DEFAULT_DATASET_TEMPLATE, ZfsSnapshotDriver, check_dataset_template

DRIVERS = ("file", "zfs")


def open_driver(kind: str, *, directory: str = "", zfs_command: str = "zfs",
                zfs_dataset: str = DEFAULT_DATASET_TEMPLATE) -> SnapshotDriver:
    """The driver named by ``kind`` (one of ``DRIVERS``). Raises ValueError for an unknown kind,
    a ``file`` driver without a directory or a malformed dataset template."""
    if kind == "file":
        if not directory:
            raise ValueError("the file snapshot driver needs a directory (IMAGESVC_SNAPSHOT_DIR)")
        return FileSnapshotDriver(directory)
    if kind == "zfs":
        return ZfsSnapshotDriver(command=zfs_command, dataset_template=zfs_dataset)
    raise ValueError(f"unknown snapshot driver {kind!r}: use one of {', '.join(DRIVERS)}")


__all__ = ["DEFAULT_DATASET_TEMPLATE", "DRIVERS", "FileSnapshotDriver", "InvalidSnapshotRef", "SnapshotDriver",
           "SnapshotError", "SnapshotMissing", "ZfsSnapshotDriver", "check_dataset_template", "check_snapshot_ref",
           "open_driver", "take_snapshot"]
