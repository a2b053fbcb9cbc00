"""What every image store offers (see ``shared.store`` for the contract)."""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Mapping, Protocol


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
    #: Opaque tag of this version of the file: a replaced file has another one (the local store:
    #: inode, mtime and size; the S3 store: the object's ETag).
    version: str = ""


class OpenedFile:
    """A file opened for reading (``ImageStore.open_file``): ``info`` describes the version that
    was opened, whatever happens to the image's file afterwards; ``read`` returns the bytes of
    the requested span only, then b"". Closes ``raw`` when closed."""

    def __init__(self, raw: Any, info: FileInfo, length: int | None = None):
        self._raw = raw
        self.info = info
        self._left = length

    def read(self, size: int = -1) -> bytes:
        if self._left is not None:
            if self._left <= 0:
                return b""
            size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._raw.read() if size is None or size < 0 else self._raw.read(size)
        if self._left is not None:
            self._left -= len(data)
        return data

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> "OpenedFile":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class EntryKind(StrEnum):
    """What a name in the store is (``ImageStore.survey``)."""

    #: An image's directory: its manifest, file and cached MD5.
    IMAGE = "image"
    #: A file being written by a task, named by the image and the task's attempt.
    PARTIAL = "partial"
    #: A manifest being written (renamed over the image's manifest when complete).
    MANIFEST_TEMP = "manifest_temp"
    #: An image's data being removed (moved out of sight first, then emptied).
    TRASH = "trash"
    #: A short-lived file of a process that holds no lease (the MD5 cache's temporary, the
    #: health check's probe): only its age tells that its writer is gone.
    SCRATCH = "scratch"
    #: Anything imagesvc does not write.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class StoreEntry:
    """One name ``ImageStore.survey`` found."""

    kind: EntryKind
    #: Relative to the store's root, ``/``-separated.
    path: str
    #: The image the name belongs to (its uuid), or None when the name says none.
    uuid: str | None
    #: Seconds since it last changed.
    age: float
    #: Bytes it holds (a directory: its files together).
    size: int
    #: For an image's directory: whether it holds a manifest, and a file.
    has_manifest: bool = False
    has_file: bool = False


class Upload(Protocol):
    """A file being written; nobody sees it until ``commit``."""

    def write(self, data: bytes) -> None: ...

    @property
    def written(self) -> int: ...

    def commit(self) -> None:
        """Make the file durable and publish it as the image's file (replacing an older one) in
        one step: before it, readers see the old file (or none), after it the whole new one.
        Raises OSError or StoreError when that fails (then nothing was published)."""

    def abort(self) -> None:
        """Remove what was written (idempotent; also after a failed commit). Never raises for
        what it cannot remove: that is left for ``discard_temporaries`` and the sweeper."""


class ImageStore(Protocol):
    #: For logs and messages: where the store is.
    location: str

    def check(self) -> None:
        """Raise StoreUnavailable unless the store can be read and written now."""

    def identity(self, *, create: bool = False) -> str | None:
        """The store's identity: a uuid written into the store once, so that processes on
        different machines (different paths) can tell whether they opened the same store. None
        when it has none and ``create`` is false; with ``create`` it gets one (concurrent creators
        agree on one). Raises StoreUnavailable when the store cannot be read (or written, to create
        it), StoreError when what is there is not an identity."""

    def free_bytes(self) -> int | None:
        """Space left for new files, or None when the store cannot tell (an object store)."""

    def upload(self, uuid: str, attempt: str) -> Upload:
        """Start writing the file of ``uuid``; ``attempt`` tells concurrent partial files apart."""

    def discard_temporaries(self, uuid: str) -> int:
        """Remove what interrupted work on ``uuid`` left: its partial files, its manifest
        temporaries and its removals left half done; returns how many. Only for the holder of the
        image's lease (an earlier attempt's leftovers are then the only ones there can be)."""

    def discard_leftovers(self) -> int:
        """Remove every temporary (partial files, manifest temporaries, removals left half done,
        scratch files) of any image; returns how many. Only for a caller that knows that nothing
        writes the store meanwhile (``serve`` starting: its store is written by its own threads
        alone)."""

    def survey(self) -> list[StoreEntry]:
        """Every name in the store, each image's directory as one entry (its temporaries and
        anything unknown inside it as entries of their own). An object store lists its
        unfinished multipart uploads as PARTIAL entries (their age counted from their start)."""

    def remove(self, entry: StoreEntry) -> bool:
        """Remove a temporary, removal or scratch file ``survey`` found (an image's directory goes
        with ``delete``). True if it was still there."""

    def write_manifest(self, uuid: str, manifest: Mapping[str, Any]) -> None:
        """Publish ``manifest`` (atomically replacing the previous one)."""

    def manifest(self, uuid: str) -> dict[str, Any] | None:
        """The image's manifest, or None if the image is not in the store."""

    def file_info(self, uuid: str) -> FileInfo | None:
        """Size, change time and version of the image's file, or None when there is none."""

    def open_file(self, uuid: str, start: int = 0, end: int | None = None) -> OpenedFile:
        """The image's file for reading, bytes ``start`` up to ``end`` (exclusive; None: to its
        end) only: an object store fetches just that span. ``info`` of the result is the opened
        version's. Raises FileNotFoundError when there is none."""

    def file_path(self, uuid: str) -> str | None:
        """A local filesystem path of the file (for sendfile), or None if not local."""

    def download_url(self, uuid: str) -> str | None:
        """A short-lived URL from which any HTTP client can GET the image's file (an object
        store's presigned URL, when the store was opened with them), or None: then the file is
        served through ``open_file``."""

    def file_md5(self, uuid: str) -> str | None:
        """The hex MD5 of the image's file, or None when there is none. Computed at most once per
        version of the file (a cache that a changed file invalidates), so only the first call
        after a publication reads the whole file."""

    def cached_file_md5(self, uuid: str) -> str | None:
        """``file_md5`` if it is known without reading the file, else None (never slow)."""

    def delete(self, uuid: str) -> bool:
        """Remove the image (manifest, file, partials) and whatever an interrupted removal of it
        left; the image leaves the store (its manifest goes) before anything else of it does.
        True if there was something to remove. Raises StoreError only before the image left the
        store (or when the store cannot tell whether it did: ``restore`` settles that); what
        cannot be freed afterwards is logged and left as a half-done removal (TRASH)."""

    def restore(self, uuid: str) -> bool:
        """Settle an interrupted removal of the image. True if the image is there afterwards,
        False if its data is gone for good (then what is left of it is removed).

        A store that removes by moving aside (the local directory) moves a removal that is still
        whole back. A store that cannot (an object store, whose removal deletes the manifest
        first) has nothing to move back: the image is there iff its manifest still is, and a
        removal that got past the manifest is completed."""

    def uuids(self) -> list[str]:
        """Uuids of the images in the store (those with a manifest), sorted."""
