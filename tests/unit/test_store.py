"""The local image store and the import transfer: publication is all or nothing, nothing partial
is ever visible or left behind, and a mismatching file never becomes an image's file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import pytest

from imagesvc.services.importer import transfer
from imagesvc.shared.net.fetch import FetchError
from imagesvc.shared.store import LocalStore, StoreError, StoreUnavailable, check_uuid, open_store

UUID = "2f0c7c3e-1111-2222-3333-444455556666"


def partials(store: LocalStore) -> list[str]:
    directory = os.path.join(store.root, ".partial")
    return os.listdir(directory) if os.path.isdir(directory) else []


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(str(tmp_path / "store"))


def test_open_store_reads_the_setting(tmp_path):
    assert open_store("none") is None
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert open_store(f"file://{tmp_path}").root == str(tmp_path)
    with pytest.raises(ValueError, match="bucket"):
        open_store("s3://")
    with pytest.raises(ValueError):
        open_store("")


@pytest.mark.parametrize("bad", ["../etc", "x", "", "2f0c7c3e/../x", "{2f0c7c3e-1111-2222-3333-444455556666}"])
def test_only_canonical_uuids_name_anything_in_the_store(store, bad):
    with pytest.raises(StoreError) as caught:
        check_uuid(bad)
    assert caught.value.code == "invalid_uuid"
    with pytest.raises(StoreError):
        store.upload(bad, "attempt")


def test_an_upload_is_invisible_until_committed_then_whole(store):
    upload = store.upload(UUID, "task-1")
    upload.write(b"a" * 1000)
    assert store.file_info(UUID) is None and store.uuids() == []
    upload.write(b"b" * 24)
    upload.commit()
    assert store.file_info(UUID).size == 1024
    with store.open_file(UUID) as handle:
        assert handle.read() == b"a" * 1000 + b"b" * 24
    assert store.uuids() == []  # in the store only once its manifest is
    store.write_manifest(UUID, {"uuid": UUID})
    assert store.uuids() == [UUID] and store.manifest(UUID) == {"uuid": UUID}
    assert partials(store) == []


def test_an_aborted_or_abandoned_upload_leaves_nothing(store):
    upload = store.upload(UUID, "task-1")
    upload.write(b"x" * 10)
    upload.abort()
    upload.abort()  # idempotent
    with store.upload(UUID, "task-2") as second:
        second.write(b"y")
        # the block ends without commit: a failure path
    assert partials(store) == []
    assert store.file_info(UUID) is None


def test_discard_temporaries_removes_only_that_images_partial_files(store):
    other = "9a8b7c6d-1111-2222-3333-444455556666"
    store.upload(UUID, "dead-attempt").write(b"1")
    store.upload(other, "running").write(b"2")
    assert store.discard_temporaries(UUID) == 1
    assert [name.split(".")[0] for name in partials(store)] == [other]


def test_a_manifest_is_replaced_atomically_and_written_as_json(store):
    store.write_manifest(UUID, {"v": 1})
    store.write_manifest(UUID, {"v": 2, "description": "é"})
    directory = os.path.join(store.root, UUID)
    assert sorted(os.listdir(directory)) == ["manifest"]  # no temporary left
    assert json.loads(open(os.path.join(directory, "manifest"), encoding="utf-8").read())["v"] == 2


def test_delete_removes_everything_of_the_image_and_says_whether_there_was_anything(store):
    with store.upload(UUID, "t") as upload:
        upload.write(b"data")
        upload.commit()
    store.write_manifest(UUID, {"uuid": UUID})
    store.upload(UUID, "stale").write(b"partial")
    assert store.delete(UUID) is True
    assert store.manifest(UUID) is None and store.file_info(UUID) is None
    assert os.listdir(os.path.join(store.root, ".trash")) == []
    assert partials(store) == []
    assert store.delete(UUID) is False  # nothing there: still fine


def test_the_health_check_fails_when_the_store_cannot_be_written(tmp_path):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    with pytest.raises(StoreUnavailable):
        LocalStore(str(blocked)).check()
    LocalStore(str(tmp_path / "fresh")).check()  # created on demand


# --- transfer ------------------------------------------------------------------------------------


class FakeFetcher:
    """Delivers ``body`` in pieces, or raises ``error`` after delivering ``before`` bytes."""

    def __init__(self, body: bytes, *, error: FetchError | None = None, before: int = 0):
        self.body, self.error, self.before = body, error, before

    def download(self, url, sink, *, max_bytes, connect_timeout, idle_timeout, total_timeout, chunk_size=1 << 20):
        if self.error is not None:
            sink(self.body[:self.before])
            raise self.error
        if len(self.body) > max_bytes:
            sink(self.body[:max_bytes])
            raise FetchError("Response is too large", "too_large")
        for start in range(0, len(self.body), 1000):
            sink(self.body[start:start + 1000])
        return len(self.body)


LIMITS = transfer.Limits(max_bytes=10 * 1024 * 1024, connect_timeout=1, idle_timeout=1, total_timeout=5)


def expected_for(content: bytes) -> transfer.Expected:
    return transfer.Expected(size=len(content), sha1=hashlib.sha1(content).hexdigest())


def test_a_matching_download_is_committed_with_both_digests(store):
    content = os.urandom(5000)
    reports = []
    received = transfer.download(FakeFetcher(content), "http://x/f", store, UUID, "t", expected_for(content), LIMITS,
                                 lambda done, total: reports.append((done, total)))
    assert received.sha256 == hashlib.sha256(content).hexdigest() and received.size == 5000
    with store.open_file(UUID) as handle:
        assert handle.read() == content


@pytest.mark.parametrize("case, code", [
    ("checksum", "checksum_mismatch"), ("short", "size_mismatch"), ("long", "size_mismatch"),
    ("timeout", "timeout"), ("too_large", "too_large"),
])
def test_a_failed_download_says_why_and_leaves_nothing(store, case, code):
    content = os.urandom(3000)
    expected = expected_for(content)
    fetcher = FakeFetcher(content)
    limits = LIMITS
    if case == "checksum":
        expected = transfer.Expected(size=3000, sha1="0" * 40)
    elif case == "short":
        expected = transfer.Expected(size=3001, sha1=expected.sha1)
    elif case == "long":
        expected = transfer.Expected(size=2999, sha1=expected.sha1)
    elif case == "timeout":
        fetcher = FakeFetcher(content, error=FetchError("timed out", "timeout"), before=1000)
    else:
        limits = transfer.Limits(max_bytes=100, connect_timeout=1, idle_timeout=1, total_timeout=5)
    with pytest.raises(transfer.TransferFailed) as caught:
        transfer.download(fetcher, "http://x/f", store, UUID, "t", expected, limits, lambda *_: None)
    failure = caught.value
    assert failure.code == code and failure.returncode == 8
    result = failure.result()
    assert result["message"].startswith("ERROR: ") and result["detail"].startswith("Got bad return code (8). Error: ")
    assert store.file_info(UUID) is None
    assert partials(store) == []


def test_uppercase_checksums_in_a_manifest_are_normalised():
    assert transfer.Expected.from_manifest({"files": [{"size": 3, "sha1": "AB" * 20}]}).sha1 == "ab" * 20


@pytest.mark.parametrize("files", [None, [], [{"sha1": "ab" * 20}], [{"size": -1, "sha1": "ab" * 20}],
                                   [{"size": True, "sha1": "ab" * 20}], [{"size": 3, "sha1": "xyz"}]])
def test_a_manifest_without_a_usable_file_description_fails_with_esimgs_code_2(files):
    with pytest.raises(transfer.TransferFailed) as caught:
        transfer.Expected.from_manifest({"files": files})
    assert (caught.value.returncode, caught.value.code) == (2, "manifest_invalid")


def test_verify_in_place_checks_a_file_already_in_the_store_without_touching_it(store):
    content = os.urandom(4096)
    with store.upload(UUID, "t") as upload:
        upload.write(content)
        upload.commit()
    received = transfer.verify_in_place(store, UUID, expected_for(content), lambda *_: None)
    assert received.sha1 == hashlib.sha1(content).hexdigest()
    with pytest.raises(transfer.TransferFailed) as caught:
        transfer.verify_in_place(store, UUID, transfer.Expected(size=4096, sha1="1" * 40), lambda *_: None)
    assert caught.value.code == "checksum_mismatch"
    assert store.file_info(UUID).size == 4096  # a failed check removes nothing


# --- what interrupted work leaves, and how it goes -------------------------------------------------


def stored(store: LocalStore, uuid: str = UUID, data: bytes = b"data") -> None:
    with store.upload(uuid, "t") as upload:
        upload.write(data)
        upload.commit()
    store.write_manifest(uuid, {"uuid": uuid})


def trash(store: LocalStore) -> list[str]:
    directory = os.path.join(store.root, ".trash")
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def interrupted_removal(store: LocalStore, uuid: str = UUID, *, emptied: bool = False) -> str:
    """The image's directory moved into .trash by a removal that died there (``emptied``: while
    emptying it, its manifest gone already)."""
    os.makedirs(os.path.join(store.root, ".trash"), exist_ok=True)
    doomed = os.path.join(store.root, ".trash", f"{uuid}.{os.urandom(4).hex()}")
    os.replace(store.image_dir(uuid), doomed)
    if emptied:
        os.unlink(os.path.join(doomed, "manifest"))
    return doomed


def test_delete_also_empties_what_an_interrupted_removal_left(store):
    stored(store)
    interrupted_removal(store)
    assert store.manifest(UUID) is None and len(trash(store)) == 1
    assert store.delete(UUID) is True  # the retried removal: the directory is gone, the trash is not
    assert trash(store) == []
    assert store.delete(UUID) is False


def test_restore_moves_a_whole_interrupted_removal_back_and_empties_the_others(store):
    stored(store, data=b"old life")
    interrupted_removal(store, emptied=True)
    stored(store, data=b"this one")
    interrupted_removal(store)
    assert store.restore(UUID) is True
    with store.open_file(UUID) as handle:
        assert handle.read() == b"this one"
    assert trash(store) == []
    assert store.restore(UUID) is True  # there already: nothing to do


def test_restore_says_when_the_data_is_gone_for_good(store):
    stored(store)
    interrupted_removal(store, emptied=True)
    assert store.restore(UUID) is False
    assert trash(store) == [] and not os.path.exists(store.image_dir(UUID))


def test_a_removal_is_emptied_manifest_first(store, monkeypatch):
    """A removal that still has its manifest is whole: restore may move it back."""
    stored(store)
    doomed = interrupted_removal(store)
    seen = []
    monkeypatch.setattr("imagesvc.shared.store.local.shutil.rmtree",
                        lambda path, ignore_errors: seen.append(sorted(os.listdir(path))))
    store.delete(UUID)
    assert seen == [["file"]] and not os.path.exists(os.path.join(doomed, "manifest"))


def test_a_manifest_rewrite_removes_a_dead_writers_temporary(store):
    stored(store)
    dead = os.path.join(store.image_dir(UUID), ".manifest.0123abcd")
    with open(dead, "w") as handle:
        handle.write("{")
    store.write_manifest(UUID, {"v": 2})
    assert sorted(os.listdir(store.image_dir(UUID))) == ["file", "manifest"]


def test_discard_temporaries_takes_an_images_partials_manifest_temporaries_and_removals(store):
    other = "9a8b7c6d-1111-2222-3333-444455556666"
    stored(store)
    interrupted_removal(store)
    stored(store)
    store.upload(UUID, "dead").write(b"1")
    open(os.path.join(store.image_dir(UUID), ".manifest.dead"), "w").close()
    store.upload(other, "running").write(b"2")
    assert store.discard_temporaries(UUID) == 3
    assert sorted(os.listdir(store.image_dir(UUID))) == ["file", "manifest"]
    assert trash(store) == [] and [name.split(".")[0] for name in partials(store)] == [other]


def test_survey_names_every_entry_by_kind_and_image(store):
    from imagesvc.shared.store import EntryKind

    other = "9a8b7c6d-1111-2222-3333-444455556666"
    stored(store, data=b"12345")
    store.file_md5(UUID)  # the cache
    open(os.path.join(store.image_dir(UUID), ".manifest.ab"), "w").close()
    open(os.path.join(store.image_dir(UUID), ".file.md5.cd"), "w").close()
    open(os.path.join(store.image_dir(UUID), "notes.txt"), "w").close()
    store.upload(other, "1e1u1-aaaaaaaa-bbbb-cccc-dddd.0123abcd").write(b"half")
    with store.upload(other, "x") as upload:  # a file without a manifest
        upload.write(b"staged")
        upload.commit()
    stored(store, "1f0c7c3e-1111-2222-3333-444455556666")
    interrupted_removal(store, "1f0c7c3e-1111-2222-3333-444455556666")
    open(os.path.join(store.root, ".partial", ".probe-ef"), "w").close()
    open(os.path.join(store.root, "README"), "w").close()
    os.makedirs(os.path.join(store.root, "not-a-uuid"))
    found = {entry.path: entry for entry in store.survey()}
    kinds = {path: (entry.kind, entry.uuid) for path, entry in found.items()}
    trashed = trash(store)[0]
    assert kinds == {
        UUID: (EntryKind.IMAGE, UUID),
        f"{UUID}/.manifest.ab": (EntryKind.MANIFEST_TEMP, UUID),
        f"{UUID}/.file.md5.cd": (EntryKind.SCRATCH, UUID),
        f"{UUID}/notes.txt": (EntryKind.UNKNOWN, UUID),
        other: (EntryKind.IMAGE, other),
        f".partial/{other}.1e1u1-aaaaaaaa-bbbb-cccc-dddd_0123abcd": (EntryKind.PARTIAL, other),
        ".partial/.probe-ef": (EntryKind.SCRATCH, None),
        f".trash/{trashed}": (EntryKind.TRASH, "1f0c7c3e-1111-2222-3333-444455556666"),
        "README": (EntryKind.UNKNOWN, None),
        "not-a-uuid": (EntryKind.UNKNOWN, None),
    }
    assert (found[UUID].has_manifest, found[UUID].has_file, found[UUID].size) == (True, True, 5)
    assert (found[other].has_manifest, found[other].has_file) == (False, True)
    assert found[f".trash/{trashed}"].size == 4 + len(json.dumps({"uuid": "1f0c7c3e-1111-2222-3333-444455556666"},
                                                                  indent=2, sort_keys=True))
    assert all(0 <= entry.age < 60 for entry in found.values())


def test_remove_takes_temporaries_only_and_stays_inside_the_store(store):
    from imagesvc.shared.store import EntryKind

    stored(store)
    interrupted_removal(store)
    store.upload(UUID, "dead").write(b"1")
    entries = store.survey()
    for entry in entries:
        if entry.kind in (EntryKind.TRASH, EntryKind.PARTIAL):
            assert store.remove(entry) is True
            assert store.remove(entry) is False
    assert store.survey() == []  # .partial and .trash are left, empty
    image = dataclasses.replace(entries[0], kind=EntryKind.IMAGE, path=UUID)
    with pytest.raises(ValueError):
        store.remove(image)
    with pytest.raises(ValueError):
        store.remove(dataclasses.replace(entries[0], kind=EntryKind.PARTIAL, path="../outside"))


def test_discard_leftovers_keeps_images_and_unknown_names(store):
    stored(store)
    interrupted_removal(store)
    stored(store)
    store.upload(UUID, "dead").write(b"1")
    open(os.path.join(store.image_dir(UUID), ".manifest.ab"), "w").close()
    open(os.path.join(store.root, "README"), "w").close()
    assert store.discard_leftovers() == 3
    assert sorted(entry.path for entry in store.survey()) == sorted(["README", UUID])
