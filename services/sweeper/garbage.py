"""Garbage in the image store: the names no live task owns, found and removed without ever
touching a live writer's file; and, for ``imagesvc store check``, the images whose files are
missing or wrong. Every command-consumer process sweeps the store as it starts (``LeaseSweeper``).

Whose a name is (docs/architecture.md, "Garbage in the image store"):

- **A temporary of an image** (``.partial/<uuid>.<task>_<attempt>``, ``<uuid>/.manifest.<random>``,
  ``.trash/<uuid>.<random>``) is written only by a task that holds the image PENDING under its
  lease, from before it creates the name until after it has renamed or removed it: an import or
  a snapshot image, a manifest rewrite, a removal, the lease sweeper repairing one of them. So
  the temporary of a PENDING image is its task's, whatever its lease says (live: the task is at
  work; run out: the lease sweeper or the command's next delivery is about to clean up, and the
  lease sweeper needs a removal's ``.trash`` entry to undo it). The temporary of an image that is
  OK, or has no record, has no live writer: the store is listed *before* the records are read,
  so the name existed while its image was already not PENDING, and its writer had ended or lost
  its lease (a writer that lost its lease finds out at its next step and stops). Temporary names
  carry a random part and are never reused, so nothing created after the listing is removed.
- **An image's directory without a record** is an orphan (a removal whose store step failed, a
  record removed by hand). It is removed under the image's lease, which the sweep takes in the
  transaction that finds no record: an import of that uuid records its image and takes the lease
  in one transaction, so either it came first (and the sweep finds its record or its lease) or
  it finds the lease held and is retried. A directory holding a file but no manifest is kept: it
  may have been put there by hand for an import from this image server (reference §7.3).
- **Scratch files** of processes that hold no lease (the image server's MD5 cache, the health
  check's probe) exist for milliseconds: they go once older than ``SCRATCH_GRACE_SECONDS``, as
  does a name in ``.partial`` or ``.trash`` that names no image.
- **Anything else** (names imagesvc never writes) is reported, never removed.

An S3 store (``shared.store.s3``) has the same kinds: its unfinished multipart uploads of an
image's file are the image's partial files (found by ``survey`` with their age, removed by
aborting them), its health-check probes are scratch, and its removal markers
(``<uuid>/.removing.<random>``, written before the manifest is deleted) are its trash: a removal
that got past the manifest but not past the file is a TRASH entry holding the file, never an
image directory with a file and no manifest (which would be kept as staged). It has no manifest
temporaries.

Trash of an image without a record is removed under the image's lease, as an orphaned
directory is: finishing an S3 removal deletes ``<uuid>/file``, which an import of the uuid
starting meanwhile could be writing.
"""

from __future__ import annotations

import hashlib
import uuid as uuidlib
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

from imagesvc.domain import images
from imagesvc.shared.db import locks
from imagesvc.shared.db.catalogue import IMAGE_LOCK_PREFIX, SqlCatalogue, image_lock_name
from imagesvc.shared.db.engine import read_transaction, write_transaction
from imagesvc.shared.logging import get_logger
from imagesvc.shared.store import EntryKind, ImageStore, StoreEntry, StoreError

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = get_logger(__name__)

#: Age after which a scratch file (whose writer holds no lease) is taken for abandoned.
SCRATCH_GRACE_SECONDS = 3600.0
#: How long a sweep holds the lease of an orphaned image directory it removes (a dead sweep's
#: claim runs out after this and the lease sweeper drops it).
CLAIM_SECONDS = 60.0
#: The owner a sweep gives the lease it takes: this prefix + a random part.
CLAIM_PREFIX = "store-sweep:"

#: Findings: what ``check`` reports.
GARBAGE, STAGED, UNKNOWN, STALLED = "garbage", "staged", "unknown", "stalled"
MISSING, CORRUPT, MANIFEST_DIFFERS = "missing", "corrupt", "manifest_differs"
#: The findings that leave the store needing attention (garbage only while it is not removed).
PROBLEMS = (MISSING, CORRUPT, MANIFEST_DIFFERS)

_HASH_CHUNK = 4 * 1024 * 1024
_WHAT = {EntryKind.PARTIAL: "a partial file", EntryKind.MANIFEST_TEMP: "a manifest's temporary",
         EntryKind.TRASH: "a removal left half done"}


@dataclass(frozen=True)
class Finding:
    """One line of ``imagesvc store check``; ``removed`` (whether ``--repair`` removed it) only
    for garbage."""

    finding: str
    path: str | None = None
    image: str | None = None
    name: str | None = None
    bytes: int | None = None
    why: str = ""
    removed: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass
class Check:
    """What a check found: the findings, and how many images the catalogue has, how many of
    them are PENDING and how many OK ones had their files verified."""

    findings: list[Finding] = field(default_factory=list)
    images: int = 0
    pending: int = 0
    verified: int = 0

    def count(self, finding: str) -> int:
        return sum(1 for found in self.findings if found.finding == finding)

    @property
    def removed(self) -> int:
        return sum(1 for found in self.findings if found.removed)

    @property
    def problems(self) -> int:
        """Findings left that need attention: garbage not removed, missing or wrong files."""
        return (sum(1 for found in self.findings if found.finding == GARBAGE and not found.removed)
                + sum(self.count(kind) for kind in PROBLEMS))

    def summary(self) -> dict[str, Any]:
        kinds = (GARBAGE, STAGED, UNKNOWN, STALLED, *PROBLEMS)
        return {"finding": "summary", "images": self.images, "pending": self.pending, "verified": self.verified,
                **{kind: self.count(kind) for kind in kinds}, "removed": self.removed, "problems": self.problems}


def check(engine: Engine, store: ImageStore, *, repair: bool, verify: bool,
          grace: float = SCRATCH_GRACE_SECONDS, orphans: bool = True) -> Check:
    """Find what no live task owns (``repair``: and remove it; ``orphans``: image directories
    without a record too) and, with ``verify``, the OK images whose directory, manifest or file
    is missing, whose file does not match its stored manifest's ``files[0]`` (size, sha1), or
    whose stored manifest is not the catalogue's."""
    entries = store.survey()  # before the records: see the module's docstring
    with read_transaction(engine) as conn:
        records = SqlCatalogue(conn).image_statuses()
        leased = locks.live(conn, IMAGE_LOCK_PREFIX)
    found = Check(images=len(records),
                  pending=sum(1 for _, status in records.values() if status == images.STATUS_PENDING))
    for entry in entries:
        finding = _judge(entry, records, grace)
        if finding is None:
            continue
        if finding.finding == GARBAGE and repair and (orphans or entry.kind != EntryKind.IMAGE):
            finding = replace(finding, removed=_remove(engine, store, entry, recorded=entry.uuid in records))
        found.findings.append(finding)
    for uuid, (name, status) in sorted(records.items()):
        if status == images.STATUS_PENDING and image_lock_name(uuid) not in leased:
            found.findings.append(Finding(STALLED, image=uuid, name=name, why=(
                "PENDING and its task's lease has run out: the lease sweeper of a running importer, updater, "
                "deleter or node agent ends the task and cleans up after it")))
        elif status == images.STATUS_OK and verify:
            found.findings.extend(_verify(engine, store, uuid))
            found.verified += 1
    return found


def sweep(engine: Engine, store: ImageStore) -> Check:
    """Remove the temporaries no live task owns (a process's start-up sweep); logs what it
    removed. Whole image directories without a record are reported, never removed here: a
    process started on the wrong database (or an empty one) must not empty the store; an
    operator removes them with ``imagesvc store check --repair``."""
    swept = check(engine, store, repair=True, verify=False, orphans=False)
    for finding in swept.findings:
        if finding.removed:
            log.info("store.garbage_removed", path=finding.path, image=finding.image, bytes=finding.bytes,
                     why=finding.why)
        elif finding.finding == GARBAGE:  # an orphaned image directory (or a removal that failed)
            log.warning("store.garbage_kept", path=finding.path, image=finding.image, why=finding.why)
    log.info("store.swept", removed=swept.removed, staged=swept.count(STAGED), unknown=swept.count(UNKNOWN))
    return swept


def _judge(entry: StoreEntry, records: dict[str, tuple[str, int]], grace: float) -> Finding | None:
    """What ``entry`` is, given the records read after it was listed (None: an image's own, or
    a live task's)."""
    name, status = records.get(entry.uuid, (None, None)) if entry.uuid else (None, None)
    where = dict(path=entry.path, image=entry.uuid, name=name, bytes=entry.size)
    if entry.kind == EntryKind.UNKNOWN:
        return Finding(UNKNOWN, **where, why="not a name imagesvc writes: kept")
    if entry.kind == EntryKind.SCRATCH or entry.uuid is None:
        if entry.age < grace:
            return None  # its writer may still be at it
        return Finding(GARBAGE, **where, removed=False,
                       why=f"a temporary {entry.age:.0f} s old whose writer holds no lease")
    if status == images.STATUS_PENDING:
        return None  # its task's (or, once its lease ran out, the lease sweeper's)
    if entry.kind == EntryKind.IMAGE:
        if status is not None:
            return None  # an image's files: verified on their own
        if entry.has_file and not entry.has_manifest:
            return Finding(STAGED, **where, why=(
                "an image file without a manifest and without a record, as put there by hand for an import "
                "from this image server: kept (remove it if no such import will come)"))
        return Finding(GARBAGE, **where, removed=False, why="an image directory without a record")
    state = "is OK" if status is not None else "has no record"
    return Finding(GARBAGE, **where, removed=False,
                   why=f"{_WHAT[entry.kind]} of an image that {state}: its writer has ended")


def _remove(engine: Engine, store: ImageStore, entry: StoreEntry, *, recorded: bool) -> bool:
    try:
        if entry.kind == EntryKind.IMAGE:
            return _remove_orphan(engine, store, entry.uuid, lambda: store.delete(entry.uuid))  # type: ignore[arg-type]
        if entry.kind == EntryKind.TRASH and entry.uuid is not None and not recorded:
            return _remove_orphan(engine, store, entry.uuid, lambda: store.remove(entry))
        return store.remove(entry)
    except (OSError, StoreError) as exc:  # found again by the next sweep
        log.warning("store.garbage_not_removed", path=entry.path, error=str(exc))
        return False


def _remove_orphan(engine: Engine, store: ImageStore, uuid: str, remove: Callable[[], bool]) -> bool:
    """``remove()`` what is left of an image that has no record (its directory, its trash),
    holding the image's lease meanwhile so that no import of the uuid can start writing into it."""
    lock, claim = image_lock_name(uuid), CLAIM_PREFIX + uuidlib.uuid4().hex
    with write_transaction(engine) as conn:
        if SqlCatalogue(conn).image_by_uuid(uuid) is not None or not locks.acquire(conn, lock, claim, CLAIM_SECONDS):
            return False  # recorded or leased meanwhile: an import's now
    try:
        return remove()
    finally:
        with write_transaction(engine) as conn:
            locks.release(conn, lock, claim)


def _verify(engine: Engine, store: ImageStore, uuid: str) -> list[Finding]:
    """The findings of an OK image's files, provided it is still OK once they were read (a
    removal or rewrite that began meanwhile is its task's business)."""
    try:
        stored, unreadable = store.manifest(uuid), None
    except StoreError as exc:
        stored, unreadable = None, str(exc)
    info = store.file_info(uuid)
    sha1 = _sha1(store, uuid) if info is not None else None
    with read_transaction(engine) as conn:
        record = SqlCatalogue(conn).image_by_uuid(uuid)
    if record is None or record.status != images.STATUS_OK:
        return []
    where = dict(image=uuid, name=record.name)
    if unreadable is not None:
        return [Finding(CORRUPT, path=f"{uuid}/manifest", **where, why=unreadable)]
    absent = [part for part, there in (("manifest", stored is not None), ("file", sha1 is not None)) if not there]
    if absent:
        return [Finding(MISSING, path=f"{uuid}/{absent[0]}", **where,
                        why=f"an OK image without its {' and '.join(absent)}")]
    assert stored is not None and info is not None
    files = stored.get("files")
    described = files[0] if isinstance(files, list) and files and isinstance(files[0], dict) else {}
    found = []
    if described.get("size") != info.size:
        found.append(Finding(CORRUPT, path=f"{uuid}/file", bytes=info.size, **where,
                             why=f"the file has {info.size} bytes, its manifest says {described.get('size')}"))
    elif str(described.get("sha1", "")).lower() != sha1:
        found.append(Finding(CORRUPT, path=f"{uuid}/file", bytes=info.size, **where,
                             why=f"the file's sha1 is {sha1}, its manifest says {described.get('sha1')}"))
    if stored != record.manifest_active:
        found.append(Finding(MANIFEST_DIFFERS, path=f"{uuid}/manifest", **where,
                             why="the stored manifest is not the catalogue's (the image's active manifest)"))
    return found


def _sha1(store: ImageStore, uuid: str) -> str | None:
    digest = hashlib.sha1()
    try:
        with store.open_file(uuid) as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest()
