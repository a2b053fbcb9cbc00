"""Moving an image file into the store: streamed, verified while it streams, published whole.

The original ran ``esimg import`` (curl into the image directory, then sha1sum); a failure is
reported with esimg's return codes and ``ERROR:`` messages (reference §9.2), plus a stable
``code`` (deviations #9). The file is written under a partial name, hashed (sha1 checked against
the manifest, sha256 recorded) by a second thread while the next chunk is read, and only
committed (fsync + rename; an object store's multipart upload completed) when size and checksum
match; on any failure it is removed (the upload aborted).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from imagesvc.domain import formats
from imagesvc.shared import metrics
from imagesvc.shared.crash import crash_point
from imagesvc.shared.net.fetch import FetchError, Fetcher
from imagesvc.shared.store import ImageStore, StoreError
from imagesvc.shared.store.transfer import (RC_FILE, RC_MANIFEST, RC_MANIFEST_WRITE, RC_SPACE, RC_STORE, SPACE_MARGIN,
                                   ChunkWorker, Progress, ProgressMeter, TransferFailed)

__all__ = ["Expected", "Limits", "Progress", "RC_FILE", "RC_MANIFEST", "RC_MANIFEST_WRITE", "RC_SPACE", "RC_STORE",
           "Received", "SPACE_MARGIN", "TransferFailed", "download", "verify_in_place"]


@dataclass(frozen=True)
class Expected:
    """What the manifest promises about the file (``files[0]``)."""

    size: int
    sha1: str
    #: ``files[0].compression`` (gzip, bzip2, xz or none): how to read the content's head.
    compression: str | None = None

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> "Expected":
        files = manifest.get("files")
        first = files[0] if isinstance(files, list) and files and isinstance(files[0], dict) else {}
        size, sha1 = first.get("size"), first.get("sha1")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise TransferFailed(RC_MANIFEST, "Image manifest has no valid file size (files.0.size)", "manifest_invalid")
        if not isinstance(sha1, str) or len(sha1) != 40 or any(c not in "0123456789abcdef" for c in sha1.lower()):
            raise TransferFailed(RC_MANIFEST, "Image manifest has no valid file checksum (files.0.sha1)",
                                 "manifest_invalid")
        compression = first.get("compression")
        return cls(size=size, sha1=sha1.lower(), compression=compression if isinstance(compression, str) else None)


@dataclass(frozen=True)
class Received:
    size: int
    sha1: str
    sha256: str
    seconds: float


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    connect_timeout: float
    idle_timeout: float
    total_timeout: float


class _Digest:
    """sha1 + sha256 + the partial file, fed through a ``ChunkWorker`` (hashlib and os.write
    release the GIL, so this overlaps with reading the next chunk)."""

    def __init__(self, write: Callable[[bytes], None] | None):
        self.sha1 = hashlib.sha1()
        self.sha256 = hashlib.sha256()
        self._write = write
        self._worker = ChunkWorker(self._consume, name="import-digest")

    def _consume(self, chunk: bytes) -> None:
        self.sha1.update(chunk)
        self.sha256.update(chunk)
        if self._write is not None:
            self._write(chunk)

    def feed(self, chunk: bytes) -> None:
        self._worker.feed(chunk)

    def close(self) -> None:
        self._worker.close()


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc)


def _verify(expected: Expected, size: int, sha1: str) -> None:
    if size != expected.size:
        raise TransferFailed(RC_FILE, f"Image file size mismatch ({expected.size} != {size})", "size_mismatch")
    if sha1 != expected.sha1:
        raise TransferFailed(RC_FILE, f"Image file checksum mismatch ({expected.sha1} != {sha1})", "checksum_mismatch")


class _FormatCheck:
    """Refuses a container format (``domain.formats``) as soon as the content's head shows one."""

    def __init__(self, expected: Expected):
        self._inspector = formats.Inspector(expected.compression)

    def feed(self, chunk: bytes) -> None:
        if not self._inspector.done:
            self._inspector.feed(chunk)
            if self._inspector.done:
                self.finish()

    def finish(self) -> None:
        refused = self._inspector.verdict()
        if refused is not None:
            raise TransferFailed(RC_FILE, f"Image file format is not allowed ({refused})", "unsafe_image")


def download(fetcher: Fetcher, url: str, store: ImageStore, uuid: str, attempt: str, expected: Expected,
             limits: Limits, progress: Progress) -> Received:
    """Stream ``url`` into the store as the file of ``uuid``; committed only if it matches
    ``expected``. Raises TransferFailed (nothing left behind)."""
    if expected.size > limits.max_bytes:
        raise TransferFailed(RC_FILE, f"Image file is too large ({expected.size} > {limits.max_bytes} bytes)",
                             "too_large")
    free = store.free_bytes()
    if free is not None and free < expected.size + SPACE_MARGIN:
        raise TransferFailed(RC_SPACE, "Not enough free space in the image store", "no_space")
    started = time.monotonic()
    try:
        store.discard_temporaries(uuid)  # what an interrupted earlier attempt left
        upload = store.upload(uuid, attempt)
    except (OSError, StoreError) as exc:
        raise TransferFailed(RC_STORE, f"Cannot prepare the image file ({_reason(exc)})",
                             getattr(exc, "code", "store_write_failed")) from None
    committed = False
    try:
        digest = _Digest(upload.write)
        meter = ProgressMeter(expected.size, progress)
        format_check = _FormatCheck(expected)

        def sink(chunk: bytes) -> None:
            format_check.feed(chunk)
            digest.feed(chunk)
            meter.add(len(chunk))
            metrics.bytes_imported(len(chunk))
            crash_point("mid_download")

        try:
            # More bytes than the manifest promised can only end in a mismatch: stop there.
            fetcher.download(url, sink, max_bytes=expected.size, connect_timeout=limits.connect_timeout,
                             idle_timeout=limits.idle_timeout, total_timeout=limits.total_timeout)
        except FetchError as exc:
            if exc.code == "too_large":
                raise TransferFailed(RC_FILE, f"Image file size mismatch ({expected.size} != more)",
                                     "size_mismatch") from None
            raise TransferFailed(RC_FILE, f"Image file download failed ({exc})", exc.code) from None
        finally:
            digest.close()
        format_check.finish()  # a file shorter than the inspected head
        _verify(expected, meter.done, digest.sha1.hexdigest())
        try:
            upload.commit()
        except OSError as exc:
            raise TransferFailed(RC_STORE, f"Cannot store the image file ({exc.strerror or exc})",
                                 "store_write_failed") from None
        except StoreError as exc:  # an object store refused the upload's completion
            raise TransferFailed(RC_STORE, f"Cannot store the image file ({exc})", exc.code) from None
        committed = True
        return Received(meter.done, digest.sha1.hexdigest(), digest.sha256.hexdigest(), time.monotonic() - started)
    except OSError as exc:  # the partial file could not be written
        raise TransferFailed(RC_STORE, f"Cannot write the image file ({exc.strerror or exc})",
                             "store_write_failed") from None
    except StoreError as exc:  # an object store refused a part
        raise TransferFailed(RC_STORE, f"Cannot write the image file ({exc})", exc.code) from None
    finally:
        if not committed:
            upload.abort()


def verify_in_place(store: ImageStore, uuid: str, expected: Expected, progress: Progress) -> Received:
    """"Import from the local image server" (reference §7.3, ``esimg update -c``): the file is
    already in the store; check it instead of downloading it."""
    started = time.monotonic()
    try:
        handle = store.open_file(uuid)
    except FileNotFoundError:  # the only answer that says the file is not there
        raise TransferFailed(RC_MANIFEST, "Image file does not exist on the image server", "file_missing") from None
    except StoreError as exc:  # the store could not answer (now): a store failure, not a missing file
        raise TransferFailed(RC_STORE, f"Cannot read the image file ({exc})", "store_read_failed") from None
    except OSError as exc:
        raise TransferFailed(RC_STORE, f"Cannot read the image file ({exc.strerror or exc})",
                             "store_read_failed") from None
    digest = _Digest(None)
    meter = ProgressMeter(expected.size, progress)
    format_check = _FormatCheck(expected)
    try:
        with handle:
            while chunk := handle.read(1 << 20):
                format_check.feed(chunk)
                digest.feed(chunk)
                meter.add(len(chunk))
    except OSError as exc:  # not a readable file (a directory, an I/O error): trying again cannot help
        raise TransferFailed(RC_STORE, f"Cannot read the image file ({exc.strerror or exc})",
                             "store_read_failed") from None
    finally:
        digest.close()
    format_check.finish()
    _verify(expected, meter.done, digest.sha1.hexdigest())
    return Received(meter.done, digest.sha1.hexdigest(), digest.sha256.hexdigest(), time.monotonic() - started)
