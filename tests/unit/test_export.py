"""Exporting a snapshot into the image store: the stored file is the snapshot, gzip-compressed at
the configured level, described by its sha1 and size; failures say why with esimg's return codes
and leave nothing in the store."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import threading
import types

import pytest

from imagesvc.services.node_agent import export as export_module
from imagesvc.services.node_agent.export import DEFAULT_GZIP_LEVEL, SnapshotRef, export_snapshot
from imagesvc.shared.config import Settings
from imagesvc.shared.snapshots import FileSnapshotDriver, SnapshotError, take_snapshot
from imagesvc.shared.store import LocalStore
from imagesvc.shared.store.transfer import TransferFailed
from tests.unit.test_store import partials, store  # noqa: F401 - store is a fixture

VM = "6f1d1f3e-aaaa-bbbb-cccc-0123456789ab"
IMAGE = "2f0c7c3e-1111-2222-3333-444455556666"
SNAP = SnapshotRef(VM, 1, "snap1")


def disk_like(size: int) -> bytes:
    """Random, zero and repetitive text blocks, so that every level has work to do."""
    parts, left, index = [], size, 0
    while left > 0:
        n = min(left, 64 * 1024)
        kind = index % 3
        parts.append(os.urandom(n) if kind == 0 else bytes(n) if kind == 1 else (b"log line %d ok\n" % index * 5000)[:n])
        left -= n
        index += 1
    return b"".join(parts)


@pytest.fixture
def snapshots(tmp_path):
    directory = tmp_path / "vms"

    def make(content: bytes, snapname: str = "snap1", disk_id: int = 1) -> FileSnapshotDriver:
        driver = FileSnapshotDriver(str(directory))
        disk = driver.disk_path(VM, disk_id)
        os.makedirs(os.path.dirname(disk), exist_ok=True)
        with open(disk, "wb") as handle:
            handle.write(content)
        take_snapshot(str(directory), VM, disk_id, snapname)
        return driver

    return make


def stored(store: LocalStore) -> bytes:
    with store.open_file(IMAGE) as handle:
        return handle.read()


def test_the_stored_file_decompresses_to_the_snapshot_and_is_described_by_its_sha1_and_size(store, snapshots):
    content = disk_like(3 * 1024 * 1024 + 123)
    driver = snapshots(content)
    exported = export_snapshot(driver, SNAP, store, IMAGE, "task-1", lambda *_: None)
    data = stored(store)
    assert gzip.decompress(data) == content
    assert data[:2] == b"\x1f\x8b"  # a gzip container, not a bare zlib stream
    assert exported.sha1 == hashlib.sha1(data).hexdigest()
    assert exported.size == len(data) < len(content)
    assert exported.snapshot_bytes == len(content)
    assert exported.file_description() == {"sha1": exported.sha1, "size": len(data), "compression": "gzip"}
    assert partials(store) == []
    assert store.uuids() == []  # the manifest is the caller's: the image is not in the store yet


def test_an_empty_snapshot_becomes_an_empty_gzip_file(store, snapshots):
    exported = export_snapshot(snapshots(b""), SNAP, store, IMAGE, "t", lambda *_: None)
    assert gzip.decompress(stored(store)) == b"" and exported.snapshot_bytes == 0


def test_the_level_is_honoured(store, snapshots):
    content = disk_like(1024 * 1024)
    driver = snapshots(content)
    sizes = {}
    for level in (1, 9):
        exported = export_snapshot(driver, SNAP, store, IMAGE, f"t{level}", lambda *_: None, level=level)
        data = stored(store)
        assert gzip.decompress(data) == content
        # The gzip header's XFL byte says which end of the scale compressed it (RFC 1952).
        assert data[8] == {1: 4, 9: 2}[level]
        sizes[level] = exported.size
    assert sizes[9] < sizes[1]
    with pytest.raises(ValueError):
        export_snapshot(driver, SNAP, store, IMAGE, "t", lambda *_: None, level=0)


def test_the_default_level_is_the_settings_default():
    assert DEFAULT_GZIP_LEVEL == Settings().snapshot_gzip_level == 6


def test_progress_reports_snapshot_bytes_read_of_its_size_at_most_once_a_second(store, snapshots, monkeypatch):
    chunk = export_module.READ_CHUNK
    content = os.urandom(5 * chunk)
    driver = snapshots(content)
    # The meter's clock (only the meter's): a quarter of a second passes at every reading.
    readings = iter(range(1000))
    monkeypatch.setattr("imagesvc.shared.store.transfer.time", types.SimpleNamespace(monotonic=lambda: next(readings) / 4))
    reports = []
    export_snapshot(driver, SNAP, store, IMAGE, "t", lambda done, total: reports.append((done, total)))
    # Started at 0 s; chunks counted at 0.25, 0.5, 0.75, 1.0 (reported), 1.25 s.
    assert reports == [(4 * chunk, 5 * chunk)]


def test_a_missing_snapshot_fails_with_esimgs_dataset_code(store, snapshots):
    driver = snapshots(b"disk")
    with pytest.raises(TransferFailed) as caught:
        export_snapshot(driver, SnapshotRef(VM, 1, "other"), store, IMAGE, "t", lambda *_: None)
    assert (caught.value.returncode, caught.value.code) == (5, "snapshot_missing")
    assert caught.value.result()["message"].startswith("ERROR: Snapshot other of disk 1 of VM ")
    with pytest.raises(TransferFailed) as caught:
        export_snapshot(driver, SnapshotRef(VM, 1, "../x"), store, IMAGE, "t", lambda *_: None)
    assert (caught.value.returncode, caught.value.code) == (5, "invalid_snapshot_ref")
    assert store.file_info(IMAGE) is None and partials(store) == []


def test_too_little_free_space_for_80_percent_of_the_snapshot_fails_before_writing(store, snapshots, monkeypatch):
    content = os.urandom(100_000)
    driver = snapshots(content)
    monkeypatch.setattr(store, "free_bytes", lambda: 79_999)
    with pytest.raises(TransferFailed) as caught:
        export_snapshot(driver, SNAP, store, IMAGE, "t", lambda *_: None)
    assert (caught.value.returncode, caught.value.code) == (10, "no_space")
    assert partials(store) == []
    monkeypatch.setattr(store, "free_bytes", lambda: 80_000)
    export_snapshot(driver, SNAP, store, IMAGE, "t", lambda *_: None)
    assert gzip.decompress(stored(store)) == content


class BreakingStream(io.RawIOBase):
    """Streams ``good`` bytes, then fails the way a dying ``zfs send`` or a bad disk does."""

    def __init__(self, good: bytes, error: BaseException):
        self._good = io.BytesIO(good)
        self._error = error
        self.closed_by_export = False

    def read(self, size: int = -1) -> bytes:
        data = self._good.read(size)
        if not data:
            raise self._error
        return data

    def close(self) -> None:
        self.closed_by_export = True
        super().close()


class FakeDriver:
    location = "fake"

    def __init__(self, stream, size: int | None):
        self.stream, self.size = stream, size

    def snapshot_size(self, vm_uuid, disk_id, snapname):
        return self.size

    def open_snapshot(self, vm_uuid, disk_id, snapname):
        return self.stream


@pytest.mark.parametrize("error", [SnapshotError("zfs send failed (1): I/O error"), OSError(errno.EIO, "I/O error")])
def test_a_snapshot_that_fails_midway_leaves_nothing_in_the_store(store, error):
    stream = BreakingStream(os.urandom(3 * 1024 * 1024), error)
    with pytest.raises(TransferFailed) as caught:
        export_snapshot(FakeDriver(stream, None), SNAP, store, IMAGE, "t", lambda *_: None)
    assert (caught.value.returncode, caught.value.code) == (5, "snapshot_read_failed")
    assert "I/O error" in caught.value.message
    assert stream.closed_by_export
    assert store.file_info(IMAGE) is None and partials(store) == []


def replace_writes(monkeypatch, store: LocalStore, write) -> None:
    """Make every upload of ``store`` call ``write(upload, data)`` instead of its own write."""
    real_upload = store.upload

    def patched(uuid, attempt):
        upload = real_upload(uuid, attempt)
        upload.write = lambda data: write(upload, data)
        return upload

    monkeypatch.setattr(store, "upload", patched)


def test_a_store_that_fails_midway_leaves_nothing_and_an_older_file_untouched(store, snapshots, monkeypatch):
    content = os.urandom(4 * 1024 * 1024)
    driver = snapshots(content)
    export_snapshot(driver, SNAP, store, IMAGE, "first", lambda *_: None)
    before = stored(store)
    writes = []

    def fail_second(upload, data):
        writes.append(len(data))
        if len(writes) == 2:
            raise OSError(errno.EIO, "Input/output error")
        type(upload).write(upload, data)

    replace_writes(monkeypatch, store, fail_second)
    with pytest.raises(TransferFailed) as caught:
        export_snapshot(driver, SNAP, store, IMAGE, "second", lambda *_: None)
    assert (caught.value.returncode, caught.value.code) == (7, "store_write_failed")
    assert stored(store) == before and partials(store) == []


def test_a_store_that_fills_up_while_writing_is_a_space_failure(store, snapshots, monkeypatch):
    driver = snapshots(os.urandom(2 * 1024 * 1024))
    def full(_upload, _data):
        raise OSError(errno.ENOSPC, "No space left on device")

    replace_writes(monkeypatch, store, full)
    with pytest.raises(TransferFailed) as caught:
        export_snapshot(driver, SNAP, store, IMAGE, "t", lambda *_: None)
    assert (caught.value.returncode, caught.value.code) == (10, "no_space")
    assert store.file_info(IMAGE) is None and partials(store) == []


def test_an_interrupted_attempts_partial_file_is_removed(store, snapshots):
    leftover = store.upload(IMAGE, "crashed-attempt")
    leftover.write(b"half")  # never committed nor aborted: the process died
    export_snapshot(snapshots(b"disk bytes"), SNAP, store, IMAGE, "next", lambda *_: None)
    assert partials(store) == []
    assert gzip.decompress(stored(store)) == b"disk bytes"


def test_compression_and_writing_run_on_different_threads(store, snapshots, monkeypatch):
    """The writer is a second thread, so compressing the next chunk overlaps with hashing and
    writing the previous one (both release the GIL)."""
    driver = snapshots(os.urandom(4 * 1024 * 1024))
    writers = set()

    def watched(upload, data):
        writers.add(threading.current_thread().name)
        type(upload).write(upload, data)

    replace_writes(monkeypatch, store, watched)
    export_snapshot(driver, SNAP, store, IMAGE, "t", lambda *_: None)
    assert writers == {"export-writer"}


def test_an_export_counts_the_snapshot_bytes_it_read(store, snapshots):
    from prometheus_client import REGISTRY

    content = disk_like(1024 * 1024 + 7)
    driver = snapshots(content)
    before = REGISTRY.get_sample_value("imagesvc_exported_bytes_total") or 0.0
    export_snapshot(driver, SNAP, store, IMAGE, "task-metrics", lambda *_: None)
    assert REGISTRY.get_sample_value("imagesvc_exported_bytes_total") - before == len(content)
