"""An image store in a local directory (shared between machines only through a shared filesystem).

Layout (the original image server's, plus two private directories)::

    <root>/<uuid>/manifest              the image's manifest (JSON), written last
    <root>/<uuid>/file                  the image's file
    <root>/<uuid>/.file.md5             the file's MD5, cached with the size, mtime and inode it is of
    <root>/<uuid>/.manifest.<random>    a manifest being written
    <root>/<uuid>/.file.md5.<random>    the MD5 cache being written
    <root>/.partial/<uuid>.<attempt>    files being written (never read by anyone)
    <root>/.partial/.probe-<random>     the health check's probe
    <root>/.trash/<uuid>.<random>       images being removed
    <root>/.imagesvc-store              the store's identity (a uuid, written once)

Every publication is a rename within one filesystem, after an fsync of the data and followed by
an fsync of the directory, so a crash leaves either the old or the new state, never a torn one.
Every temporary name starts with the uuid of its image or sits in its image's directory, so the
image's lease (its writer's) and its record tell whose it is (``services.sweeper.garbage``).
"""

from __future__ import annotations

import json
import os
import hashlib
import re
import shutil
import threading
import time
import uuid as uuidlib
from typing import Any, Iterator, Mapping

from imagesvc.shared.crash import crash_point
from imagesvc.shared.store.base import (EntryKind, FileInfo, OpenedFile, StoreEntry, StoreError, StoreUnavailable,
                                        check_uuid)

_PARTIAL = ".partial"
_TRASH = ".trash"
_MD5_CACHE = ".file.md5"
_MANIFEST_TEMP = ".manifest."
_PROBE = ".probe-"
#: The store's identity: a uuid written once into its root (``identity``).
IDENTITY_FILE = ".imagesvc-store"
_HASH_CHUNK = 4 * 1024 * 1024
_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _uuid_of(name: str) -> str | None:
    """The image uuid a name starts with (``<uuid>`` or ``<uuid>.<anything>``), or None."""
    head = name.split(".", 1)[0]
    try:
        return check_uuid(head)
    except StoreError:
        return None


def _tree_size(path: str) -> int:
    if not os.path.isdir(path) or os.path.islink(path):
        return os.lstat(path).st_size
    total = 0
    for directory, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except FileNotFoundError:
                continue
    return total


#: Dirty bytes after which an upload asks the kernel to start writing them out.
WRITEBACK_BYTES = 64 * 1024 * 1024


class LocalUpload:
    """A partial file. Every ``WRITEBACK_BYTES`` a background thread flushes what was written so
    far, so the disk works while the download goes on and ``commit``'s fsync has little left to
    wait for (without it, a 1 GiB import spent half its time in the final fsync)."""

    def __init__(self, store: "LocalStore", uuid: str, attempt: str):
        self._store = store
        self._uuid = uuid
        self.path = store.partial_path(uuid, attempt)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.written = 0
        self._unflushed = 0
        self._flushing: threading.Thread | None = None

    def write(self, data: bytes) -> None:
        assert self._fd is not None, "upload already finished"
        view = memoryview(data)
        while view:
            count = os.write(self._fd, view)
            view = view[count:]
            self.written += count
            self._unflushed += count
        if self._unflushed >= WRITEBACK_BYTES and (self._flushing is None or not self._flushing.is_alive()):
            self._unflushed = 0
            self._flushing = threading.Thread(target=self._flush, args=(self._fd,), name="upload-writeback",
                                              daemon=True)
            self._flushing.start()

    @staticmethod
    def _flush(fd: int) -> None:
        try:
            os.fdatasync(fd)
        except OSError:
            pass  # closed meanwhile (aborted); commit's own fsync is the one that counts

    def _join_flush(self) -> None:
        if self._flushing is not None:
            self._flushing.join()
            self._flushing = None

    def commit(self) -> None:
        assert self._fd is not None, "upload already finished"
        try:
            self._join_flush()
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None
        directory = self._store.image_dir(self._uuid)
        created = not os.path.isdir(directory)
        os.makedirs(directory, exist_ok=True)
        try:
            os.replace(self.path, os.path.join(directory, "file"))
        except OSError:
            if created:  # a failed commit leaves nothing, not even an empty image directory
                try:
                    os.rmdir(directory)
                except OSError:
                    pass
            raise
        _fsync_dir(directory)

    def abort(self) -> None:
        self._join_flush()
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
        # One MD5 computation per image at a time in this process: concurrent first downloads of
        # a multi-GiB file wait for the one computation instead of each reading the whole file.
        self._md5_locks: dict[str, threading.Lock] = {}
        self._md5_locks_guard = threading.Lock()

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

    def identity(self, *, create: bool = False) -> str | None:
        identity_path = os.path.join(self.root, IDENTITY_FILE)
        try:
            found = self._read_identity(identity_path)
            if found is not None or not create:
                return found
            # Written aside and linked into place: a reader never sees half a file, and of two
            # processes creating it at once the first link wins and both return its value.
            os.makedirs(os.path.join(self.root, _PARTIAL), exist_ok=True)
            temp = os.path.join(self.root, _PARTIAL, f"{_PROBE}identity-{uuidlib.uuid4().hex}")
            with open(temp, "w", encoding="ascii") as handle:
                handle.write(str(uuidlib.uuid4()) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temp, identity_path)
            except FileExistsError:
                pass
            finally:
                _unlink(temp)
            _fsync_dir(self.root)
            return self._read_identity(identity_path)
        except OSError as exc:
            raise StoreUnavailable(f"image store {self.root} is not usable: {exc.strerror or exc}") from None

    @staticmethod
    def _read_identity(path: str) -> str | None:
        try:
            with open(path, encoding="ascii", errors="replace") as handle:
                text = handle.read(100).strip()
        except FileNotFoundError:
            return None
        try:
            return str(uuidlib.UUID(text))
        except ValueError:
            raise StoreError(f"{path} is not an imagesvc store identity (a uuid): {text[:40]!r}",
                             "invalid_identity") from None

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

    def _discard_partials(self, uuid: str) -> int:
        prefix = check_uuid(uuid) + "."
        directory = os.path.join(self.root, _PARTIAL)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return 0
        return sum(_unlink(os.path.join(directory, name)) for name in names if name.startswith(prefix))

    def _discard_manifest_temporaries(self, uuid: str) -> int:
        directory = self.image_dir(uuid)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return 0
        return sum(_unlink(os.path.join(directory, name)) for name in names if name.startswith(_MANIFEST_TEMP))

    def _removals(self, uuid: str) -> list[str]:
        """The paths of the image's removals under way or left half done (``.trash/<uuid>.*``)."""
        prefix = check_uuid(uuid) + "."
        directory = os.path.join(self.root, _TRASH)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        return [os.path.join(directory, name) for name in sorted(names) if name.startswith(prefix)]

    @staticmethod
    def _empty_removal(path: str) -> bool:
        """Remove a removal's directory, its manifest first: a removal that still has its
        manifest is whole (``restore`` may move it back), one without is not."""
        if not os.path.lexists(path):
            return False
        if os.path.isdir(path) and not os.path.islink(path):
            _unlink(os.path.join(path, "manifest"))
            shutil.rmtree(path, ignore_errors=True)  # what is left is found by the next sweep
        else:
            _unlink(path)
        return True

    def discard_temporaries(self, uuid: str) -> int:
        removed = self._discard_partials(uuid) + self._discard_manifest_temporaries(uuid)
        return removed + sum(self._empty_removal(path) for path in self._removals(uuid))

    def discard_leftovers(self) -> int:
        return sum(self.remove(entry) for entry in self.survey()
                   if entry.kind not in (EntryKind.IMAGE, EntryKind.UNKNOWN))

    # --- what is in the store ------------------------------------------------------------------

    def survey(self) -> list[StoreEntry]:
        now = time.time()
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        found: list[StoreEntry] = []
        for name in names:
            if name == IDENTITY_FILE:
                continue  # part of the store, like its root
            if name == _PARTIAL:
                found.extend(self._survey_private(name, EntryKind.PARTIAL, now))
            elif name == _TRASH:
                found.extend(self._survey_private(name, EntryKind.TRASH, now))
            elif _uuid_of(name) == name and os.path.isdir(os.path.join(self.root, name)):
                found.extend(self._survey_image(name, now))
            else:
                found.extend(self._entries([(name, EntryKind.UNKNOWN, None)], now))
        return found

    def _entries(self, named: list[tuple[str, EntryKind, str | None]], now: float) -> Iterator[StoreEntry]:
        for path, kind, uuid in named:
            full = os.path.join(self.root, path)
            try:
                stats = os.lstat(full)
                size = _tree_size(full)
            except FileNotFoundError:
                continue  # gone while we looked
            yield StoreEntry(kind=kind, path=path, uuid=uuid, age=max(0.0, now - stats.st_mtime), size=size)

    def _survey_private(self, directory: str, kind: EntryKind, now: float) -> Iterator[StoreEntry]:
        try:
            names = sorted(os.listdir(os.path.join(self.root, directory)))
        except (FileNotFoundError, NotADirectoryError):
            return iter(())
        named = [(f"{directory}/{name}", EntryKind.SCRATCH if name.startswith(_PROBE) else kind, _uuid_of(name))
                 for name in names]
        return self._entries(named, now)

    def _survey_image(self, uuid: str, now: float) -> list[StoreEntry]:
        directory = os.path.join(self.root, uuid)
        try:
            names = os.listdir(directory)
            stats = os.lstat(directory)
        except FileNotFoundError:
            return []
        others = []
        for name in sorted(names):
            if name in ("manifest", "file", _MD5_CACHE):
                continue
            if name.startswith(_MANIFEST_TEMP):
                kind = EntryKind.MANIFEST_TEMP
            elif name.startswith(_MD5_CACHE + "."):
                kind = EntryKind.SCRATCH
            else:
                kind = EntryKind.UNKNOWN
            others.append((f"{uuid}/{name}", kind, uuid))
        has_file = os.path.isfile(os.path.join(directory, "file"))
        image = StoreEntry(kind=EntryKind.IMAGE, path=uuid, uuid=uuid, age=max(0.0, now - stats.st_mtime),
                           size=os.path.getsize(os.path.join(directory, "file")) if has_file else 0,
                           has_manifest=os.path.isfile(os.path.join(directory, "manifest")), has_file=has_file)
        return [image, *self._entries(others, now)]

    def remove(self, entry: StoreEntry) -> bool:
        path = os.path.normpath(os.path.join(self.root, entry.path))
        if not path.startswith(self.root + os.sep):
            raise ValueError(f"not inside the store: {entry.path!r}")
        if entry.kind == EntryKind.TRASH:
            return self._empty_removal(path)
        if entry.kind in (EntryKind.PARTIAL, EntryKind.MANIFEST_TEMP, EntryKind.SCRATCH):
            return _unlink(path)
        raise ValueError(f"{entry.kind} {entry.path!r} is not a temporary (an image goes with delete)")

    @staticmethod
    def _info(stats: os.stat_result) -> FileInfo:
        return FileInfo(size=stats.st_size, modified=stats.st_mtime,
                        version=f"{stats.st_ino}-{stats.st_mtime_ns}-{stats.st_size}")

    def file_info(self, uuid: str) -> FileInfo | None:
        try:
            stats = os.stat(os.path.join(self.image_dir(uuid), "file"))
        except FileNotFoundError:
            return None
        return self._info(stats)

    def open_file(self, uuid: str, start: int = 0, end: int | None = None) -> OpenedFile:
        handle = open(os.path.join(self.image_dir(uuid), "file"), "rb")
        try:
            # Described through the open descriptor: a file replaced meanwhile is another inode.
            info = self._info(os.fstat(handle.fileno()))
            if start:
                handle.seek(start)
        except BaseException:
            handle.close()
            raise
        return OpenedFile(handle, info, None if end is None else max(0, end - start))

    def file_path(self, uuid: str) -> str | None:
        path = os.path.join(self.image_dir(uuid), "file")
        return path if os.path.isfile(path) else None

    def download_url(self, uuid: str) -> str | None:
        return None

    def cached_file_md5(self, uuid: str) -> str | None:
        try:
            stats = os.stat(os.path.join(self.image_dir(uuid), "file"))
        except FileNotFoundError:
            return None
        return self._read_md5_cache(uuid, stats)

    def file_md5(self, uuid: str) -> str | None:
        known = self.cached_file_md5(uuid)
        if known is not None:
            return known
        with self._md5_lock(uuid):
            known = self.cached_file_md5(uuid)
            if known is not None:
                return known
            try:
                handle = open(os.path.join(self.image_dir(uuid), "file"), "rb")
            except FileNotFoundError:
                return None
            with handle:
                # Hash through the open descriptor and key the cache by *its* identity: a file
                # replaced meanwhile is a different inode, so the cache never describes it.
                stats = os.fstat(handle.fileno())
                digest = hashlib.md5(usedforsecurity=False)
                while chunk := handle.read(_HASH_CHUNK):
                    digest.update(chunk)
            hexdigest = digest.hexdigest()
            self._write_md5_cache(uuid, stats, hexdigest)
            return hexdigest

    def _md5_lock(self, uuid: str) -> threading.Lock:
        with self._md5_locks_guard:
            return self._md5_locks.setdefault(check_uuid(uuid), threading.Lock())

    @staticmethod
    def _md5_key(stats: os.stat_result) -> dict[str, int]:
        return {"size": stats.st_size, "mtime_ns": stats.st_mtime_ns, "inode": stats.st_ino}

    def _read_md5_cache(self, uuid: str, stats: os.stat_result) -> str | None:
        try:
            with open(os.path.join(self.image_dir(uuid), _MD5_CACHE), "rb") as handle:
                cached = json.loads(handle.read())
        except (OSError, ValueError):
            return None
        if not isinstance(cached, dict) or cached.get("file") != self._md5_key(stats):
            return None
        md5 = cached.get("md5")
        return md5 if isinstance(md5, str) and re.fullmatch(r"[0-9a-f]{32}", md5) else None

    def _write_md5_cache(self, uuid: str, stats: os.stat_result, md5: str) -> None:
        """Best effort: the cache only saves work, so a store we cannot write still serves."""
        directory = self.image_dir(uuid)
        temporary = os.path.join(directory, f"{_MD5_CACHE}.{uuidlib.uuid4().hex}")
        try:
            with open(temporary, "wb") as handle:
                handle.write(json.dumps({"file": self._md5_key(stats), "md5": md5}).encode())
            os.replace(temporary, os.path.join(directory, _MD5_CACHE))
        except OSError:
            try:
                os.unlink(temporary)
            except OSError:
                pass

    # --- manifests -----------------------------------------------------------------------------

    def write_manifest(self, uuid: str, manifest: Mapping[str, Any]) -> None:
        directory = self.image_dir(uuid)
        try:
            os.makedirs(directory, exist_ok=True)
            # The caller holds the image's lease: a temporary already there is a dead writer's.
            self._discard_manifest_temporaries(uuid)
            temporary = os.path.join(directory, f"{_MANIFEST_TEMP}{uuidlib.uuid4().hex}")
            with open(temporary, "wb") as handle:
                handle.write(json.dumps(manifest, indent=2, sort_keys=True).encode())
                handle.flush()
                os.fsync(handle.fileno())
            crash_point("after_manifest_temp")
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
        removed = self._discard_partials(uuid) > 0
        try:
            os.makedirs(os.path.join(self.root, _TRASH), exist_ok=True)
            doomed = os.path.join(self.root, _TRASH, f"{check_uuid(uuid)}.{uuidlib.uuid4().hex}")
            os.replace(directory, doomed)  # gone for every reader at once
            _fsync_dir(self.root)
            crash_point("after_trash_move")
        except FileNotFoundError:
            pass  # not there, or moved by an interrupted removal: emptied below
        except OSError as exc:
            raise StoreError(f"cannot remove the image's data: {exc.strerror or exc}", "store_delete_failed") from None
        # This removal's, and whatever an interrupted earlier one left.
        return sum(self._empty_removal(path) for path in self._removals(uuid)) > 0 or removed

    def restore(self, uuid: str) -> bool:
        directory = self.image_dir(uuid)
        removals = self._removals(uuid)
        whole = [path for path in removals if os.path.isfile(os.path.join(path, "manifest"))]
        if whole and not os.path.isdir(directory):
            newest = max(whole, key=lambda path: os.stat(os.path.join(path, "manifest")).st_mtime_ns)
            try:
                os.replace(newest, directory)
            except OSError as exc:
                raise StoreError(f"cannot restore the image's data: {exc.strerror or exc}",
                                 "store_restore_failed") from None
            _fsync_dir(self.root)
            removals.remove(newest)
        for path in removals:
            self._empty_removal(path)
        return os.path.isdir(directory)

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
