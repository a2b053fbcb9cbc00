"""The image store: where an image server keeps each image's manifest and file.

``open_store(spec)`` builds the store a process was configured with (``IMAGESVC_IMAGE_STORE``):
``none`` (no image server: the original's database-level operations), a local directory
(``shared.store.local``) or an S3-compatible bucket, ``s3://bucket/prefix`` (``shared.store.s3``).

Contract of every store (what the consumers and the image server rely on):

- an image is *in the store* once its manifest is; its file is published (renamed into place,
  or its multipart upload completed: complete and durable) before its manifest, so a reader that
  finds a manifest finds the whole file;
- a file is written through ``Upload``: under a partial name (an unfinished multipart upload) no
  reader looks at, then either committed (one rename; completing the upload) or aborted (removed);
  ``discard_temporaries(uuid)`` removes whatever an interrupted attempt left behind (partial
  files and uploads, manifest temporaries, half-done removals);
- ``delete`` makes the image disappear at once (one rename; marking the removal, then deleting
  the manifest), then frees the space, and also empties what an interrupted removal of the image
  left. A ``delete`` that raises StoreError has not taken the image out of the store (except
  when the store cannot tell whether its one decisive step happened: ``restore`` then says);
  past that step nothing raises, and what could not be freed is left as a half-done removal
  (``survey``: TRASH) for ``discard_temporaries`` and the sweeper to finish. ``restore`` settles
  an interrupted removal: the directory store moves it back while it is still whole, the S3 store
  (which has nothing to move back) keeps the image iff its manifest is still there;
- ``survey`` lists every name in the store by kind and image, ``remove`` removes one temporary:
  what no live task owns is decided by whoever calls them (``services.sweeper.garbage``);
- a file's MD5 is computed once per version of the file and cached beside it; a stale cache
  (the file was replaced) is never used;
- uuids are checked (canonical, lower-case): no name from a message can reach outside the store.
"""

from __future__ import annotations

import re

from imagesvc.shared.store.base import (EntryKind, FileInfo, ImageStore, OpenedFile, StoreEntry, StoreError,
                                        StoreUnavailable, Upload, check_uuid)
from imagesvc.shared.store.local import LocalStore
from imagesvc.shared.store.s3 import S3Options, S3Store


def open_store(spec: str, s3: S3Options | None = None) -> ImageStore | None:
    """The store named by ``spec``: ``none`` -> None, ``s3://bucket/prefix`` an S3Store reached
    with ``s3`` (default options: boto3's own endpoint), anything else a local directory path
    (``file://`` optional). Opening connects to nothing. Raises ValueError for a spec (or
    options) this build cannot serve, saying what is wrong."""
    spec = spec.strip()
    if not spec:
        raise ValueError("empty: 'none', a directory or s3://bucket/prefix")
    if spec.lower() == "none":
        return None
    if spec.lower().startswith("s3://"):
        return S3Store(spec, s3)
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", spec) and not spec.startswith("file://"):
        raise ValueError(f"{spec!r}: a directory, file:///directory or s3://bucket/prefix")
    if spec.startswith("file://"):
        spec = spec[len("file://"):]
    return LocalStore(spec)


__all__ = ["EntryKind", "FileInfo", "ImageStore", "LocalStore", "OpenedFile", "S3Options", "S3Store", "StoreEntry",
           "StoreError", "StoreUnavailable", "Upload", "check_uuid", "open_store"]
