"""The image store's contract (``shared.store``), the same tests against both kinds of store: a
local directory and an S3 bucket (a real S3 server: the ``s3_endpoint`` fixture, a fresh bucket
per test). What the consumers and the image server rely on: nothing visible before a commit,
nothing left after an abort or a removal (for S3: no object and no unfinished multipart upload),
manifests replaced whole, the MD5 never stale, leftovers found and removed, one identity."""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from imagesvc.shared.store import EntryKind, ImageStore, LocalStore, StoreError, StoreUnavailable
from imagesvc.shared.store.s3 import MIN_PART_BYTES, S3Options, S3Store

PART = MIN_PART_BYTES
MIB = 1024 * 1024


@dataclass
class Kit:
    kind: str
    store: ImageStore
    #: Every name in the store that belongs to ``uuid`` (files, objects, unfinished uploads).
    leftovers: Callable[[str], list[str]]
    #: The unfinished uploads (partial files) of the whole store.
    partials: Callable[[], list[str]]
    #: A store of the same kind that cannot be used (a missing bucket, a root that is a file).
    broken: Callable[[], ImageStore]


def _directory_kit(root: Path) -> Kit:
    def leftovers(image: str) -> list[str]:
        return sorted(str(path.relative_to(root)) for path in root.rglob(f"{image}*"))

    def partials() -> list[str]:
        return sorted(path.name for path in (root / ".partial").glob("*") if not path.name.startswith(".probe-"))

    def broken() -> ImageStore:
        blocker = root.parent / f"not-a-directory-{uuid.uuid4().hex[:6]}"
        blocker.write_bytes(b"x")
        return LocalStore(str(blocker / "store"))

    return Kit("directory", LocalStore(str(root)), leftovers, partials, broken)


def _s3_kit(endpoint: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Kit, Callable[[], None]]:
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", endpoint.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", endpoint.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", endpoint.region)
    monkeypatch.setenv("AWS_REGION", endpoint.region)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    admin = boto3.client("s3", endpoint_url=endpoint.endpoint_url, aws_access_key_id=endpoint.access_key,
                         aws_secret_access_key=endpoint.secret_key, region_name=endpoint.region)
    bucket = f"contract-{uuid.uuid4().hex[:16]}"
    admin.create_bucket(Bucket=bucket)
    options = S3Options(endpoint_url=endpoint.endpoint_url, addressing_style="path", part_bytes=PART,
                        connect_timeout=5, read_timeout=30)
    store = S3Store(f"s3://{bucket}/images", options)

    def keys() -> list[str]:
        return [found["Key"] for page in admin.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for found in page.get("Contents", ())]

    def uploads() -> list[dict[str, Any]]:
        return admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])

    def leftovers(image: str) -> list[str]:
        return sorted([key for key in keys() if image in key]
                      + [f"upload:{found['Key']}" for found in uploads() if image in found["Key"]])

    def partials() -> list[str]:
        return sorted(found["Key"] for found in uploads())

    def broken() -> ImageStore:
        return S3Store(f"s3://missing-{uuid.uuid4().hex[:12]}/images", options)

    def cleanup() -> None:
        for found in uploads():
            admin.abort_multipart_upload(Bucket=bucket, Key=found["Key"], UploadId=found["UploadId"])
        for key in keys():
            admin.delete_object(Bucket=bucket, Key=key)
        admin.delete_bucket(Bucket=bucket)

    return Kit("s3", store, leftovers, partials, broken), cleanup


@pytest.fixture(params=["directory", "s3"])
def kit(request, tmp_path, monkeypatch):
    if request.param == "directory":
        yield _directory_kit(tmp_path / "store")
        return
    made, cleanup = _s3_kit(request.getfixturevalue("s3_endpoint"), monkeypatch)
    yield made
    cleanup()


def _image() -> str:
    return str(uuid.uuid4())


def _write(store: ImageStore, image: str, content: bytes, attempt: str = "t1_1", chunk: int = MIB):
    upload = store.upload(image, attempt)
    for offset in range(0, len(content), chunk):
        upload.write(content[offset:offset + chunk])
    assert upload.written == len(content)
    return upload


def _read(store: ImageStore, image: str, start: int = 0, end: int | None = None) -> bytes:
    with store.open_file(image, start, end) as handle:
        return handle.read()


@pytest.mark.parametrize("size", [0, 300 * 1024, 2 * PART + 123], ids=["empty", "one-put", "multipart"])
def test_a_file_is_visible_only_once_committed(kit, size):
    store, image = kit.store, _image()
    content = os.urandom(size)
    upload = _write(store, image, content)
    assert store.file_info(image) is None
    with pytest.raises(FileNotFoundError):
        store.open_file(image)
    upload.commit()
    assert _read(store, image) == content
    assert store.file_info(image).size == size
    assert kit.partials() == []
    assert store.manifest(image) is None  # in the store only once its manifest is
    assert store.uuids() == []


def test_an_aborted_upload_leaves_nothing(kit):
    store, image = kit.store, _image()
    upload = _write(store, image, os.urandom(PART + MIB))  # a part is already sent
    assert kit.partials() != []
    upload.abort()
    upload.abort()  # idempotent
    assert kit.leftovers(image) == []
    assert kit.partials() == []
    assert store.file_info(image) is None


def test_a_failed_commit_publishes_nothing_and_its_abort_leaves_nothing(kit):
    store, image = kit.store, _image()
    upload = _write(store, image, os.urandom(PART + MIB))
    assert store.discard_temporaries(image) == 1  # its partial is gone behind its back
    with pytest.raises((OSError, StoreError)):
        upload.commit()
    upload.abort()
    assert store.file_info(image) is None
    assert kit.leftovers(image) == []


def test_a_committed_file_replaces_the_old_one_and_its_md5_is_never_stale(kit):
    store, image = kit.store, _image()
    first, second = os.urandom(PART + 5), os.urandom(PART + 7)
    _write(store, image, first).commit()
    assert store.file_md5(image) == hashlib.md5(first).hexdigest()
    assert store.cached_file_md5(image) == hashlib.md5(first).hexdigest()
    old = store.file_info(image)
    _write(store, image, second, attempt="t2_1").commit()
    assert store.cached_file_md5(image) in (None, hashlib.md5(second).hexdigest())
    assert store.file_md5(image) == hashlib.md5(second).hexdigest()
    assert store.cached_file_md5(image) == hashlib.md5(second).hexdigest()
    assert _read(store, image) == second
    assert store.file_info(image).version != old.version


def test_the_md5_of_a_file_is_computed_when_not_known(kit):
    store, image = kit.store, _image()
    content = os.urandom(1000)
    _write(store, image, content).commit()
    if kit.kind == "s3":  # drop the MD5 the upload recorded: the store must compute it
        store.client.delete_object(Bucket=store.bucket, Key=store.key(image, ".file.md5"))
    assert store.cached_file_md5(image) is None
    assert store.file_md5(image) == hashlib.md5(content).hexdigest()
    assert store.cached_file_md5(image) == hashlib.md5(content).hexdigest()
    assert store.file_md5(_image()) is None


def test_manifests_are_written_read_and_replaced_whole(kit):
    store, image = kit.store, _image()
    assert store.manifest(image) is None
    _write(store, image, b"data").commit()
    store.write_manifest(image, {"uuid": image, "name": "one", "v": 1})
    assert store.manifest(image) == {"uuid": image, "name": "one", "v": 1}
    store.write_manifest(image, {"uuid": image, "name": "two"})
    assert store.manifest(image) == {"uuid": image, "name": "two"}
    assert store.uuids() == [image]
    assert [entry.kind for entry in store.survey()] == [EntryKind.IMAGE]


def test_file_info_and_byte_ranges(kit):
    store, image = kit.store, _image()
    content = os.urandom(PART + 4096)
    _write(store, image, content).commit()
    info = store.file_info(image)
    assert info.size == len(content) and info.modified > 0 and info.version
    for start, end in [(0, None), (0, 1), (17, 4113), (PART - 3, PART + 3), (len(content) - 10, len(content)),
                       (len(content) - 10, len(content) + 100), (5, 5)]:
        with store.open_file(image, start, end) as handle:
            assert handle.info == info  # the whole file's description, whatever the span
            assert handle.read() == content[start:end], (start, end)
    with store.open_file(image, 100, 200) as handle:
        assert handle.read(30) + handle.read(1000) + handle.read() == content[100:200]


def test_delete_removes_everything_of_the_image(kit):
    store, image, other = kit.store, _image(), _image()
    for uuid_ in (image, other):
        _write(store, uuid_, os.urandom(2000)).commit()
        store.write_manifest(uuid_, {"uuid": uuid_})
        store.file_md5(uuid_)
    unfinished = _write(store, image, os.urandom(PART + 1), attempt="t9_1")  # an interrupted attempt's
    assert store.delete(image) is True
    assert store.manifest(image) is None and store.file_info(image) is None
    assert kit.leftovers(image) == []
    assert store.uuids() == [other] and store.manifest(other) == {"uuid": other}
    assert store.delete(image) is False
    assert store.restore(image) is False
    assert store.restore(other) is True
    unfinished.abort()


def test_a_stale_partial_is_surveyed_and_removed(kit):
    store, image = kit.store, _image()
    _write(store, image, os.urandom(PART + 10))  # the writer died: neither committed nor aborted
    partial = [entry for entry in store.survey() if entry.kind == EntryKind.PARTIAL]
    assert [(entry.uuid, entry.age >= 0) for entry in partial] == [(image, True)]
    assert store.remove(partial[0]) is True
    assert store.remove(partial[0]) is False
    assert kit.leftovers(image) == [] and kit.partials() == []
    assert [entry for entry in store.survey() if entry.kind != EntryKind.SCRATCH] == []


@pytest.fixture(scope="module")
def catalogue_template(tmp_path_factory) -> Path:
    from imagesvc.shared.db.migrate import upgrade

    path = tmp_path_factory.mktemp("catalogue") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


def test_the_sweeper_removes_a_partial_whose_image_is_not_pending(kit, tmp_path, catalogue_template):
    from imagesvc.services.sweeper import garbage
    from imagesvc.shared.db.engine import make_engine

    copy = tmp_path / "catalogue.db"
    copy.write_bytes(catalogue_template.read_bytes())
    engine = make_engine(f"sqlite:///{copy}", pool_size=1)
    store, image = kit.store, _image()
    _write(store, image, os.urandom(PART + 10))
    swept = garbage.sweep(engine, store)
    assert [(found.finding, found.image, found.removed) for found in swept.findings] == [
        (garbage.GARBAGE, image, True)]
    assert kit.partials() == []
    engine.dispose()


def test_discard_temporaries_removes_only_that_images_partials(kit):
    store, image, other = kit.store, _image(), _image()
    _write(store, image, os.urandom(300)).commit()
    _write(store, image, os.urandom(PART + 10), attempt="t2_1")
    _write(store, other, os.urandom(PART + 10), attempt="t3_1")
    assert store.discard_temporaries(image) == 1
    assert store.discard_temporaries(image) == 0
    assert store.file_info(image).size == 300
    assert [entry.uuid for entry in store.survey() if entry.kind == EntryKind.PARTIAL] == [other]
    assert store.discard_leftovers() == 1
    assert kit.partials() == []


def test_concurrent_creators_agree_on_one_identity(kit):
    store = kit.store
    assert store.identity() is None
    found: list[str | None] = []
    start = threading.Barrier(6)

    def create() -> None:
        start.wait()
        found.append(store.identity(create=True))

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 1 and found[0] is not None
    assert str(uuid.UUID(found[0])) == found[0]
    assert store.identity() == found[0]
    assert [entry for entry in store.survey() if entry.kind != EntryKind.SCRATCH] == []


def test_a_store_that_cannot_be_used_fails_its_check(kit):
    kit.store.check()
    broken = kit.broken()
    with pytest.raises(StoreUnavailable):
        broken.check()
    with pytest.raises(StoreUnavailable):
        broken.identity(create=True)


def test_uuids_lists_images_with_a_manifest_sorted(kit):
    store = kit.store
    images = sorted(_image() for _ in range(3))
    for image in reversed(images):
        store.write_manifest(image, {"uuid": image})
    _write(store, _image(), b"file without a manifest").commit()
    assert store.uuids() == images


def test_names_from_messages_cannot_leave_the_store(kit):
    with pytest.raises(StoreError):
        kit.store.upload("../etc", "t1")
    with pytest.raises(StoreError):
        kit.store.manifest(str(uuid.uuid4())[:-1] + "/")
