"""The image store: where an image server keeps each image's manifest and file.

``open_store(spec)`` builds the store a process was configured with (``IMAGESVC_IMAGE_STORE``):
``none`` (no image server: the original's database-level operations) or a local directory.

Contract of every store (what the consumers and the image server rely on):

- an image is *in the store* once its manifest is; its file is published (renamed into place,
  complete and flushed) before its manifest, so a reader that finds a manifest finds the whole file;
- a file is written through ``Upload``: under a partial name no reader looks at, then either
  committed (one rename) or aborted (removed); ``discard_temporaries(uuid)`` removes whatever an
  interrupted attempt left behind (partial files, manifest temporaries, half-done removals);
- ``delete`` makes the image disappear at once (one rename), then frees the space, and also
  empties what an interrupted removal of the image left; ``restore`` moves an interrupted
  removal back while it is still whole;
- ``survey`` lists every name in the store by kind and image, ``remove`` removes one temporary:
  what no live task owns is decided by whoever calls them (``services.sweeper.garbage``);
- a file's MD5 is computed once per version of the file and cached beside it; a stale cache
  (the file was replaced) is never used;
- uuids are checked (canonical, lower-case): no name from a message can reach outside the store.
"""

from __future__ import annotations

from imagesvc.shared.store.base import (EntryKind, FileInfo, ImageStore, StoreEntry, StoreError, StoreUnavailable, Upload,
                               check_uuid)
from imagesvc.shared.store.local import LocalStore


def open_store(spec: str) -> ImageStore | None:
    """The store named by ``spec``: ``none`` -> None, anything else a local directory path
    (``file://`` optional). Raises ValueError for a spec this build cannot serve."""
    spec = spec.strip()
    if not spec:
        raise ValueError("empty: 'none' or a directory")
    if spec.lower() == "none":
        return None
    if spec.lower().startswith("s3://"):
        raise ValueError("S3-compatible stores are not supported by this build; use a local directory")
    if spec.startswith("file://"):
        spec = spec[len("file://"):]
    return LocalStore(spec)


__all__ = ["EntryKind", "FileInfo", "ImageStore", "LocalStore", "StoreEntry", "StoreError", "StoreUnavailable",
           "Upload", "check_uuid", "open_store"]
