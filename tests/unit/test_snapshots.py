"""Snapshot drivers: the file driver (layout, missing snapshots, sizes, streaming, taking a
snapshot) and the ZFS driver against a stand-in ``zfs`` script (no ZFS on these machines)."""

from __future__ import annotations

import os
import stat
import textwrap

import pytest

from imagesvc.shared.snapshots import (FileSnapshotDriver, InvalidSnapshotRef, SnapshotError, SnapshotMissing,
                              ZfsSnapshotDriver, check_dataset_template, open_driver, take_snapshot)

VM = "6f1d1f3e-aaaa-bbbb-cccc-0123456789ab"


def write_disk(directory, content: bytes, vm: str = VM, disk_id: int = 1) -> str:
    path = FileSnapshotDriver(str(directory)).disk_path(vm, disk_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(content)
    return path


def read_all(stream, chunk: int = 4096) -> bytes:
    parts = []
    with stream:
        while piece := stream.read(chunk):
            parts.append(piece)
    return b"".join(parts)


# --- the file driver ---------------------------------------------------------------------------


def test_a_taken_snapshot_is_a_read_only_copy_that_streams_the_disk_as_it_was(tmp_path):
    content = os.urandom(300_000)
    disk = write_disk(tmp_path, content)
    path = take_snapshot(str(tmp_path), VM, 1, "snap1")
    assert path == str(tmp_path / VM / "disk-1@snap1")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
    with open(disk, "r+b") as handle:  # the VM writes on after the snapshot
        handle.write(b"changed")
    driver = FileSnapshotDriver(str(tmp_path))
    assert driver.snapshot_size(VM, 1, "snap1") == 300_000
    assert driver.snapshot_size(VM.upper(), 1, "snap1") == 300_000  # canonicalised, not refused
    assert read_all(driver.open_snapshot(VM, 1, "snap1"), chunk=7777) == content
    assert sorted(os.listdir(tmp_path / VM)) == ["disk-1", "disk-1@snap1"]  # no temporary file left


def test_a_missing_snapshot_raises_snapshot_missing_from_both_calls(tmp_path):
    driver = FileSnapshotDriver(str(tmp_path))
    for call in (driver.snapshot_size, driver.open_snapshot):
        with pytest.raises(SnapshotMissing) as caught:
            call(VM, 1, "nope")  # not even the VM's directory exists
        assert caught.value.code == "snapshot_missing"
    write_disk(tmp_path, b"disk")
    take_snapshot(str(tmp_path), VM, 1, "snap1")
    with pytest.raises(SnapshotMissing):
        driver.open_snapshot(VM, 2, "snap1")  # another disk
    with pytest.raises(SnapshotMissing):
        driver.snapshot_size(VM, 1, "snap2")


def test_a_snapshot_is_never_replaced_and_needs_its_disk(tmp_path):
    write_disk(tmp_path, b"first")
    take_snapshot(str(tmp_path), VM, 1, "snap1")
    write_disk(tmp_path, b"second")
    with pytest.raises(SnapshotError) as caught:
        take_snapshot(str(tmp_path), VM, 1, "snap1")
    assert caught.value.code == "snapshot_exists"
    assert read_all(FileSnapshotDriver(str(tmp_path)).open_snapshot(VM, 1, "snap1")) == b"first"
    with pytest.raises(SnapshotError) as caught:
        take_snapshot(str(tmp_path), VM, 3, "snap1")
    assert caught.value.code == "disk_missing"
    assert sorted(os.listdir(tmp_path / VM)) == ["disk-1", "disk-1@snap1"]


def test_a_directory_in_the_snapshots_place_is_an_error_not_a_snapshot(tmp_path):
    os.makedirs(tmp_path / VM / "disk-1@odd")
    driver = FileSnapshotDriver(str(tmp_path))
    for call in (driver.snapshot_size, driver.open_snapshot):
        with pytest.raises(SnapshotError) as caught:
            call(VM, 1, "odd")
        assert not isinstance(caught.value, SnapshotMissing)


@pytest.mark.parametrize("vm, disk_id, snapname", [
    ("../etc", 1, "s"), ("{" + VM + "}", 1, "s"), ("x", 1, "s"),
    (VM, 0, "s"), (VM, -1, "s"), (VM, True, "s"), (VM, "1", "s"), (VM, 1025, "s"),
    (VM, 1, ""), (VM, 1, "../x"), (VM, 1, "a/b"), (VM, 1, ".hidden"), (VM, 1, "a@b"), (VM, 1, "a b"), (VM, 1, "x" * 65),
])
def test_references_that_could_reach_outside_the_layout_are_refused(tmp_path, vm, disk_id, snapname):
    driver = FileSnapshotDriver(str(tmp_path))
    for call in (driver.snapshot_size, driver.open_snapshot):
        with pytest.raises(InvalidSnapshotRef) as caught:
            call(vm, disk_id, snapname)
        assert caught.value.code == "invalid_snapshot_ref"
    with pytest.raises(InvalidSnapshotRef):
        ZfsSnapshotDriver(command="/nonexistent/zfs").snapshot_name(vm, disk_id, snapname)


def test_open_driver_builds_the_configured_driver(tmp_path):
    assert isinstance(open_driver("file", directory=str(tmp_path)), FileSnapshotDriver)
    zfs = open_driver("zfs", zfs_command="/sbin/zfs", zfs_dataset="tank/vms/{vm_uuid}/disk{disk_id}")
    assert zfs.snapshot_name(VM, 2, "s1") == f"tank/vms/{VM}/disk2@s1"
    with pytest.raises(ValueError, match="IMAGESVC_SNAPSHOT_DIR"):
        open_driver("file")
    with pytest.raises(ValueError, match="unknown snapshot driver"):
        open_driver("lvm", directory=str(tmp_path))


@pytest.mark.parametrize("template", ["zones/{uuid}", "zones/{vm_uuid", "", "zones/{vm_uuid}@x", "/zones/{vm_uuid}",
                                      "zones/{vm_uuid} x"])
def test_malformed_dataset_templates_are_refused(template):
    with pytest.raises(ValueError):
        check_dataset_template(template)


# --- the ZFS driver, against a stand-in zfs ----------------------------------------------------


@pytest.fixture
def fake_zfs(tmp_path):
    """A ``zfs`` that serves snapshots from files named after them (``/`` as ``%``), answering
    ``list``, ``send -nP`` and ``send`` as zfs(8) does; ``FAIL_MIDWAY`` in a snapshot file makes
    ``send`` die after its first bytes."""
    store = tmp_path / "zfs"
    store.mkdir()
    script = tmp_path / "zfs.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        store={store}
        last=$(eval echo \\${{$#}})
        file="$store/$(echo "$last" | tr / %)"
        if [ ! -f "$file" ]; then
            echo "cannot open '$last': dataset does not exist" >&2; exit 1
        fi
        case "$1 $2" in
            "list -H") echo "$last" ;;
            "send -nP") printf 'full\\t%s\\nsize\\t%s\\n' "$last" "$(wc -c < "$file")" ;;
            "send $last")
                if grep -q FAIL_MIDWAY "$file"; then head -c 10 "$file"; echo "I/O error" >&2; exit 1; fi
                cat "$file" ;;
            *) echo "unexpected: $*" >&2; exit 2 ;;
        esac
        """))
    script.chmod(0o755)

    def add(name: str, content: bytes) -> None:
        (store / name.replace("/", "%")).write_bytes(content)

    return ZfsSnapshotDriver(command=str(script)), add


def test_zfs_streams_zfs_send_and_takes_the_size_from_its_dry_run(fake_zfs):
    driver, add = fake_zfs
    content = os.urandom(3 * 1024 * 1024 + 5)
    add(f"zones/{VM}-disk1@snap1", content)  # disk_id 2 is SmartOS's disk1
    assert driver.snapshot_size(VM, 2, "snap1") == len(content)
    assert read_all(driver.open_snapshot(VM, 2, "snap1"), chunk=1 << 20) == content


def test_zfs_reports_a_missing_snapshot(fake_zfs):
    driver, _ = fake_zfs
    with pytest.raises(SnapshotMissing):
        driver.snapshot_size(VM, 1, "nope")
    with pytest.raises(SnapshotMissing):
        driver.open_snapshot(VM, 1, "nope")


def test_a_zfs_send_that_dies_midway_fails_the_read_instead_of_ending_the_stream(fake_zfs):
    driver, add = fake_zfs
    add(f"zones/{VM}-disk0@bad", b"0123456789FAIL_MIDWAY" * 100)
    stream = driver.open_snapshot(VM, 1, "bad")
    with pytest.raises(SnapshotError, match="I/O error"):
        read_all(stream)


def test_an_abandoned_zfs_stream_stops_zfs_send(fake_zfs):
    driver, add = fake_zfs
    add(f"zones/{VM}-disk0@big", os.urandom(8 * 1024 * 1024))
    stream = driver.open_snapshot(VM, 1, "big")
    assert len(stream.read(1024)) == 1024
    stream.close()  # long before the end: zfs send is killed, not left writing into a full pipe
    assert stream._process.returncode is not None
