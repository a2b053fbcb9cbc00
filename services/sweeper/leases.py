"""End the tasks whose image lease ran out: their consumer died holding it, and their command
will not come back (the broker dead-lettered it after repeated crashes, or nobody consumes its
queue any more).

A long-running command (an import or a snapshot image with an image store, an update that
rewrites the stored manifest, a removal from the store) leaves its image PENDING under the lease
lock ``image:<uuid>``, owned by its task id and renewed while it works. A lease whose time ran out
while its image is still PENDING names a task nobody is finishing. For each, the sweeper:

1. takes the lease over (``locks.take_over``: only while it is still expired and still the
   task's, in one statement under the image's row lock, so a renewal that commits first wins and
   one that comes later finds the lease gone) and names it ``swept:<task id>``, so a sweeper
   that dies half way is resumed by the next sweep once that lease runs out too;
2. repairs the store while it holds the lease (nothing else may touch the image meanwhile): an
   import's or a snapshot image's data is removed, an update's manifest is written back as the
   catalogue has it (its temporaries go), a removal left half done is moved back while it is
   still whole (``ImageStore.restore``);
3. in one transaction: a created image is removed (``image.deleted``), an updated or deleted one
   is OK again (``image.updated``), every lock of the task goes (a snapshot's lease too), and the
   task fails with ``lease_expired`` (500). The ``task.failed`` is caused by the command that
   started the task, so the command's inbox sees it handled: a late redelivery or a replay from
   the dead-letter queue is a duplicate, not a second outcome. A removal whose data was already
   gone for good (its worker died while emptying it, or after) is finished instead: the image is
   removed and the task succeeds, as its command's next delivery would have made it.

Any number of sweepers may run (one in every command-consumer process): they serialise on the
image's row lock, and the task's single outcome (``uq_events_task_outcome``) stops a second one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from imagesvc.domain import creation, images, manifest
from imagesvc.services.sweeper import garbage
from imagesvc.shared import contracts, metrics
from imagesvc.shared.contracts import ImageDeleted, ImageUpdated, TaskFailed, TaskSucceeded
from imagesvc.shared.db import events as store
from imagesvc.shared.db import journal, locks
from imagesvc.shared.db.catalogue import IMAGE_LOCK_PREFIX, SqlCatalogue
from imagesvc.shared.db.engine import read_transaction, write_transaction
from imagesvc.shared.errors import PoisonMessage
from imagesvc.shared.logging import get_logger
from imagesvc.shared.store import ImageStore, StoreError

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = get_logger(__name__)

#: The owner a sweeper gives a lease it took over: this prefix + the task id.
SWEPT_PREFIX = "swept:"
LEASE_EXPIRED = "lease_expired"
#: The code of a task ended by ``serve``'s start-up recovery (``services.sweeper.recovery``).
INTERRUPTED = "interrupted"
#: Why a swept task stopped, by the code it fails with.
_STOPPED_BECAUSE = {LEASE_EXPIRED: "its worker died and its lease expired",
                    INTERRUPTED: "imagesvc serve stopped while it ran"}
#: The commands whose image is created under the lease (undone by removing the image).
CREATIONS = frozenset({"image.import", "image.snapshot"})
#: The commands that change an existing image under the lease (undone by making it OK again).
CHANGES = frozenset({"image.update", "image.delete"})


def stopped_failure(command: str, code: str = LEASE_EXPIRED) -> dict[str, str]:
    """The result of a task that stopped half way and was undone (``code``: LEASE_EXPIRED or INTERRUPTED)."""
    return {"detail": f"Internal error: the {command} task stopped ({_STOPPED_BECAUSE[code]}); "
                      f"nothing was changed, try again"}


@dataclass(frozen=True)
class Swept:
    """A task the sweeper ended."""

    task_id: str
    command: str
    image_uuid: str


class LeaseSweeper:
    """``sweep_once()`` ends what is found now; ``run()`` sweeps the image store of what no live
    task owns (``garbage.sweep``), then does so every ``period`` seconds until ``stop()``.
    ``relay`` publishes the events (the outbox relay's fast path; its own sweep catches what that
    misses). ``claim_seconds``: how long a sweep may hold a lease it took over. ``serves``: whether
    a file URL is the image server's own (``ImageServer.serves``), which tells a file an import
    downloaded from one put into the store by hand (None: a file without a manifest is kept)."""

    def __init__(self, engine: Engine, relay, store: ImageStore | None, *, period: float = 30.0,
                 claim_seconds: float = 60.0, batch: int = 50, serves: Callable[[str], bool] | None = None):
        self._engine = engine
        self._relay = relay
        self._store = store
        self._serves = serves
        self._period = period
        self._claim_seconds = claim_seconds
        self._batch = batch
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        if self._store is not None:
            try:  # once, as the process starts: what dead writers left that no retry will remove
                garbage.sweep(self._engine, self._store)
            except Exception as exc:  # noqa: BLE001 - the next start sweeps again
                log.warning("sweeper.store_sweep_failed", error=repr(exc))
        while not self._stop.wait(self._period):
            try:
                self.sweep_once()
            except Exception as exc:  # noqa: BLE001 - the sweeper must outlive outages
                log.warning("sweeper.failed", error=repr(exc))

    def sweep_once(self, *, code: str = LEASE_EXPIRED, every: bool = False) -> list[Swept]:
        """End the tasks of the image leases expired now (a batch of them; all with ``every``),
        failing them with ``code`` (LEASE_EXPIRED, or INTERRUPTED for ``serve``'s start-up recovery)."""
        with write_transaction(self._engine) as conn:
            candidates = locks.expired(conn, IMAGE_LOCK_PREFIX, limit=None if every else self._batch)
        swept = []
        for lock in candidates:
            try:
                done = self._end(lock, code)
            except Exception as exc:  # noqa: BLE001 - one bad lease must not block the others
                log.warning("sweeper.lease_failed", lock=lock.name, owner=lock.owner, error=repr(exc))
                continue
            if done is not None:
                swept.append(done)
        return swept

    def _end(self, lock: locks.ExpiredLock, code: str = LEASE_EXPIRED) -> Swept | None:
        uuid = lock.name[len(IMAGE_LOCK_PREFIX):]
        task_id = lock.owner.removeprefix(SWEPT_PREFIX)
        claim = SWEPT_PREFIX + task_id
        # 1. Take the lease over, if it is still expired and the task's (or a dead sweep's).
        with write_transaction(self._engine) as conn:
            catalogue = SqlCatalogue(conn)
            image = catalogue.image_by_uuid(uuid, for_update=True)
            started = store.task_started(conn, task_id)
            if image is None or image.status != images.STATUS_PENDING or started is None:
                # Nothing waits on this lease (its image is gone or settled): only the lock is left.
                if locks.take_over(conn, lock.name, owner=lock.owner, new_owner=claim, lease_seconds=0):
                    locks.release(conn, lock.name, claim)
                    metrics.sweeper_action("stale_lock_removed")
                    log.info("sweeper.stale_lock_removed", lock=lock.name, owner=lock.owner)
                return None
            if not locks.take_over(conn, lock.name, owner=lock.owner, new_owner=claim,
                                   lease_seconds=self._claim_seconds):
                return None  # renewed (or taken) in the meantime: its holder is alive
        command_id, body = started
        envelope = contracts.decode(body)
        begun = contracts.parse(envelope)
        command = begun.command  # type: ignore[attr-defined]
        log.warning("sweeper.lease_expired", task_id=task_id, command=command, image=uuid, expired_at=str(lock.expires_at))
        # 2. Repair the store, holding the lease.
        removed = self._repair_store(command, image, task_id)
        # 3. Settle the image and end the task.
        with write_transaction(self._engine) as conn:
            catalogue = SqlCatalogue(conn)
            current = catalogue.image_by_uuid(uuid, for_update=True)
            if current is None or current.lock_owner != claim:
                return None  # another sweeper finished it
            version = current.stream_version + 1
            changes = []
            if command in CREATIONS or removed:
                catalogue.delete_image(uuid)
                changes.append(ImageDeleted(uuid=uuid, name=current.name, version=version, dc_bound=current.dc_bound))
            else:
                catalogue.update_fields(uuid, {"status": images.STATUS_OK}, changed=current.changed,
                                        stream_version=version)
                restored = current.with_changes(status=images.STATUS_OK, lock_owner=None)
                changes.append(ImageUpdated(image=images.to_state(restored), version=version, changed=["status"]))
            locks.release(conn, lock.name, claim)
            for name in locks.owned_by(conn, task_id):  # a snapshot image's lease on its snapshot
                locks.release(conn, name, task_id)
            task = dict(task_id=task_id, command=command, object_name=begun.object_name,  # type: ignore[attr-defined]
                        user=begun.user, owner=begun.owner, dc=begun.dc,  # type: ignore[attr-defined]
                        stream=changes[-1].stream_position()[0], stream_version=version)
            if store.task_ended(conn, task_id):
                outcome = []
            elif removed:
                outcome = [TaskSucceeded(**task, result=creation.removal_result(current.name))]
            else:
                outcome = [TaskFailed(**task, http_code=500, result=stopped_failure(command, code), code=code)]
            wrapped = [(contracts.wrap(event, correlation_id=task_id, causation_id=command_id, actor=envelope.actor,
                                       reply_to=envelope.reply_to), event.stream_position())
                       for event in [*changes, *outcome]]
            rows = store.append(conn, wrapped)
        self._relay.publish(rows)
        metrics.sweeper_action("removal_finished" if removed else "task_failed")
        if removed:
            log.warning("sweeper.removal_finished", task_id=task_id, command=command, image=uuid)
        else:
            log.warning("sweeper.task_failed", task_id=task_id, command=command, image=uuid, code=code)
        return Swept(task_id=task_id, command=command, image_uuid=uuid)

    def _repair_store(self, command: str, image, task_id: str) -> bool:
        """Put the store back as it was before the task (its temporaries included). True when
        the task is a removal whose data is gone for good: it is to be finished, not undone."""
        if self._store is None:
            return False
        try:
            if command == "image.snapshot":
                self._store.delete(image.uuid)  # a fresh uuid: everything under it is this task's
            elif command == "image.import":
                if self._store.manifest(image.uuid) is not None or self._downloaded(task_id):
                    self._store.delete(image.uuid)  # the import wrote the manifest, or the file
                else:
                    # A file without a manifest may have been placed by hand for an in-place
                    # import (reference §7.3): only the task's temporaries are its own.
                    self._store.discard_temporaries(image.uuid)
            elif command == "image.update":
                # The updater writes the store first: put back what the catalogue still has.
                if image.manifest_active:
                    self._store.write_manifest(image.uuid, image.manifest_active)
                else:
                    self._store.discard_temporaries(image.uuid)
            elif command == "image.delete":
                return not self._store.restore(image.uuid)
        except StoreError as exc:  # the image is settled anyway; the store keeps a leftover
            log.warning("sweeper.store_repair_failed", image=image.uuid, command=command, error=str(exc))
        return False

    def _downloaded(self, task_id: str) -> bool:
        """Whether the import ``task_id`` downloads its file (its file URL is not this image
        server's), as the gateway journaled its command; False when that cannot be told."""
        if self._serves is None:
            return False
        with read_transaction(self._engine) as conn:
            body = journal.command_body(conn, task_id)
        if body is None:
            return False
        try:
            payload = contracts.decode(body).payload
            return not self._serves(manifest.file_url_of(payload))
        except (PoisonMessage, KeyError, TypeError, AttributeError):
            return False
