"""An image store in a local directory (shared between machines only through a shared filesystem).

Layout (the original image server's, plus two private directories)::

    <root>/<uuid>/manifest           the image's manifest (JSON), written last
    <root>/<uuid>/file               the image's file
    <root>/.partial/<uuid>.<attempt> files being written (never read by anyone)
    <root>/.trash/<uuid>.<random>    images being removed

Every publication is a rename within one filesystem, after an fsync of the data and followed by
an fsync of the directory, so a crash leaves either the old or the new state, never a torn one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid as uuidlib
from typing import Any, BinaryIO, Mapping

from shared.store.base import FileInfo, StoreError, StoreUnavailable, check_uuid

_PARTIAL = ".partial"
_TRASH = ".trash"
_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalUpload:
    def __init__(self, store: "LocalStore", uuid: str, attempt: str):
        self._store = store
        self._uuid = uuid
        self.path = store.partial_path(uuid, attempt)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.written = 0

    def write(self, data: bytes) -> None:
        assert self._fd is not None, "upload already finished"
        view = memoryview(data)
        while view:
            count = os.write(self._fd, view)
            view = view[count:]
            self.written += count

    def commit(self) -> None:
        assert self._fd is not None, "upload already finished"
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None
        directory = self._store.image_dir(self._uuid)
        os.makedirs(directory, exist_ok=True)
        os.replace(self.path, os.path.join(directory, "file"))
        _fsync_dir(directory)

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "LocalUpload":
        return self

    def __exit__(self, exc_type, _exc, _tb) -> None:
        if self._fd is not None:  # neither committed nor aborted: the block failed
            self.abort()


class LocalStore:
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.location = self.root

    # --- paths ---------------------------------------------------------------------------------

    def image_dir(self, uuid: str) -> str:
        return os.path.join(self.root, check_uuid(uuid))

    def partial_path(self, uuid: str, attempt: str) -> str:
        os.makedirs(os.path.join(self.root, _PARTIAL), exist_ok=True)
        tag = _SAFE.sub("_", attempt)[:80] or "x"
        return os.path.join(self.root, _PARTIAL, f"{check_uuid(uuid)}.{tag}")

    # --- health --------------------------------------------------------------------------------

    def check(self) -> None:
        try:
            os.makedirs(os.path.join(self.root, _PARTIAL), exist_ok=True)
            probe = os.path.join(self.root, _PARTIAL, f".probe-{uuidlib.uuid4().hex}")
            with open(probe, "wb") as handle:
                handle.write(b"ok")
            os.unlink(probe)
        except OSError as exc:
            raise StoreUnavailable(f"image store {self.root} is not usable: {exc.strerror or exc}") from None

    def free_bytes(self) -> int | None:
        try:
            stats = os.statvfs(self.root)
        except OSError:
            return None
        return stats.f_bavail * stats.f_frsize

    # --- files ---------------------------------------------------------------------------------

    def upload(self, uuid: str, attempt: str) -> LocalUpload:
        try:
            return LocalUpload(self, uuid, attempt)
        except OSError as exc:
            raise StoreError(f"cannot write to the image store: {exc.strerror or exc}", "store_write_failed") from None

    def discard_partials(self, uuid: str) -> int:
        prefix = check_uuid(uuid) + "."
        directory = os.path.join(self.root, _PARTIAL)
        removed = 0
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return 0
        for name in names:
            if name.startswith(prefix):
                try:
                    os.unlink(os.path.join(directory, name))
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def file_info(self, uuid: str) -> FileInfo | None:
        try:
            stats = os.stat(os.path.join(self.image_dir(uuid), "file"))
        except FileNotFoundError:
            return None
        return FileInfo(size=stats.st_size, modified=stats.st_mtime)

    def open_file(self, uuid: str) -> BinaryIO:
        return open(os.path.join(self.image_dir(uuid), "file"), "rb")

    def file_path(self, uuid: str) -> str | None:
        path = os.path.join(self.image_dir(uuid), "file")
        return path if os.path.isfile(path) else None

    # --- manifests -----------------------------------------------------------------------------

    def write_manifest(self, uuid: str, manifest: Mapping[str, Any]) -> None:
        directory = self.image_dir(uuid)
        try:
            os.makedirs(directory, exist_ok=True)
            temporary = os.path.join(directory, f".manifest.{uuidlib.uuid4().hex}")
            with open(temporary, "wb") as handle:
                handle.write(json.dumps(manifest, indent=2, sort_keys=True).encode())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, os.path.join(directory, "manifest"))
            _fsync_dir(directory)
        except OSError as exc:
            raise StoreError(f"cannot write the manifest: {exc.strerror or exc}", "store_write_failed") from None

    def manifest(self, uuid: str) -> dict[str, Any] | None:
        try:
            with open(os.path.join(self.image_dir(uuid), "manifest"), "rb") as handle:
                found = json.loads(handle.read())
        except FileNotFoundError:
            return None
        except ValueError:
            raise StoreError(f"the stored manifest of {uuid} is not JSON", "store_corrupt") from None
        return found if isinstance(found, dict) else None

    # --- removal -------------------------------------------------------------------------------

    def delete(self, uuid: str) -> bool:
        directory = self.image_dir(uuid)
        removed = self.discard_partials(uuid) > 0
        trash = os.path.join(self.root, _TRASH)
        try:
            os.makedirs(trash, exist_ok=True)
            doomed = os.path.join(trash, f"{check_uuid(uuid)}.{uuidlib.uuid4().hex}")
            os.replace(directory, doomed)  # gone for every reader at once
        except FileNotFoundError:
            return removed
        except OSError as exc:
            raise StoreError(f"cannot remove the image's data: {exc.strerror or exc}", "store_delete_failed") from None
        _fsync_dir(self.root)
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def uuids(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if name.startswith("."):
                continue
            try:
                check_uuid(name)
            except StoreError:
                continue
            if os.path.isfile(os.path.join(self.root, name, "manifest")):
                found.append(name)
        return sorted(found)
