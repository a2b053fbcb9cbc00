"""The local image store and the import transfer: publication is all or nothing, nothing partial
is ever visible or left behind, and a mismatching file never becomes an image's file."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from services.importer import transfer
from shared.net.fetch import FetchError
from shared.store import LocalStore, StoreError, StoreUnavailable, check_uuid, open_store

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
    with pytest.raises(ValueError, match="S3"):
        open_store("s3://bucket")
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


def test_discard_partials_removes_only_that_images_partial_files(store):
    other = "9a8b7c6d-1111-2222-3333-444455556666"
    store.upload(UUID, "dead-attempt").write(b"1")
    store.upload(other, "running").write(b"2")
    assert store.discard_partials(UUID) == 1
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
