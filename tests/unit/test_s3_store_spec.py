"""The S3 store's settings: ``s3://bucket/prefix`` parsed or refused with the reason, the
``IMAGESVC_S3_*`` and redirect settings checked and handed to the store, nothing connected (or
imported: boto3) while a process only checks its configuration. The store's behaviour against
a real S3 server is tests/integration/test_store_contract.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from imagesvc.shared.config import ConfigError, Settings
from imagesvc.shared.store import S3Store, open_store
from imagesvc.shared.store.s3 import S3Options, parse_spec


@pytest.mark.parametrize("spec, bucket, prefix", [
    ("s3://images", "images", ""),
    ("s3://images/", "images", ""),
    ("S3://my.bucket-1/a/b", "my.bucket-1", "a/b/"),
    ("s3://images//pool/", "images", "pool/"),
])
def test_a_spec_names_a_bucket_and_a_prefix(spec, bucket, prefix):
    if prefix is None:
        with pytest.raises(ValueError, match="prefix"):
            parse_spec(spec)
        return
    assert parse_spec(spec) == (bucket, prefix)


@pytest.mark.parametrize("spec, reason", [
    ("s3://", "needs a bucket"),
    ("s3:///images", "needs a bucket"),
    ("s3://ab", "not a bucket name"),
    ("s3://Images", "not a bucket name"),
    ("s3://under_score", "not a bucket name"),
    ("s3://-images", "not a bucket name"),
    ("s3://a..b", "not a bucket name"),
    ("s3://" + "b" * 64, "not a bucket name"),
    ("s3://images/../other", "prefix"),
    ("s3://images/a/./b", "prefix"),
    ("s3://images/a b", "prefix"),
    ("s3://images?region=x", "without"),
    ("s3://images#x", "without"),
])
def test_a_bad_spec_is_refused_saying_why(spec, reason):
    with pytest.raises(ValueError, match=reason):
        open_store(spec)
    with pytest.raises(ConfigError, match="IMAGESVC_IMAGE_STORE") as caught:
        Settings.from_env({"IMAGESVC_IMAGE_STORE": spec})
    assert reason in str(caught.value)


def test_another_scheme_is_refused_rather_than_taken_for_a_directory():
    with pytest.raises(ConfigError, match="IMAGESVC_IMAGE_STORE.*s3://bucket/prefix"):
        Settings.from_env({"IMAGESVC_IMAGE_STORE": "gs://bucket/images"})


def test_the_settings_reach_the_store():
    settings = Settings.from_env({"IMAGESVC_IMAGE_STORE": "s3://images/pool", "IMAGESVC_S3_ENDPOINT_URL":
                                  "http://127.0.0.1:7480", "IMAGESVC_S3_ADDRESSING_STYLE": "path",
                                  "IMAGESVC_S3_CONNECT_TIMEOUT": "2", "IMAGESVC_S3_READ_TIMEOUT": "9",
                                  "IMAGESVC_S3_MAX_ATTEMPTS": "4", "IMAGESVC_S3_PART_BYTES": str(16 * 1024 * 1024)})
    store = open_store(settings.image_store, settings.s3_options())
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("images", "pool/")
    assert store.options == S3Options(endpoint_url="http://127.0.0.1:7480", addressing_style="path",
                                      connect_timeout=2.0, read_timeout=9.0, max_attempts=4,
                                      part_bytes=16 * 1024 * 1024, presign_seconds=0)
    assert store.location == "s3://images/pool/ at http://127.0.0.1:7480"
    assert store.free_bytes() is None and store.file_path("6a1c5bd8-0a7f-4d3c-9d3f-2f5b4f4f2a10") is None
    assert store.download_url("6a1c5bd8-0a7f-4d3c-9d3f-2f5b4f4f2a10") is None  # no redirect configured


def test_the_client_gets_timeouts_bounded_retries_and_the_addressing_style(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = S3Store("s3://images", S3Options(endpoint_url="http://127.0.0.1:1", addressing_style="path",
                                             connect_timeout=2, read_timeout=9, max_attempts=4))
    config = store.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (2, 9)
    assert config.retries == {"total_max_attempts": 4, "mode": "standard"}
    assert config.s3 == {"addressing_style": "path"}
    assert store.client.meta.endpoint_url == "http://127.0.0.1:1"


@pytest.mark.parametrize("variable, value, says", [
    ("IMAGESVC_S3_ADDRESSING_STYLE", "dns", "IMAGESVC_S3_ADDRESSING_STYLE"),
    ("IMAGESVC_S3_CONNECT_TIMEOUT", "0", "IMAGESVC_S3_CONNECT_TIMEOUT"),
    ("IMAGESVC_S3_READ_TIMEOUT", "-1", "IMAGESVC_S3_READ_TIMEOUT"),
    ("IMAGESVC_S3_MAX_ATTEMPTS", "0", "IMAGESVC_S3_MAX_ATTEMPTS"),
    ("IMAGESVC_S3_PART_BYTES", "1048576", "IMAGESVC_S3_PART_BYTES"),
    ("IMAGESVC_S3_ENDPOINT_URL", "127.0.0.1:7480", "IMAGESVC_S3_ENDPOINT_URL"),
    ("IMAGESVC_S3_ENDPOINT_URL", "ftp://host", "IMAGESVC_S3_ENDPOINT_URL"),
    ("IMAGESVC_IMAGE_SERVER_REDIRECT", "yes", "IMAGESVC_IMAGE_SERVER_REDIRECT"),
    ("IMAGESVC_IMAGE_SERVER_REDIRECT_SECONDS", "0", "IMAGESVC_IMAGE_SERVER_REDIRECT_SECONDS"),
    ("IMAGESVC_IMAGE_SERVER_REDIRECT_SECONDS", "604801", "IMAGESVC_IMAGE_SERVER_REDIRECT_SECONDS"),
])
def test_bad_s3_settings_are_config_errors_naming_the_variable(variable, value, says):
    with pytest.raises(ConfigError, match=says):
        Settings.from_env({"IMAGESVC_IMAGE_STORE": "s3://images", variable: value})


def test_presigned_redirects_need_an_s3_store(tmp_path):
    with pytest.raises(ConfigError, match="IMAGESVC_IMAGE_SERVER_REDIRECT=presigned needs an s3://"):
        Settings.from_env({"IMAGESVC_IMAGE_STORE": str(tmp_path), "IMAGESVC_IMAGE_SERVER_REDIRECT": "presigned"})
    settings = Settings.from_env({"IMAGESVC_IMAGE_STORE": "s3://images", "IMAGESVC_IMAGE_SERVER_REDIRECT":
                                  "presigned", "IMAGESVC_IMAGE_SERVER_REDIRECT_SECONDS": "60"})
    assert settings.s3_options().presign_seconds == 60


def test_presigned_urls_are_signed_locally_for_the_configured_lifetime(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = S3Store("s3://images/pool", S3Options(endpoint_url="http://127.0.0.1:7480", addressing_style="path",
                                                  presign_seconds=120))
    url = store.download_url("6a1c5bd8-0a7f-4d3c-9d3f-2f5b4f4f2a10")
    assert url.startswith("http://127.0.0.1:7480/images/pool/6a1c5bd8-0a7f-4d3c-9d3f-2f5b4f4f2a10/file?")
    assert "Expires=120" in url or "X-Amz-Expires=120" in url


def test_checking_the_configuration_does_not_import_boto3():
    code = ("import sys; from imagesvc.shared.config import Settings; "
            "Settings.from_env({'IMAGESVC_IMAGE_STORE': 's3://images/pool'}); "
            "print('boto3' in sys.modules, 'botocore' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "False"], done.stderr


class _RefusingUpload:
    """An object store's upload that refuses a part (``at="write"``) or its completion."""

    def __init__(self, at: str):
        self.at = at
        self.written = 0
        self.aborted = 0

    def write(self, data: bytes) -> None:
        if self.at == "write":
            from imagesvc.shared.store import StoreError

            raise StoreError("image store s3://b/: cannot upload a part: SlowDown", "store_write_failed")
        self.written += len(data)

    def commit(self) -> None:
        from imagesvc.shared.store import StoreError

        raise StoreError("image store s3://b/: cannot complete the upload: InternalError", "store_write_failed")

    def abort(self) -> None:
        self.aborted += 1


class _RefusingStore:
    def __init__(self, at: str):
        self.made = _RefusingUpload(at)

    def free_bytes(self):
        return None

    def discard_temporaries(self, uuid: str) -> int:
        return 0

    def upload(self, uuid: str, attempt: str):
        return self.made


@pytest.mark.parametrize("at", ["write", "commit"])
def test_an_object_store_refusing_the_export_fails_it_with_the_store_code(tmp_path, at):
    from imagesvc.services.node_agent.export import SnapshotRef, export_snapshot
    from imagesvc.shared.snapshots import FileSnapshotDriver, take_snapshot
    from imagesvc.shared.store.transfer import RC_STORE, TransferFailed

    vm = "6f1d1f3e-aaaa-bbbb-cccc-0123456789ab"
    driver = FileSnapshotDriver(str(tmp_path))
    disk = driver.disk_path(vm, 1)
    (tmp_path / vm).mkdir(parents=True, exist_ok=True)
    with open(disk, "wb") as handle:
        handle.write(b"disk" * 100_000)
    take_snapshot(str(tmp_path), vm, 1, "s1")
    store = _RefusingStore(at)
    with pytest.raises(TransferFailed) as failed:
        export_snapshot(driver, SnapshotRef(vm, 1, "s1"), store, "2f0c7c3e-1111-2222-3333-444455556666", "t1",
                        lambda *_: None)
    assert (failed.value.returncode, failed.value.code) == (RC_STORE, "store_write_failed")
    assert store.made.aborted == 1


@pytest.mark.parametrize("at", ["write", "commit"])
def test_an_object_store_refusing_the_download_fails_the_import_with_the_store_code(at):
    import hashlib as _hashlib

    from imagesvc.services.importer import transfer
    from tests.unit.test_store import LIMITS, FakeFetcher

    content = b"x" * 3000
    store = _RefusingStore(at)
    with pytest.raises(transfer.TransferFailed) as failed:
        transfer.download(FakeFetcher(content), "http://x/f", store, "2f0c7c3e-1111-2222-3333-444455556666", "t",
                          transfer.Expected(size=len(content), sha1=_hashlib.sha1(content).hexdigest()), LIMITS,
                          lambda *_: None)
    assert (failed.value.returncode, failed.value.code) == (transfer.RC_STORE, "store_write_failed")
    assert store.made.aborted == 1


class _UnreachableStore:
    """A store that cannot answer now (``discard_temporaries`` or ``open_file``)."""

    def free_bytes(self):
        return None

    def discard_temporaries(self, uuid: str) -> int:
        from imagesvc.shared.store import StoreUnavailable

        raise StoreUnavailable("image store s3://b/: cannot list the store's uploads: SlowDown")

    def open_file(self, uuid: str, start: int = 0, end: int | None = None):
        from imagesvc.shared.store import StoreError

        raise StoreError("image store s3://b/: cannot read the store: InternalError", "store_error")


def test_a_store_that_cannot_discard_an_earlier_attempt_fails_the_import_with_the_store_code():
    from imagesvc.services.importer import transfer
    from tests.unit.test_store import LIMITS, FakeFetcher

    with pytest.raises(transfer.TransferFailed) as failed:
        transfer.download(FakeFetcher(b"x"), "http://x/f", _UnreachableStore(), "2f0c7c3e-1111-2222-3333-444455556666",
                          "t", transfer.Expected(size=1, sha1="11f6ad8ec52a2984abaafd7c3b516503785c2072"), LIMITS,
                          lambda *_: None)
    assert (failed.value.returncode, failed.value.code) == (transfer.RC_STORE, "store_unavailable")


def test_a_store_error_reading_a_file_in_place_is_a_store_failure_not_a_missing_file(tmp_path):
    from imagesvc.services.importer import transfer
    from imagesvc.shared.store import LocalStore

    expected = transfer.Expected(size=1, sha1="11f6ad8ec52a2984abaafd7c3b516503785c2072")
    with pytest.raises(transfer.TransferFailed) as failed:
        transfer.verify_in_place(_UnreachableStore(), "2f0c7c3e-1111-2222-3333-444455556666", expected,
                                 lambda *_: None)
    assert (failed.value.returncode, failed.value.code) == (transfer.RC_STORE, "store_read_failed")
    with pytest.raises(transfer.TransferFailed) as failed:  # no file at all: that alone is file_missing
        transfer.verify_in_place(LocalStore(str(tmp_path)), "2f0c7c3e-1111-2222-3333-444455556666", expected,
                                 lambda *_: None)
    assert (failed.value.returncode, failed.value.code) == (transfer.RC_MANIFEST, "file_missing")


def test_an_s3_store_without_boto3_is_a_config_error_not_a_traceback_at_first_use():
    code = ("import sys; sys.modules['boto3'] = None\n"  # import boto3 fails, find_spec says 'not installed'
            "import importlib.util\n"
            "real = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda name, *a: None if name == 'boto3' else real(name, *a)\n"
            "from imagesvc.shared.config import ConfigError, Settings\n"
            "try:\n"
            "    Settings.from_env({'IMAGESVC_IMAGE_STORE': 's3://images/pool'})\n"
            "except ConfigError as exc:\n"
            "    print('refused:', exc)\n"
            "Settings.from_env({'IMAGESVC_IMAGE_STORE': '/tmp/images-dir'})\n"
            "print('directory: fine')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused: IMAGESVC_IMAGE_STORE:") and "boto3" in lines[0], lines
    assert lines[1] == "directory: fine"
