"""Exporting a VM disk snapshot into the image store as an image file (``esimg create -s``,
reference §9.2): the snapshot streamed through gzip into the store, its sha1 and size taken from
the compressed bytes as they are written, published whole or not at all.

The file goes through the store's ``Upload`` like an import's: into a local store's partial file,
or straight into an S3 store as a multipart upload (parts sent as they fill, nothing visible
before the commit, the upload aborted on failure); nothing is staged on the node's disk.

Threads: the calling thread reads the snapshot and compresses it (zlib releases the GIL while it
deflates); a ``ChunkWorker`` hashes and writes the compressed chunks (hashlib and ``os.write``
release it too), so the two overlap on two cores. Memory is bounded whatever the snapshot's size:
one ``READ_CHUNK`` being compressed, zlib's own state (under 300 KiB at level 9) and at most
``QUEUE_CHUNKS`` compressed chunks waiting to be written.

The gzip level (``IMAGESVC_SNAPSHOT_GZIP_LEVEL``) defaults to 6, not esimg's 9: on disk-like data
(random, zero and text blocks, bench/export_snapshot.py) level 9 took 75 % more CPU for a file
0.25 % smaller, and the export holds the VM's snapshot and the image PENDING while it runs. Every
level writes the same format (``compression: "gzip"``); set 9 to spend the CPU for the last bytes.
"""

from __future__ import annotations

import errno
import hashlib
import time
import zlib
from dataclasses import dataclass
from typing import Any

from imagesvc.domain import formats
from imagesvc.shared import metrics
from imagesvc.shared.crash import crash_point
from imagesvc.shared.logging import get_logger
from imagesvc.shared.snapshots import SnapshotDriver, SnapshotError, SnapshotMissing
from imagesvc.shared.store import ImageStore, StoreError
from imagesvc.shared.store.transfer import RC_DATASET, RC_SPACE, RC_STORE, ChunkWorker, Progress, ProgressMeter, TransferFailed

log = get_logger(__name__)

DEFAULT_GZIP_LEVEL = 6
#: Bytes of the snapshot read and compressed at a time.
READ_CHUNK = 1024 * 1024
#: esimg create wanted free space for 80 % of the (uncompressed) stream.
SPACE_SHARE = 0.8
#: zlib's wbits for a gzip container (header and trailer) around a 32 KiB window.
_GZIP_WBITS = 16 + zlib.MAX_WBITS


def _refuse_container(inspector: "formats.Inspector | None") -> None:
    refused = inspector.verdict() if inspector is not None else None
    if refused is not None:
        raise TransferFailed(RC_DATASET, f"Snapshot content format is not allowed ({refused})", "unsafe_image")


@dataclass(frozen=True)
class SnapshotRef:
    """One snapshot of one VM disk, as the drivers name it (disk ids from 1)."""

    vm_uuid: str
    disk_id: int
    snapname: str


@dataclass(frozen=True)
class Exported:
    """The image file now in the store."""

    #: sha1 and size of the compressed file (what the manifest's ``files[0]`` describes).
    sha1: str
    size: int
    #: Bytes read from the snapshot.
    snapshot_bytes: int
    seconds: float
    compression: str = "gzip"

    def file_description(self) -> dict[str, Any]:
        """The manifest's ``files[0]`` (reference §9.2: esimg merges ``{sha1, size, compression}``)."""
        return {"sha1": self.sha1, "size": self.size, "compression": self.compression}


def check_gzip_level(level: int) -> int:
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 9:
        raise ValueError(f"gzip level must be 1 to 9, not {level!r}")
    return level


def _missing(snapshot: SnapshotRef) -> TransferFailed:
    return TransferFailed(RC_DATASET, f"Snapshot {snapshot.snapname} of disk {snapshot.disk_id} of VM "
                                      f"{snapshot.vm_uuid} does not exist", "snapshot_missing")


def _unreadable(exc: BaseException) -> TransferFailed:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return TransferFailed(RC_DATASET, f"Cannot read the snapshot ({reason})", "snapshot_read_failed")


def export_snapshot(driver: SnapshotDriver, snapshot: SnapshotRef, store: ImageStore, uuid: str, attempt: str,
                    progress: Progress, *, level: int = DEFAULT_GZIP_LEVEL) -> Exported:
    """Write ``snapshot``, gzip-compressed at ``level``, into the store as the file of ``uuid``.

    ``attempt`` tells concurrent partial files apart (as for ``ImageStore.upload``); what an
    interrupted earlier attempt left for ``uuid`` is removed first (``discard_temporaries``).
    ``progress(read, total)`` is called at most once a second with the snapshot bytes read so far and the driver's size
    (None if unknown; an estimate may be passed). The file replaces any file ``uuid`` has; the
    caller writes the manifest (``Exported.file_description()`` is its ``files[0]``).

    Raises TransferFailed with esimg's return codes: 5 (``snapshot_missing``,
    ``snapshot_read_failed``, ``invalid_snapshot_ref``), 10 (``no_space``: less free space than
    80 % of the snapshot's size before the start, or the store filled up while writing), 7 (``store_write_failed`` and the store's own codes). On any failure
    nothing of the attempt is left in the store.
    """
    check_gzip_level(level)
    started = time.monotonic()
    try:
        total = driver.snapshot_size(snapshot.vm_uuid, snapshot.disk_id, snapshot.snapname)
    except SnapshotMissing:
        raise _missing(snapshot) from None
    except SnapshotError as exc:
        raise TransferFailed(RC_DATASET, f"Cannot read the snapshot ({exc})", exc.code) from None
    free = store.free_bytes()
    if total is not None and free is not None and free < total * SPACE_SHARE:
        raise TransferFailed(RC_SPACE, "Not enough free space in the image store", "no_space")
    try:
        stream = driver.open_snapshot(snapshot.vm_uuid, snapshot.disk_id, snapshot.snapname)
    except SnapshotMissing:
        raise _missing(snapshot) from None
    except (SnapshotError, OSError) as exc:
        raise _unreadable(exc) from None
    try:
        store.discard_temporaries(uuid)
        upload = store.upload(uuid, attempt)
    except StoreError as exc:
        stream.close()
        raise TransferFailed(RC_STORE, str(exc), exc.code) from None
    committed = False
    try:
        sha1 = hashlib.sha1()

        def write(chunk: bytes) -> None:
            sha1.update(chunk)
            upload.write(chunk)

        writer = ChunkWorker(write, name="export-writer")
        meter = ProgressMeter(total, progress)
        compressor = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)
        # A raw disk whose content is a container format (its first bytes the QCOW magic, a VMDK
        # descriptor...) would be probed as that format wherever the image is written to a disk
        # (CVE-2026-24708): never made an image (domain.formats).
        inspector = formats.Inspector("none")
        try:
            while True:
                try:
                    chunk = stream.read(READ_CHUNK)
                except (SnapshotError, OSError) as exc:
                    raise _unreadable(exc) from None
                if not inspector.done and chunk:
                    inspector.feed(chunk)
                    _refuse_container(inspector if inspector.done else None)
                if not chunk:
                    _refuse_container(inspector)
                    break
                compressed = compressor.compress(chunk)
                if compressed:
                    writer.feed(compressed)
                meter.add(len(chunk))
                metrics.bytes_exported(len(chunk))
                crash_point("mid_export")
            writer.feed(compressor.flush())
        except BaseException:
            writer.close(raise_error=False)  # the first failure is the one to report
            raise
        writer.close()
        upload.commit()
        committed = True
    except OSError as exc:  # writing the partial file or committing it
        if exc.errno == errno.ENOSPC:
            raise TransferFailed(RC_SPACE, "Not enough free space in the image store", "no_space") from None
        raise TransferFailed(RC_STORE, f"Cannot write the image file ({exc.strerror or exc})",
                             "store_write_failed") from None
    except StoreError as exc:  # an object store refused a part or the upload's completion
        raise TransferFailed(RC_STORE, f"Cannot write the image file ({exc})", exc.code) from None
    finally:
        stream.close()
        if not committed:
            upload.abort()
    exported = Exported(sha1=sha1.hexdigest(), size=upload.written, snapshot_bytes=meter.done,
                        seconds=time.monotonic() - started)
    log.info("snapshot.exported", uuid=uuid, snapshot_bytes=exported.snapshot_bytes, size=exported.size,
             seconds=round(exported.seconds, 3), level=level)
    return exported
