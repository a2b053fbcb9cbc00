"""The outbox relay: publishes committed events, with confirms, then marks them published.

Producers hand over the rows they just committed (``publish``, the fast path: no read back).
Confirmed rows are marked published in batches by ``run()``, which also sweeps rows that stayed
unpublished (the producer died, or the broker was down) after a grace period. A row may be
published twice (a crash before its mark, a sweep racing the fast path): consumers deduplicate
by message id, so a duplicate is harmless, while a row is only ever marked after the broker
confirmed it, so none is lost.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Sequence

from imagesvc.shared.broker.publisher import Outgoing
from imagesvc.shared.broker.topology import Topology
from imagesvc.shared.crash import crash_point
from imagesvc.shared.db import events as store
from imagesvc.shared.db.engine import read_transaction, relax_durability, write_transaction
from imagesvc.shared.db.models import utcnow
from imagesvc.shared.errors import PublishFailed, Transient
from imagesvc.shared.logging import get_logger

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = get_logger(__name__)


class OutboxRelay:
    def __init__(self, engine: Engine, publisher, topology: Topology, *, user_id: str | None = None,
                 grace_seconds: float = 3.0, sweep_seconds: float = 1.0, mark_seconds: float = 0.1):
        """``user_id``: this process's broker user, set on every event (RabbitMQ vouches for it,
        which is how subscribers and the projector know the event is imagesvc's) and recorded as
        the events' publisher; None on memory://."""
        self._engine = engine
        self._user_id = user_id
        self._publisher = publisher
        self._topology = topology
        self._grace = grace_seconds
        self._sweep_seconds = sweep_seconds
        self._mark_seconds = mark_seconds
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._to_mark: list[int] = []

    def publish(self, rows: Sequence[store.OutboxRow]) -> bool:
        """Publish committed rows now, in order, confirmed together. True if all went out; False
        leaves them to the sweeper (some may have gone out: consumers deduplicate)."""
        if not rows:
            return True
        exchange = self._topology.events.name
        try:
            self._publisher.publish_many([
                Outgoing(exchange, row.routing.key, row.body, row.message_id, row.type, row.correlation_id,
                         headers={"CC": list(row.routing.cc)} if row.routing.cc else {}, user_id=self._user_id)
                for row in rows
            ])
        except PublishFailed as exc:
            log.warning("relay.publish_failed", error=str(exc), events=len(rows))
            return False
        with self._lock:
            self._to_mark.extend(row.id for row in rows)
        return True

    def flush_marks(self) -> None:
        """Mark the confirmed rows as published (one transaction for all of them)."""
        with self._lock:
            ids, self._to_mark = self._to_mark, []
        if not ids:
            return
        crash_point("relay_after_confirm_before_mark")  # confirmed by the broker, not yet marked
        try:
            with write_transaction(self._engine) as conn:
                relax_durability(conn)  # a lost mark only means a harmless republish
                store.mark_published(conn, ids, by=self._user_id)
        except Transient as exc:
            log.warning("relay.mark_failed", error=str(exc))
            with self._lock:
                self._to_mark[:0] = ids

    def sweep_once(self) -> int:
        """Publish rows older than the grace period; returns how many were found."""
        self.flush_marks()
        with read_transaction(self._engine) as conn:
            rows = store.unpublished(conn, older_than=utcnow() - timedelta(seconds=self._grace))
        if rows:
            log.info("relay.sweep", pending=len(rows))
            self.publish(rows)
            self.flush_marks()
        return len(rows)

    def run(self) -> None:
        next_sweep = time.monotonic() + self._sweep_seconds
        while not self._stop.wait(self._mark_seconds):
            try:
                self.flush_marks()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self._sweep_seconds
                    self.sweep_once()
            except Exception as exc:  # noqa: BLE001 - the relay must outlive outages
                log.warning("relay.sweep_failed", error=repr(exc))
        self.flush_marks()

    def stop(self) -> None:
        self._stop.set()
