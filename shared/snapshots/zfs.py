"""Snapshots of ZFS volumes, streamed with ``zfs send`` (what the original's ``esimg create -s``
piped through gzip, reference §9.2).

**Not tested against ZFS here**: the development machines and CI have no ZFS. The unit tests run
this module against a stand-in ``zfs`` script that answers the three calls below the way
``zfs(8)`` documents them; the first use on a real node should be watched.

Calls made (``<name>`` = ``<dataset>@<snapname>``, the dataset from the configured template):

- ``zfs list -H -o name -t snapshot <name>``: does the snapshot exist (exit status 1 and
  "does not exist" on stderr when not);
- ``zfs send -nP <name>``: a dry run whose ``size`` line estimates the stream's bytes;
- ``zfs send <name>``: the stream itself, read from its stdout; its exit status is checked at the
  end of the stream, so a ``zfs send`` that dies midway fails the export instead of ending it.

The dataset template takes ``{vm_uuid}``, ``{disk_id}`` (from 1, as the API's) and
``{disk_index}`` (from 0, as SmartOS names KVM volumes): the default
``zones/{vm_uuid}-disk{disk_index}`` is a KVM VM's volume on SmartOS / Danube Cloud.
"""

from __future__ import annotations

import subprocess
import tempfile
from typing import BinaryIO

from imagesvc.shared.logging import get_logger
from imagesvc.shared.snapshots.base import SnapshotError, SnapshotMissing, check_snapshot_ref

log = get_logger(__name__)

DEFAULT_DATASET_TEMPLATE = "zones/{vm_uuid}-disk{disk_index}"
#: Seconds a metadata call (``list``, ``send -nP``) may take.
_METADATA_TIMEOUT = 60.0


def check_dataset_template(template: str) -> None:
    """Raise ValueError unless ``template`` formats with the known placeholders into a dataset name."""
    try:
        sample = template.format(vm_uuid="00000000-0000-0000-0000-000000000000", disk_id=1, disk_index=0)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{template!r}: use only {{vm_uuid}}, {{disk_id}} and {{disk_index}} ({exc})") from None
    if not sample or "@" in sample or sample.startswith(("/", "-")) or any(c.isspace() for c in sample):
        raise ValueError(f"{template!r} does not name a ZFS dataset")


class _SendStream:
    """``zfs send``'s stdout; ``read`` raises SnapshotError at the end if ``zfs send`` failed."""

    def __init__(self, process: subprocess.Popen, errors: BinaryIO, name: str):
        self._process = process
        self._errors = errors
        self._name = name

    def read(self, size: int = -1) -> bytes:
        assert self._process.stdout is not None
        data = self._process.stdout.read(size)
        if not data:
            returncode = self._process.wait()
            if returncode != 0:
                self._errors.seek(0)
                message = self._errors.read(2000).decode(errors="replace").strip()
                if "does not exist" in message:
                    raise SnapshotMissing(f"{self._name}: {message}")
                raise SnapshotError(f"zfs send {self._name} failed ({returncode}): {message}")
        return data

    def close(self) -> None:
        if self._process.poll() is None:  # abandoned midway: stop zfs send
            self._process.kill()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._process.wait()
        self._errors.close()

    def __enter__(self) -> "_SendStream":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class ZfsSnapshotDriver:
    def __init__(self, *, command: str = "zfs", dataset_template: str = DEFAULT_DATASET_TEMPLATE):
        check_dataset_template(dataset_template)
        self.command = command
        self.dataset_template = dataset_template
        self.location = f"zfs ({dataset_template})"

    def snapshot_name(self, vm_uuid: str, disk_id: int, snapname: str) -> str:
        vm_uuid, disk_id, snapname = check_snapshot_ref(vm_uuid, disk_id, snapname)
        dataset = self.dataset_template.format(vm_uuid=vm_uuid, disk_id=disk_id, disk_index=disk_id - 1)
        return f"{dataset}@{snapname}"

    def _metadata(self, *arguments: str, name: str) -> str:
        try:
            done = subprocess.run([self.command, *arguments, name], capture_output=True, timeout=_METADATA_TIMEOUT,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SnapshotError(f"cannot run {self.command} {arguments[0]}: {exc}") from None
        stderr = done.stderr.decode(errors="replace").strip()
        if done.returncode != 0:
            if "does not exist" in stderr:
                raise SnapshotMissing(f"{name}: {stderr}")
            raise SnapshotError(f"{self.command} {arguments[0]} {name} failed ({done.returncode}): {stderr}")
        return done.stdout.decode(errors="replace")

    def snapshot_size(self, vm_uuid: str, disk_id: int, snapname: str) -> int | None:
        name = self.snapshot_name(vm_uuid, disk_id, snapname)
        output = self._metadata("send", "-nP", name=name)
        for line in output.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0] == "size" and fields[1].isdigit():
                return int(fields[1])
        log.warning("zfs.size_unknown", snapshot=name, output=output[:200])
        return None

    def open_snapshot(self, vm_uuid: str, disk_id: int, snapname: str) -> BinaryIO:
        name = self.snapshot_name(vm_uuid, disk_id, snapname)
        self._metadata("list", "-H", "-o", "name", "-t", "snapshot", name=name)
        errors = tempfile.TemporaryFile()  # a file, not a pipe: nobody reads stderr while streaming
        try:
            process = subprocess.Popen([self.command, "send", name], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=errors, bufsize=1 << 20)
        except OSError as exc:
            errors.close()
            raise SnapshotError(f"cannot run {self.command} send: {exc}") from None
        return _SendStream(process, errors, name)  # type: ignore[return-value]
