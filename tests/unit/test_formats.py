"""Container formats are refused by their signature, whatever the manifest claims (S11)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os

import pytest

from imagesvc.domain import formats
from imagesvc.services.importer import transfer
from imagesvc.services.node_agent.export import SnapshotRef, export_snapshot
from imagesvc.shared.snapshots.files import FileSnapshotDriver, take_snapshot
from imagesvc.shared.store import LocalStore
from imagesvc.shared.store.transfer import TransferFailed

UUID = "2f0c7c3e-1111-2222-3333-444455556666"
VM = "0b1c2d3e-1111-2222-3333-444455556666"

CONTAINERS = {
    "qcow": b"QFI\xfb\x00\x00\x00\x03" + b"\x00" * 100,
    "qed": b"QED\x00" + b"\x00" * 100,
    "vmdk": b"# Disk DescriptorFile\nversion=1\nRW 2048 FLAT \"/etc/hosts\" 0\n",
    "vhd": b"conectix" + b"\x00" * 100,
    "vhdx": b"vhdxfile" + b"\x00" * 100,
    "vdi": b"<<< Oracle VM VirtualBox Disk Image >>>\n".ljust(64, b"\x00") + b"\x7f\x10\xda\xbe",
    "luks": b"LUKS\xba\xbe\x00\x01",
}


@pytest.mark.parametrize("kind", sorted(CONTAINERS))
def test_each_container_signature_is_recognised(kind):
    assert formats.unsafe_format(CONTAINERS[kind] + os.urandom(1000)) == kind


def test_an_iso_volume_descriptor_is_recognised_even_behind_a_partition_table():
    polyglot = bytearray(os.urandom(0x9000))
    polyglot[0:4] = b"\x00\x00\x00\x00"
    polyglot[512:520] = b"EFI PART"
    polyglot[0x8001:0x8006] = b"CD001"
    assert formats.unsafe_format(bytes(polyglot)) == "iso"


@pytest.mark.parametrize("compress, name", [(lambda b: b, "none"), (gzip.compress, "gzip"), (bz2.compress, "bzip2"),
                                            (lzma.compress, "xz")])
def test_the_head_is_read_through_the_declared_compression(compress, name):
    stored = compress(CONTAINERS["qcow"] + os.urandom(200_000))
    inspector = formats.Inspector(name)
    for start in range(0, len(stored), 5000):
        inspector.feed(stored[start:start + 5000])
    assert inspector.done and inspector.verdict() == "qcow"


def test_raw_disks_and_zfs_streams_pass():
    for content in (os.urandom(100_000), b"\x00" * 100_000, b"\xf5\x02\xb0\x0f" + os.urandom(50_000)):
        inspector = formats.Inspector("gzip")
        inspector.feed(gzip.compress(content))
        assert inspector.verdict() is None


def test_a_head_that_does_not_decompress_is_inspected_as_it_is():
    inspector = formats.Inspector("gzip")
    inspector.feed(CONTAINERS["qcow"] + os.urandom(70_000))  # not gzip at all
    assert inspector.verdict() == "qcow"


class Serving:
    def __init__(self, body: bytes):
        self.body = body

    def download(self, url, sink, **_limits):
        for start in range(0, len(self.body), 4096):
            sink(self.body[start:start + 4096])
        return len(self.body)


def test_an_import_of_a_qcow2_file_fails_and_leaves_nothing(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    body = gzip.compress(CONTAINERS["qcow"] + os.urandom(100_000))
    expected = transfer.Expected(size=len(body), sha1=hashlib.sha1(body).hexdigest(), compression="gzip")
    limits = transfer.Limits(max_bytes=1 << 30, connect_timeout=1, idle_timeout=1, total_timeout=5)
    with pytest.raises(TransferFailed) as caught:
        transfer.download(Serving(body), "http://x/f", store, UUID, "t", expected, limits, lambda *_: None)
    assert (caught.value.code, caught.value.returncode) == ("unsafe_image", 8)
    assert "qcow" in caught.value.message
    assert store.file_info(UUID) is None and os.listdir(tmp_path / "store" / ".partial") == []


def test_a_snapshot_whose_raw_disk_starts_with_the_qcow_magic_is_not_exported(tmp_path):
    vms, store = tmp_path / "vms", LocalStore(str(tmp_path / "store"))
    driver = FileSnapshotDriver(str(vms))
    disk = driver.disk_path(VM, 1)
    os.makedirs(os.path.dirname(disk))
    with open(disk, "wb") as handle:
        handle.write(CONTAINERS["qcow"] + os.urandom(300_000))
    take_snapshot(str(vms), VM, 1, "daily")
    with pytest.raises(TransferFailed) as caught:
        export_snapshot(driver, SnapshotRef(VM, 1, "daily"), store, UUID, "t", lambda *_: None)
    assert caught.value.code == "unsafe_image"
    assert store.file_info(UUID) is None
