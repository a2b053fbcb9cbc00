"""An image store in an S3-compatible object store (AWS S3, Ceph radosgw, MinIO...).

Layout under ``s3://<bucket>/<prefix>`` (the directory store's, as object keys)::

    <prefix><uuid>/manifest        the image's manifest (JSON), written last
    <prefix><uuid>/file            the image's file
    <prefix><uuid>/.file.md5       the file's MD5, with the ETag and size of the file it is of
    <prefix><uuid>/.removing.<r>   a removal of the image under way (empty; written before anything goes)
    <prefix>.imagesvc-store        the store's identity (a uuid, written once)
    <prefix>.probe-<random>        the health check's probe (written and deleted at once)

How the directory store's guarantees map onto objects:

- a file is uploaded as a multipart upload *to its final key*, part by part while the caller
  writes (one part buffered at a time); S3 makes the object visible only when the upload is
  completed, which is ``commit``'s last step: the rename of the directory store. A file smaller
  than one part is sent by ``commit`` as one PUT. ``abort`` aborts the multipart upload, so
  nothing of the attempt is left;
- an unfinished multipart upload is the partial file: ``survey`` lists it (age from its start),
  ``remove``, ``discard_temporaries`` and ``discard_leftovers`` abort it;
- a manifest is one PUT, which S3 makes atomic for readers; no temporaries;
- ``delete`` first writes a removal marker (``.removing.<random>``), then deletes the manifest:
  the point of no return, the image leaves the store at once for every reader. Everything after
  (the file, the MD5, unfinished uploads, the marker last) is best effort: logged, never raised,
  so a ``delete`` that raises has removed nothing of the image. What it could not remove stays
  under the marker, which ``survey`` reports as TRASH (the sweeper, ``remove``,
  ``discard_temporaries`` and ``restore`` finish it). There is no trash to move an image back
  from: ``restore`` reports the image there iff its manifest still is (dropping a failed
  removal's marker), else completes the removal;
- a file is verified once stored: a multipart upload's ETag is computed locally (the MD5 of the
  parts' MD5s, ``-<parts>``) and compared with the stored object's (a mismatch deletes the
  object and fails the commit); every part and single PUT carries its Content-MD5, so the server
  refuses a part damaged on the way;
- the MD5 of a committed file is computed while it is uploaded and stored beside it with the
  file's ETag; it is used only while the file has that ETag (a replaced file has another), so
  it is never stale;
- throttling, server errors (5xx after botocore's retries) and connection failures are
  ``StoreUnavailable`` (try again later), as are a missing bucket, refused credentials or no
  credentials at all; other refusals are ``StoreError``.

boto3 is imported when the store is first used, not when it is opened (``open_store`` runs in
every process's configuration check).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from contextlib import contextmanager
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, TypeVar
from urllib.parse import urlsplit

from imagesvc.shared.crash import crash_point
from imagesvc.shared.store.base import (EntryKind, FileInfo, OpenedFile, StoreEntry, StoreError, StoreUnavailable,
                                        check_uuid)

#: The store's identity object (as the directory store's file).
IDENTITY_KEY = ".imagesvc-store"
_MD5_KEY = ".file.md5"
_PROBE = ".probe-"
_REMOVING = ".removing."
#: Error codes that mean "the server cannot answer now": retried by botocore, then unavailable.
_UNAVAILABLE_CODES = frozenset({"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                                "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
                                "ThrottlingException", "RequestTimeTooSkewed", "503", "500", "502", "504"})
_UPLOAD_MARK = "?uploadId="
#: S3's smallest part (except the last) is 5 MiB; 8 MiB parts reach 80 GiB within 10 000 parts.
DEFAULT_PART_BYTES = 8 * 1024 * 1024
MIN_PART_BYTES = 5 * 1024 * 1024
_MAX_PARTS = 10_000
_HASH_CHUNK = 4 * 1024 * 1024
ADDRESSING_STYLES = ("auto", "path", "virtual")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_SEGMENT = re.compile(r"^[A-Za-z0-9!_.*'()-]+\Z")

T = TypeVar("T")


@dataclass(frozen=True)
class S3Options:
    """How to reach the object store (``IMAGESVC_S3_*``). Region and credentials come from
    boto3's own chain (``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, profiles, instance roles...)."""

    #: The S3 API's URL (e.g. ``http://127.0.0.1:7480``); empty: boto3's own (``AWS_ENDPOINT_URL_S3``,
    #: ``AWS_ENDPOINT_URL``, else AWS).
    endpoint_url: str = ""
    #: ``path`` (``<endpoint>/<bucket>/<key>``, what most S3-compatible servers want), ``virtual``
    #: (``<bucket>.<endpoint>``) or ``auto`` (boto3 decides).
    addressing_style: str = "auto"
    #: Seconds to connect, and to wait for the next bytes of an answer, per request.
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    #: Attempts per request (botocore's standard retry mode: transient errors and throttling).
    max_attempts: int = 3
    #: Bytes per uploaded part (memory held per upload).
    part_bytes: int = DEFAULT_PART_BYTES
    #: Lifetime of ``download_url``'s presigned URLs in seconds; 0: the store offers none.
    presign_seconds: int = 0

    def validate(self) -> None:
        """Raises ValueError naming what is wrong."""
        if self.endpoint_url:
            parts = urlsplit(self.endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"endpoint {self.endpoint_url!r} is not an http:// or https:// URL")
        if self.addressing_style not in ADDRESSING_STYLES:
            raise ValueError(f"addressing style must be one of {', '.join(ADDRESSING_STYLES)}")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_attempts < 1:
            raise ValueError("max attempts must be at least 1")
        if self.part_bytes < MIN_PART_BYTES:
            raise ValueError(f"part size must be at least {MIN_PART_BYTES} bytes (S3's minimum)")
        if self.presign_seconds < 0:
            raise ValueError("presigned URL lifetime must not be negative")


def parse_spec(spec: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")`` (prefix "" when none).
    Raises ValueError saying what is wrong."""
    if not spec.lower().startswith("s3://"):
        raise ValueError(f"{spec!r} is not an s3://bucket/prefix URL")
    rest = spec[len("s3://"):]
    if "?" in rest or "#" in rest:
        raise ValueError("an s3:// store is s3://bucket/prefix, without ?query or #fragment")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError("s3:// needs a bucket: s3://bucket or s3://bucket/prefix")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(f"{bucket!r} is not a bucket name (3-63 characters: lower-case letters, digits, '.' and '-', "
                         f"beginning and ending with a letter or digit)")
    prefix = prefix.strip("/")
    if prefix:
        for segment in prefix.split("/"):
            if segment in ("", ".", "..") or not _SEGMENT.match(segment):
                raise ValueError(f"prefix {prefix!r}: each /-separated part must be letters, digits or !_.*'()- "
                                 f"(not empty, '.' or '..')")
        prefix += "/"
    return bucket, prefix


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "")) or str(
            response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return type(exc).__name__


def _missing(exc: BaseException) -> bool:
    return _error_code(exc) in ("NoSuchKey", "404", "NotFound")


def _unavailable(exc: BaseException) -> bool:
    """Whether a refusal says the store cannot serve now (rather than that the request is wrong)."""
    if _error_code(exc) in _UNAVAILABLE_CODES:
        return True
    response = getattr(exc, "response", None)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(response, dict) else None
    return isinstance(status, int) and status >= 500


def multipart_etag(part_digests: list[bytes]) -> str:
    """The ETag S3 gives an object completed from parts with these MD5 digests (quoted)."""
    joined = hashlib.md5(b"".join(part_digests), usedforsecurity=False).hexdigest()
    return f'"{joined}-{len(part_digests)}"'


def _bare(etag: str) -> str:
    return etag.strip().strip('"')


class S3Upload:
    """A file being uploaded: parts are sent as they fill (``write`` blocks meanwhile), so at
    most one part is held in memory; the object appears only at ``commit``."""

    def __init__(self, store: "S3Store", uuid: str, attempt: str):
        self._store = store
        self._uuid = uuid
        self._key = store.key(uuid, "file")
        self._attempt = attempt
        self._buffer = bytearray()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._digests: list[bytes] = []
        self._finished = False
        self.written = 0

    def write(self, data: bytes) -> None:
        assert not self._finished, "upload already finished"
        self._md5.update(data)
        self.written += len(data)
        self._buffer += data
        part = self._store.options.part_bytes
        while len(self._buffer) >= part:
            chunk = bytes(memoryview(self._buffer)[:part])
            del self._buffer[:part]
            self._send_part(chunk)

    def _send_part(self, chunk: bytes) -> None:
        store = self._store
        if self._upload_id is None:
            started = store.call("start an upload", store.client.create_multipart_upload, Bucket=store.bucket,
                                 Key=self._key, ContentType="application/octet-stream",
                                 Metadata={"imagesvc-attempt": re.sub(r"[^A-Za-z0-9_.-]", "_", self._attempt)[:200]})
            self._upload_id = started["UploadId"]
        number = len(self._parts) + 1
        if number > _MAX_PARTS:
            raise StoreError(f"the file needs more than {_MAX_PARTS} parts: raise IMAGESVC_S3_PART_BYTES",
                             "store_write_failed")
        digest = hashlib.md5(chunk, usedforsecurity=False).digest()
        # Content-MD5: the server refuses (BadDigest) a part damaged on the way.
        sent = store.call("upload a part", store.client.upload_part, Bucket=store.bucket, Key=self._key,
                          UploadId=self._upload_id, PartNumber=number, Body=chunk, ContentMD5=_b64(digest))
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})
        self._digests.append(digest)

    def commit(self) -> None:
        assert not self._finished, "upload already finished"
        store = self._store
        if self._upload_id is None:
            body = bytes(self._buffer)
            done = store.call("store the file", store.client.put_object, Bucket=store.bucket, Key=self._key,
                              Body=body, ContentType="application/octet-stream",
                              ContentMD5=_b64(self._md5.digest()))
            # The server checked the body against its Content-MD5; a single PUT's ETag is its MD5.
            etag = str(done.get("ETag") or f'"{self._md5.hexdigest()}"')
        else:
            if self._buffer:
                self._send_part(bytes(self._buffer))
            store.call("complete the upload", store.client.complete_multipart_upload, Bucket=store.bucket,
                       Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts})
            # Not every server answers Complete with the ETag (radosgw 16 does not), and the
            # answer would only say what the server computed: the stored object's ETag must be
            # the one of the parts hashed here, or what is stored is not what was written.
            expected = multipart_etag(self._digests)
            stored, comparable = store.head_etag(self._key)
            if stored and not comparable:
                expected = stored  # encrypted at rest with KMS: each part was still checked (Content-MD5)
            if _bare(stored) != _bare(expected):
                self._finished = True
                self._buffer = bytearray()
                try:
                    store.delete_key(self._key)
                except StoreError as exc:
                    from imagesvc.shared.logging import get_logger

                    get_logger(__name__).warning("s3.mismatched_file_kept", key=self._key, error=str(exc))
                raise StoreError(f"image store {store.location}: the stored file's ETag {stored or 'none'} is not "
                                 f"the {expected} of the parts written: the file was removed", "store_write_failed")
            etag = expected
        self._buffer = bytearray()
        self._finished = True
        # After the file: an MD5 beside a file it is not of is never used (it names the ETag).
        store.remember_md5(self._uuid, etag, self.written, self._md5.hexdigest())

    def abort(self) -> None:
        self._buffer = bytearray()
        if self._finished:
            return
        self._finished = True
        if self._upload_id is not None:
            self._store.abort_upload(self._key, self._upload_id)

    def __enter__(self) -> "S3Upload":
        return self

    def __exit__(self, exc_type, _exc, _tb) -> None:
        if not self._finished:
            self.abort()


class S3Store:
    """The image store in ``s3://bucket/prefix`` (see the module's docstring)."""

    def __init__(self, spec: str, options: S3Options | None = None, *, client: Any = None):
        self.bucket, self.prefix = parse_spec(spec)
        self.options = options or S3Options()
        self.options.validate()
        self.location = f"s3://{self.bucket}/{self.prefix}"
        if self.options.endpoint_url:
            self.location += f" at {self.options.endpoint_url}"
        self._client = client
        self._client_lock = threading.Lock()
        #: Per image being hashed: its lock and how many callers hold or wait for it (dropped at 0,
        #: so the map holds only the images being hashed now).
        self._md5_locks: dict[str, tuple[threading.Lock, int]] = {}
        self._md5_locks_guard = threading.Lock()

    # --- the connection ------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        options = self.options
        config = Config(connect_timeout=options.connect_timeout, read_timeout=options.read_timeout,
                        retries={"total_max_attempts": options.max_attempts, "mode": "standard"},
                        s3={"addressing_style": options.addressing_style},
                        # Checksums beyond what S3's API requires are not implemented by every
                        # S3-compatible server; the file's integrity is checked by its sha1.
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                        signature_version="s3v4", max_pool_connections=32)
        session = boto3.session.Session()
        return session.client("s3", endpoint_url=options.endpoint_url or None, config=config)

    def call(self, doing: str, method: Callable[..., T], **kwargs: Any) -> T:
        """``method(**kwargs)``, its failure as a StoreError (StoreUnavailable when the store
        cannot be reached at all)."""
        from botocore.exceptions import BotoCoreError, ClientError, ConnectionError as BotoConnectionError

        try:
            return method(**kwargs)
        except ClientError as exc:
            code = _error_code(exc)
            if _unavailable(exc):  # botocore has retried throttling and 5xx already
                raise StoreUnavailable(f"image store {self.location}: cannot {doing}: {code}") from exc
            raise StoreError(f"image store {self.location}: cannot {doing}: {code} {exc}",
                             "store_write_failed" if doing.startswith(("store", "upload", "complete", "start", "write"))
                             else "store_error") from exc
        except (BotoConnectionError, BotoCoreError) as exc:
            raise StoreUnavailable(f"image store {self.location}: cannot {doing}: {exc}") from None

    def key(self, uuid: str, name: str) -> str:
        return f"{self.prefix}{check_uuid(uuid)}/{name}"

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self.call("read the store", self.client.head_object, Bucket=self.bucket, Key=key)
        except StoreError as exc:
            if isinstance(exc.__cause__, ClientError) and _missing(exc.__cause__):
                return None
            raise

    def _get(self, key: str, **kwargs: Any) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self.call("read the store", self.client.get_object, Bucket=self.bucket, Key=key, **kwargs)
        except StoreError as exc:
            if isinstance(exc.__cause__, ClientError) and _missing(exc.__cause__):
                return None
            raise

    def _delete_object(self, key: str) -> None:
        self.call("delete from the store", self.client.delete_object, Bucket=self.bucket, Key=key)

    def delete_key(self, key: str) -> None:
        """Delete one object of this store (raises StoreError)."""
        self._delete_object(key)

    def head_etag(self, key: str) -> tuple[str, bool]:
        """The ETag of the object ``key`` ("" when there is none), and whether it is made of MD5s
        (not for objects encrypted with KMS or a customer's key: their ETag is opaque)."""
        found = self._head(key)
        if found is None:
            return "", True
        opaque = str(found.get("ServerSideEncryption", "")).startswith("aws:kms") or bool(
            found.get("SSECustomerAlgorithm"))
        return str(found.get("ETag", "")), not opaque

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        token: dict[str, Any] = {}
        while True:
            page = self.call("list the store", self.client.list_objects_v2, Bucket=self.bucket, Prefix=prefix,
                             **token)
            yield from page.get("Contents", ())
            if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def _uploads(self, prefix: str) -> Iterator[dict[str, Any]]:
        markers: dict[str, Any] = {}
        while True:
            page = self.call("list the store's uploads", self.client.list_multipart_uploads, Bucket=self.bucket,
                             Prefix=prefix, **markers)
            yield from page.get("Uploads", ())
            if not page.get("IsTruncated"):
                return
            following = {"KeyMarker": page.get("NextKeyMarker", ""),
                         "UploadIdMarker": page.get("NextUploadIdMarker", "")}
            if following == markers or not following["KeyMarker"]:
                return  # a server that says "more" without moving on would be listed forever
            markers = following

    def abort_upload(self, key: str, upload_id: str) -> bool:
        """Abort one multipart upload; True if it was still there. Never raises: an upload left
        behind is found by ``survey`` (the sweeper) and ``discard_temporaries``."""
        from botocore.exceptions import ClientError

        try:
            self.call("abort an upload", self.client.abort_multipart_upload, Bucket=self.bucket, Key=key,
                      UploadId=upload_id)
        except StoreError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, ClientError) and _error_code(cause) in ("NoSuchUpload", "404")):
                from imagesvc.shared.logging import get_logger

                get_logger(__name__).warning("s3.abort_failed", key=key, error=str(exc))
            return False
        return True

    # --- health --------------------------------------------------------------------------------

    def check(self) -> None:
        probe = f"{self.prefix}{_PROBE}{uuidlib.uuid4().hex}"
        try:
            self.call("write a probe", self.client.put_object, Bucket=self.bucket, Key=probe, Body=b"ok")
            self.call("delete a probe", self.client.delete_object, Bucket=self.bucket, Key=probe)
        except StoreError as exc:
            raise StoreUnavailable(f"image store {self.location} is not usable: {exc}") from None

    def identity(self, *, create: bool = False) -> str | None:
        from botocore.exceptions import ClientError

        key = self.prefix + IDENTITY_KEY
        try:
            found = self._read_identity(key)
            if found is not None or not create:
                return found
            try:
                # Create-if-absent: of concurrent creators the first PUT wins, the others are
                # refused (412; 409 while the first is in flight) and read its value.
                self.call("write the store's identity", self.client.put_object, Bucket=self.bucket, Key=key,
                          Body=(str(uuidlib.uuid4()) + "\n").encode(), IfNoneMatch="*")
            except StoreUnavailable:
                raise
            except StoreError as exc:
                cause = exc.__cause__
                if not (isinstance(cause, ClientError) and _error_code(cause) in (
                        "PreconditionFailed", "412", "ConditionalRequestConflict", "409")):
                    raise
            # A server that ignores If-None-Match lets the last PUT win: re-reading makes this
            # creator agree with whoever won so far.
            return self._read_identity(key)
        except StoreUnavailable:
            raise
        except StoreError as exc:
            if exc.code == "invalid_identity":
                raise
            raise StoreUnavailable(f"image store {self.location} is not usable: {exc}") from None

    def _read_identity(self, key: str) -> str | None:
        found = self._get(key)
        if found is None:
            return None
        with found["Body"] as body:
            text = body.read(100).decode("ascii", errors="replace").strip()
        try:
            return str(uuidlib.UUID(text))
        except ValueError:
            raise StoreError(f"s3://{self.bucket}/{key} is not an imagesvc store identity (a uuid): {text[:40]!r}",
                             "invalid_identity") from None

    def free_bytes(self) -> int | None:
        return None

    # --- files ---------------------------------------------------------------------------------

    def upload(self, uuid: str, attempt: str) -> S3Upload:
        return S3Upload(self, check_uuid(uuid), attempt)

    def _image_uploads(self, uuid: str) -> list[tuple[str, str]]:
        return [(found["Key"], found["UploadId"]) for found in self._uploads(f"{self.prefix}{check_uuid(uuid)}/")]

    def discard_temporaries(self, uuid: str) -> int:
        aborted = sum(self.abort_upload(key, upload_id) for key, upload_id in self._image_uploads(uuid))
        return aborted + self._settle(uuid)[1]

    def discard_leftovers(self) -> int:
        return sum(self.remove(entry) for entry in self.survey()
                   if entry.kind not in (EntryKind.IMAGE, EntryKind.UNKNOWN))

    @staticmethod
    def _info(answer: Mapping[str, Any], size: int) -> FileInfo:
        version = str(answer.get("ETag", ""))
        if answer.get("VersionId"):
            version += f"@{answer['VersionId']}"
        return FileInfo(size=size, modified=answer["LastModified"].timestamp(), version=version)

    def file_info(self, uuid: str) -> FileInfo | None:
        found = self._head(self.key(uuid, "file"))
        return None if found is None else self._info(found, int(found["ContentLength"]))

    def open_file(self, uuid: str, start: int = 0, end: int | None = None) -> OpenedFile:
        from botocore.exceptions import ClientError

        key = self.key(uuid, "file")
        if end is not None and end <= start:
            info = self.file_info(uuid)
            if info is None:
                raise FileNotFoundError(f"s3://{self.bucket}/{key}")
            return OpenedFile(_Empty(), info, 0)
        ranged = start > 0 or end is not None
        try:
            found = self._get(key, **({"Range": f"bytes={start}-{'' if end is None else end - 1}"} if ranged else {}))
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and _error_code(cause) == "InvalidRange":
                info = self.file_info(uuid)  # a span past the end: nothing to read
                if info is None:
                    raise FileNotFoundError(f"s3://{self.bucket}/{key}") from None
                return OpenedFile(_Empty(), info, 0)
            raise
        if found is None:
            raise FileNotFoundError(f"s3://{self.bucket}/{key}")
        size = int(found["ContentLength"])
        content_range = found.get("ContentRange")
        if content_range and "/" in content_range:
            size = int(content_range.rsplit("/", 1)[1])
        return OpenedFile(_Body(found["Body"], f"s3://{self.bucket}/{key}"), self._info(found, size),
                          int(found["ContentLength"]))

    def file_path(self, uuid: str) -> str | None:
        return None

    def download_url(self, uuid: str) -> str | None:
        if not self.options.presign_seconds:
            return None
        # Signed locally, but it needs credentials (NoCredentialsError is a StoreUnavailable).
        return self.call("sign a download URL", self.client.generate_presigned_url, ClientMethod="get_object",
                         Params={"Bucket": self.bucket, "Key": self.key(uuid, "file")},
                         ExpiresIn=self.options.presign_seconds)

    def remember_md5(self, uuid: str, etag: str, size: int, md5: str) -> None:
        """Best effort: the cache only saves work, so a store we cannot write still serves."""
        if not etag:
            return
        try:
            self.call("write the MD5", self.client.put_object, Bucket=self.bucket, Key=self.key(uuid, _MD5_KEY),
                      Body=json.dumps({"file": {"etag": etag, "size": size}, "md5": md5}).encode(),
                      ContentType="application/json")
        except StoreError:
            pass

    def _cached_md5(self, uuid: str, info: FileInfo) -> str | None:
        try:
            found = self._get(self.key(uuid, _MD5_KEY))
            if found is None:
                return None
            with found["Body"] as body:
                cached = json.loads(body.read(4096))
        except (StoreError, ValueError):
            return None
        etag = info.version.split("@", 1)[0]
        if not isinstance(cached, dict) or cached.get("file") != {"etag": etag, "size": info.size}:
            return None
        md5 = cached.get("md5")
        return md5 if isinstance(md5, str) and re.fullmatch(r"[0-9a-f]{32}", md5) else None

    def cached_file_md5(self, uuid: str) -> str | None:
        info = self.file_info(uuid)
        return None if info is None else self._cached_md5(uuid, info)

    def file_md5(self, uuid: str) -> str | None:
        known = self.cached_file_md5(uuid)
        if known is not None:
            return known
        with self._md5_lock(uuid):
            for _ in range(3):
                info = self.file_info(uuid)
                if info is None:
                    return None
                known = self._cached_md5(uuid, info)
                if known is not None:
                    return known
                try:
                    handle = self.open_file(uuid)
                except FileNotFoundError:
                    return None
                with handle:
                    if handle.info.version != info.version:
                        continue  # replaced meanwhile: describe the file that is there now
                    digest = hashlib.md5(usedforsecurity=False)
                    while chunk := handle.read(_HASH_CHUNK):
                        digest.update(chunk)
                self.remember_md5(uuid, info.version.split("@", 1)[0], info.size, digest.hexdigest())
                return digest.hexdigest()
            return None

    @contextmanager
    def _md5_lock(self, uuid: str) -> Iterator[None]:
        uuid = check_uuid(uuid)
        with self._md5_locks_guard:
            lock, users = self._md5_locks.get(uuid, (None, 0))
            lock = lock or threading.Lock()
            self._md5_locks[uuid] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._md5_locks_guard:
                lock, users = self._md5_locks[uuid]
                if users <= 1:
                    del self._md5_locks[uuid]
                else:
                    self._md5_locks[uuid] = (lock, users - 1)

    # --- manifests -----------------------------------------------------------------------------

    def write_manifest(self, uuid: str, manifest: Mapping[str, Any]) -> None:
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        # One PUT: readers see the old manifest or the new one, never a part.
        self.call("write the manifest", self.client.put_object, Bucket=self.bucket, Key=self.key(uuid, "manifest"),
                  Body=body, ContentType="application/json",
                  ContentMD5=_b64(hashlib.md5(body, usedforsecurity=False).digest()))

    def manifest(self, uuid: str) -> dict[str, Any] | None:
        found = self._get(self.key(uuid, "manifest"))
        if found is None:
            return None
        with found["Body"] as body:
            data = body.read()
        try:
            parsed = json.loads(data)
        except ValueError:
            raise StoreError(f"the stored manifest of {uuid} is not JSON", "store_corrupt") from None
        return parsed if isinstance(parsed, dict) else None

    # --- removal -------------------------------------------------------------------------------

    def delete(self, uuid: str) -> bool:
        image = f"{self.prefix}{check_uuid(uuid)}/"
        keys = [found["Key"] for found in self._objects(image)]
        manifest = image + "manifest"
        if manifest in keys:
            # The marker first: a removal that gets past the manifest and no further is found
            # (survey: TRASH) and finished, never taken for a file placed by hand.
            marker = f"{image}{_REMOVING}{uuidlib.uuid4().hex}"
            self.call("mark the removal", self.client.put_object, Bucket=self.bucket, Key=marker, Body=b"")
            keys.append(marker)
            self._delete_object(manifest)  # the point of no return: gone for every reader at once
            crash_point("after_manifest_removed")
        # From here on best effort: the image is gone, so raising would tell the caller a lie
        # ("nothing changed"); what stays is under a marker (or is an earlier removal's).
        removed, left = self._finish_removal(uuid, [key for key in keys if key != manifest])
        if left:
            from imagesvc.shared.logging import get_logger

            get_logger(__name__).warning("s3.removal_left_behind", image=uuid, left=left)
        return bool(keys) or removed > 0 or bool(left)

    def _finish_removal(self, uuid: str, keys: list[str] | None = None) -> tuple[int, list[str]]:
        """Delete every object of the image but its manifest (its markers last, and only once
        the rest is gone, so that what cannot be deleted stays marked) and abort its unfinished
        uploads. Never raises: returns how many uploads were aborted and what could not be
        removed (a listing that failed stands for everything)."""
        image = f"{self.prefix}{check_uuid(uuid)}/"
        left: list[str] = []
        aborted = 0
        try:
            if keys is None:
                keys = [found["Key"] for found in self._objects(image) if found["Key"] != image + "manifest"]
            markers = [key for key in keys if key[len(image):].startswith(_REMOVING)]
            for key in keys:
                if key not in markers:
                    try:
                        self._delete_object(key)
                    except StoreError as exc:
                        left.append(f"{key}: {exc}")
            for key, upload_id in self._image_uploads(uuid):
                aborted += self.abort_upload(key, upload_id)  # logs what it cannot abort (survey finds it)
            if not left:  # the markers only once nothing else is left for them to mark
                for key in markers:
                    self._delete_object(key)
        except StoreError as exc:
            left.append(f"{image}: {exc}")
        return aborted, left

    def _markers(self, uuid: str) -> list[str]:
        image = f"{self.prefix}{check_uuid(uuid)}/"
        return [found["Key"] for found in self._objects(image + _REMOVING)]

    def _settle(self, uuid: str) -> tuple[bool, int]:
        """Settle the removals of ``uuid`` that were left half done: (whether the image is there,
        how many removals were settled). An image whose manifest is there keeps everything but the
        markers (a removal that failed before its point of no return); one without a manifest but
        with a marker is removed completely. Raises StoreError when the store cannot tell."""
        markers = self._markers(uuid)
        if self._head(self.key(uuid, "manifest")) is not None:
            for key in markers:
                self._delete_object(key)
            return True, len(markers)
        if markers:
            _, left = self._finish_removal(uuid)
            if left:
                raise StoreError(f"image store {self.location}: cannot finish the removal of {uuid}: "
                                 f"{'; '.join(left)}", "store_delete_failed")
        return False, len(markers)

    def restore(self, uuid: str) -> bool:
        markers = self._markers(uuid)
        if self._head(self.key(uuid, "manifest")) is not None:
            for key in markers:  # a removal that failed before the manifest: nothing of it to undo
                try:
                    self._delete_object(key)
                except StoreError:
                    pass  # found by survey, dropped by the sweeper
            return True
        # The removal got past the manifest (or never began): the image is gone; finish it, best
        # effort (what stays is marked, or is a file without a manifest of no image).
        _, left = self._finish_removal(uuid)
        if left:
            from imagesvc.shared.logging import get_logger

            get_logger(__name__).warning("s3.removal_left_behind", image=uuid, left=left)
        return False

    # --- what is in the store ------------------------------------------------------------------

    def uuids(self) -> list[str]:
        found = []
        for listed in self._objects(self.prefix):
            uuid, _, name = listed["Key"][len(self.prefix):].partition("/")
            if name == "manifest" and _uuid_of(uuid) == uuid:
                found.append(uuid)
        return sorted(found)

    def survey(self) -> list[StoreEntry]:
        now = time.time()
        images: dict[str, dict[str, Any]] = {}
        found: list[StoreEntry] = []
        for listed in self._objects(self.prefix):
            path = listed["Key"][len(self.prefix):]
            age = max(0.0, now - listed["LastModified"].timestamp())
            size = int(listed.get("Size", 0))
            head, _, name = path.partition("/")
            if path == IDENTITY_KEY:
                continue  # part of the store, like its root
            if not name and path.startswith(_PROBE):
                found.append(StoreEntry(kind=EntryKind.SCRATCH, path=path, uuid=None, age=age, size=size))
            elif name and _uuid_of(head) == head and (name in ("manifest", "file", _MD5_KEY)
                                                      or (name.startswith(_REMOVING) and "/" not in name)):
                image = images.setdefault(head, {"age": age, "size": 0, "manifest": False, "file": False,
                                                 "markers": []})
                if name.startswith(_REMOVING):
                    image["markers"].append((path, age))
                    continue
                image["age"] = min(image["age"], age)
                if name == "file":
                    image["size"] = size
                    image["file"] = True
                elif name == "manifest":
                    image["manifest"] = True
            else:
                found.append(StoreEntry(kind=EntryKind.UNKNOWN, path=path, uuid=_uuid_of(head) if name else None,
                                        age=age, size=size))
        for uuid, image in images.items():
            for path, age in image["markers"]:
                # A removal under way or left half done: what is left of the image is its, unless
                # the manifest is still there (a removal that failed before it: the marker alone).
                found.append(StoreEntry(kind=EntryKind.TRASH, path=path, uuid=uuid, age=age,
                                        size=0 if image["manifest"] else image["size"]))
            if image["markers"] and not image["manifest"]:
                continue
            found.append(StoreEntry(kind=EntryKind.IMAGE, path=uuid, uuid=uuid, age=image["age"], size=image["size"],
                                    has_manifest=image["manifest"], has_file=image["file"]))
        for upload in self._uploads(self.prefix):
            path = upload["Key"][len(self.prefix):]
            head, _, name = path.partition("/")
            found.append(StoreEntry(kind=EntryKind.PARTIAL, path=f"{path}{_UPLOAD_MARK}{upload['UploadId']}",
                                    uuid=_uuid_of(head) if name == "file" else None,
                                    age=max(0.0, now - upload["Initiated"].timestamp()), size=0))
        return sorted(found, key=lambda entry: entry.path)

    def remove(self, entry: StoreEntry) -> bool:
        if entry.kind == EntryKind.PARTIAL:
            path, mark, upload_id = entry.path.partition(_UPLOAD_MARK)
            if not mark or not upload_id:
                raise ValueError(f"not an unfinished upload: {entry.path!r}")
            return self.abort_upload(self.prefix + path, upload_id)
        if entry.kind == EntryKind.SCRATCH:
            if "/" in entry.path or not entry.path.startswith(_PROBE):
                raise ValueError(f"not a scratch object of this store: {entry.path!r}")
            key = self.prefix + entry.path
            if self._head(key) is None:
                return False
            self._delete_object(key)
            return True
        if entry.kind == EntryKind.TRASH:
            head, _, name = entry.path.partition("/")
            if _uuid_of(head) != head or not name.startswith(_REMOVING) or "/" in name:
                raise ValueError(f"not a removal of this store: {entry.path!r}")
            marker = self.prefix + entry.path
            if self._head(marker) is None:
                return False  # settled meanwhile
            if self._head(self.key(head, "manifest")) is not None:
                # A removal that failed before its point of no return: its marker alone (another
                # removal of the image may have begun since, with a marker of its own).
                self._delete_object(marker)
                return True
            _, left = self._finish_removal(head)
            if left:
                raise StoreError(f"image store {self.location}: cannot finish the removal of {head}: "
                                 f"{'; '.join(left)}", "store_delete_failed")
            return True
        raise ValueError(f"{entry.kind} {entry.path!r} is not a temporary (an image goes with delete)")


class _Body:
    """An object's body whose read errors are OSErrors, as a local file's are (every reader of a
    store file handles those)."""

    def __init__(self, body: Any, where: str):
        self._body = body
        self._where = where

    def read(self, size: int = -1) -> bytes:
        from botocore.exceptions import BotoCoreError
        from urllib3.exceptions import HTTPError

        try:
            return self._body.read() if size is None or size < 0 else self._body.read(size)
        except (BotoCoreError, HTTPError) as exc:
            raise OSError(f"cannot read {self._where}: {exc}") from None

    def close(self) -> None:
        self._body.close()


class _Empty:
    def read(self, _size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _uuid_of(name: str) -> str | None:
    try:
        return check_uuid(name)
    except StoreError:
        return None
