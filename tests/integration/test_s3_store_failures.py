"""The S3 store when the object store fails part way, against a real S3 server (the
``s3_endpoint`` fixture): the failures are injected between the store and a real client, and
what is then in the bucket is the server's.

- a removal that fails after its point of no return (the manifest) does not raise, and what it
  left is a marked removal (TRASH) that the sweeper finishes; one that fails before it raises
  and leaves the image whole;
- a multipart file is verified once stored (its ETag, computed from the parts) and its MD5
  cached at once; each part carries its Content-MD5, so the server refuses a damaged one;
- throttling and server errors are StoreUnavailable; listings end.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any, Callable

import pytest

from imagesvc.shared.store import EntryKind, StoreError, StoreUnavailable
from imagesvc.shared.store.s3 import S3Store, multipart_etag
from tests.integration.test_store_contract import PART, _s3_kit, _write


class Faulty:
    """A boto3 client whose calls go to the real one, except where ``fail(method, kwargs)``
    returns an exception to raise instead (before the call) or ``after`` (once the call went
    through: its answer lost)."""

    def __init__(self, real: Any):
        self.real = real
        self.rules: list[tuple[str, Callable[[dict], bool], str]] = []

    def refuse(self, method: str, when: Callable[[dict], bool], *, code: str = "InternalError",
               after: bool = False) -> None:
        self.rules.append((method, when, ("after:" if after else "") + code))

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.real, name)

        def call(**kwargs: Any) -> Any:
            for rule_method, when, code in self.rules:
                if rule_method == name and when(kwargs):
                    if code.startswith("after:"):
                        method(**kwargs)
                    return _raise(name, code.removeprefix("after:"))
            return method(**kwargs)

        return call


def _raise(operation: str, code: str) -> Any:
    from botocore.exceptions import ClientError

    raise ClientError({"Error": {"Code": code, "Message": "injected"}, "ResponseMetadata": {"HTTPStatusCode": 400}},
                      operation)


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    made, cleanup = _s3_kit(s3_endpoint, monkeypatch)
    yield made
    cleanup()


@pytest.fixture
def catalogue(tmp_path):
    from imagesvc.shared.db.engine import make_engine
    from imagesvc.shared.db.migrate import upgrade

    path = tmp_path / "catalogue.db"
    upgrade(f"sqlite:///{path}")
    engine = make_engine(f"sqlite:///{path}", pool_size=1)
    yield engine
    engine.dispose()


def _published(store: S3Store, size: int = 2000) -> str:
    image = str(uuid.uuid4())
    _write(store, image, os.urandom(size)).commit()
    store.write_manifest(image, {"uuid": image})
    store.file_md5(image)
    return image


def _faulty(store: S3Store) -> Faulty:
    faulty = Faulty(store.client)
    store._client = faulty
    return faulty


def test_a_removal_failing_past_the_manifest_does_not_raise_and_is_finished_by_the_sweeper(s3, catalogue):
    from imagesvc.services.sweeper import garbage

    store = s3.store
    image = _published(store)
    faulty = _faulty(store)
    faulty.refuse("delete_object", lambda kwargs: kwargs["Key"].endswith("/file"))
    assert store.delete(image) is True  # the image left the store: that is what the caller must hear
    assert store.manifest(image) is None and store.uuids() == []
    assert store.file_info(image) is not None  # the file could not be deleted...
    entries = [entry for entry in store.survey() if entry.uuid == image]
    assert [(entry.kind, entry.size) for entry in entries] == [(EntryKind.TRASH, 2000)]  # ...it is a removal's
    store._client = faulty.real
    swept = garbage.sweep(catalogue, store)  # no record of the image: the start-up sweep finishes it
    assert [(found.finding, found.image, found.removed) for found in swept.findings] == [
        (garbage.GARBAGE, image, True)]
    assert s3.leftovers(image) == []


def test_a_removal_failing_before_the_manifest_raises_and_leaves_the_image_whole(s3, catalogue):
    from imagesvc.services.sweeper import garbage

    store = s3.store
    image = _published(store)
    faulty = _faulty(store)
    faulty.refuse("delete_object", lambda kwargs: kwargs["Key"].endswith("/manifest"))
    with pytest.raises(StoreError):
        store.delete(image)
    store._client = faulty.real
    assert store.manifest(image) == {"uuid": image} and store.uuids() == [image]
    assert store.restore(image) is True  # ...and drops the failed removal's marker
    assert [entry.kind for entry in store.survey()] == [EntryKind.IMAGE]
    assert [key.rsplit("/", 1)[1] for key in s3.leftovers(image)] == [".file.md5", "file", "manifest"]
    assert garbage.sweep(catalogue, store).findings == [
        garbage.Finding(garbage.GARBAGE, path=image, image=image, bytes=2000, removed=False,
                        why="an image directory without a record")]


def test_a_lost_answer_to_the_manifests_delete_is_settled_by_restore(s3):
    store = s3.store
    image = _published(store)
    faulty = _faulty(store)
    faulty.refuse("delete_object", lambda kwargs: kwargs["Key"].endswith("/manifest"), after=True)
    with pytest.raises(StoreError):
        store.delete(image)  # cannot tell whether the image is gone
    store._client = faulty.real
    assert store.restore(image) is False  # it is: the removal is finished
    assert s3.leftovers(image) == []


def test_discard_temporaries_finishes_a_half_done_removal(s3):
    store = s3.store
    image = _published(store)
    faulty = _faulty(store)
    faulty.refuse("delete_object", lambda kwargs: not kwargs["Key"].endswith("/manifest"))
    assert store.delete(image) is True
    store._client = faulty.real
    assert len(s3.leftovers(image)) == 3  # file, MD5, marker
    assert store.discard_temporaries(image) == 1
    assert s3.leftovers(image) == []


def test_a_multipart_files_md5_is_cached_at_its_commit(s3):
    """radosgw answers CompleteMultipartUpload without an ETag: the store computes it."""
    store = s3.store
    image, content = str(uuid.uuid4()), os.urandom(2 * PART + 77)
    _write(store, image, content).commit()
    assert store.cached_file_md5(image) == hashlib.md5(content).hexdigest()  # without reading the file
    digests = [hashlib.md5(content[at:at + PART]).digest() for at in range(0, len(content), PART)]
    assert store.file_info(image).version == multipart_etag(digests)


def test_a_stored_object_that_is_not_what_was_written_fails_the_commit_and_is_removed(s3):
    store = s3.store
    image = str(uuid.uuid4())
    upload = _write(store, image, os.urandom(PART + 10))
    faulty = _faulty(store)
    real = faulty.real

    def complete_with_another_first_part(**kwargs: Any) -> Any:
        # What a broken proxy or server might do: store other bytes under part 1.
        other = real.upload_part(Bucket=kwargs["Bucket"], Key=kwargs["Key"], UploadId=kwargs["UploadId"],
                                 PartNumber=1, Body=os.urandom(PART))
        parts = kwargs["MultipartUpload"]["Parts"]
        parts[0] = {"ETag": other["ETag"], "PartNumber": 1}
        return real.complete_multipart_upload(**kwargs)

    faulty.complete_multipart_upload = complete_with_another_first_part
    with pytest.raises(StoreError) as failed:
        upload.commit()
    assert failed.value.code == "store_write_failed"
    upload.abort()
    store._client = real
    assert store.file_info(image) is None
    assert s3.leftovers(image) == []


def test_a_part_damaged_on_the_way_is_refused_by_the_server(s3):
    store = s3.store
    image = str(uuid.uuid4())
    faulty = _faulty(store)
    real = faulty.real

    def damaged(**kwargs: Any) -> Any:
        body = bytearray(kwargs["Body"])
        body[100] ^= 0xFF
        return real.upload_part(**{**kwargs, "Body": bytes(body)})

    faulty.upload_part = damaged
    upload = store.upload(image, "t1_1")
    with pytest.raises(StoreError):
        upload.write(os.urandom(PART + 10))
        upload.commit()
    upload.abort()
    store._client = real
    assert store.file_info(image) is None and s3.partials() == []


@pytest.mark.parametrize("code", ["SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"])
def test_throttling_and_server_errors_are_unavailable(s3, code):
    store = s3.store
    faulty = _faulty(store)
    faulty.refuse("get_object", lambda kwargs: True, code=code)
    with pytest.raises(StoreUnavailable):
        store.manifest(str(uuid.uuid4()))


def test_a_listing_of_uploads_that_does_not_advance_ends(s3):
    store = s3.store
    faulty = _faulty(store)
    pages: list[dict] = []

    def stuck(**kwargs: Any) -> Any:
        pages.append(kwargs)
        # "More" without moving on (ended after 5 pages, so that a listing that loops fails, not hangs).
        return {"Uploads": [], "IsTruncated": len(pages) < 5, "NextKeyMarker": "k", "NextUploadIdMarker": "u"}

    faulty.list_multipart_uploads = stuck
    assert store.discard_temporaries(str(uuid.uuid4())) == 0
    assert len(pages) == 2  # the first page, then the one that did not move on


def test_no_credentials_means_no_download_url_not_a_crash(s3, monkeypatch):
    from imagesvc.shared.store.s3 import S3Options

    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    unsigned = S3Store(f"s3://{s3.store.bucket}/images", S3Options(
        endpoint_url=s3.store.options.endpoint_url, addressing_style="path", presign_seconds=60))
    with pytest.raises(StoreUnavailable):
        unsigned.download_url(str(uuid.uuid4()))


def test_the_md5_locks_are_held_only_while_a_file_is_hashed(s3):
    store = s3.store
    for _ in range(3):
        image, content = str(uuid.uuid4()), os.urandom(1000)
        _write(store, image, content).commit()
        store.client.delete_object(Bucket=store.bucket, Key=store.key(image, ".file.md5"))
        assert store.file_md5(image) == hashlib.md5(content).hexdigest()  # computed under the image's lock
    assert store._md5_locks == {}  # one per image ever hashed would grow without bound
