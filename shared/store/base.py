"""What every image store offers (see ``shared.store`` for the contract)."""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Mapping, Protocol


class StoreError(Exception):
    """A store operation failed; ``code`` is the stable machine-readable reason."""

    def __init__(self, message: str, code: str = "store_error"):
        super().__init__(message)
        self.code = code


class StoreUnavailable(StoreError):
    """The store does not answer its health check (reference: 428 Image server is not available)."""

    def __init__(self, message: str):
        super().__init__(message, "store_unavailable")


def check_uuid(value: str) -> str:
    """``value`` as a canonical lower-case uuid; raises StoreError for anything else (a path
    component built from a message must never be ``..`` or contain a separator)."""
    try:
        canonical = str(uuidlib.UUID(str(value)))
    except (ValueError, AttributeError, TypeError):
        raise StoreError(f"not an image uuid: {value!r}", "invalid_uuid") from None
    if canonical != str(value).lower():
        raise StoreError(f"not a canonical image uuid: {value!r}", "invalid_uuid")
    return canonical


@dataclass(frozen=True)
class FileInfo:
    size: int
    #: Seconds since the epoch of the file's last change (for HTTP caching headers).
    modified: float


class Upload(Protocol):
    """A file being written; nobody sees it until ``commit``."""

    def write(self, data: bytes) -> None: ...

    @property
    def written(self) -> int: ...

    def commit(self) -> None:
        """Flush to disk and publish as the image's file (replacing an older one)."""

    def abort(self) -> None:
        """Remove what was written (idempotent; also after a failed commit)."""


class ImageStore(Protocol):
    #: For logs and messages: where the store is.
    location: str

    def check(self) -> None:
        """Raise StoreUnavailable unless the store can be read and written now."""

    def free_bytes(self) -> int | None:
        """Space left for new files, or None when the store cannot tell."""

    def upload(self, uuid: str, attempt: str) -> Upload:
        """Start writing the file of ``uuid``; ``attempt`` tells concurrent partial files apart."""

    def discard_partials(self, uuid: str) -> int:
        """Remove every partial file of ``uuid`` (an interrupted attempt's); returns how many."""

    def discard_leftovers(self) -> int:
        """Remove every partial file and every removal left half done, of any image; returns
        how many. Only for a caller that knows that nothing writes the store meanwhile (``serve``
        starting: its store is written by its own threads alone)."""

    def write_manifest(self, uuid: str, manifest: Mapping[str, Any]) -> None:
        """Publish ``manifest`` (atomically replacing the previous one)."""

    def manifest(self, uuid: str) -> dict[str, Any] | None:
        """The image's manifest, or None if the image is not in the store."""

    def file_info(self, uuid: str) -> FileInfo | None: ...

    def open_file(self, uuid: str) -> BinaryIO:
        """The image's file for reading; raises FileNotFoundError when there is none."""

    def file_path(self, uuid: str) -> str | None:
        """A local filesystem path of the file (for sendfile), or None if not local."""

    def file_md5(self, uuid: str) -> str | None:
        """The hex MD5 of the image's file, or None when there is none. Computed at most once per
        version of the file (a cache that a changed file invalidates), so only the first call
        after a publication reads the whole file."""

    def cached_file_md5(self, uuid: str) -> str | None:
        """``file_md5`` if it is known without reading the file, else None (never slow)."""

    def delete(self, uuid: str) -> bool:
        """Remove the image (manifest, file, partials). True if there was something to remove."""

    def uuids(self) -> list[str]:
        """Uuids of the images in the store (those with a manifest), sorted."""
