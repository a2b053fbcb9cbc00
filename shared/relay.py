"""The outbox relay: publishes committed events, with confirms, then marks them published.

Producers call ``publish(ids)`` right after their commit (the fast path). ``run()`` sweeps rows
that stayed unpublished (the producer died, or the broker was down) after a grace period. Both
may publish the same row: consumers deduplicate by message id, so a duplicate is harmless,
while a row is only marked published after the broker confirmed it, so none is lost.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Sequence

from shared.broker.topology import Topology
from shared.db import events as store
from shared.db.engine import read_transaction, relax_durability, write_transaction
from shared.db.models import utcnow
from shared.errors import PublishFailed, Transient
from shared.logging import get_logger

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = get_logger(__name__)


class OutboxRelay:
    def __init__(self, engine: Engine, publisher, topology: Topology, *, grace_seconds: float = 3.0,
                 interval_seconds: float = 1.0):
        self._engine = engine
        self._publisher = publisher
        self._topology = topology
        self._grace = grace_seconds
        self._interval = interval_seconds
        self._stop = threading.Event()

    def publish(self, ids: Sequence[int]) -> bool:
        """Publish these outbox rows now. True if all went out; False leaves the rest to the sweeper."""
        if not ids:
            return True
        try:
            with read_transaction(self._engine) as conn:
                rows = store.unpublished(conn, ids=ids)
        except Transient as exc:
            log.warning("relay.read_failed", error=str(exc))
            return False
        return self._send(rows)

    def sweep_once(self) -> int:
        """Publish rows older than the grace period; returns how many went out."""
        with read_transaction(self._engine) as conn:
            rows = store.unpublished(conn, older_than=utcnow() - timedelta(seconds=self._grace))
        if rows:
            log.info("relay.sweep", pending=len(rows))
        self._send(rows)
        return len(rows)

    def _send(self, rows: list[store.OutboxRow]) -> bool:
        sent: list[int] = []
        ok = True
        for row in rows:
            try:
                self._publisher.publish(
                    exchange=self._topology.events.name,
                    routing_key=row.type,
                    body=row.body,
                    message_id=row.message_id,
                    message_type=row.type,
                    correlation_id=row.correlation_id,
                )
            except PublishFailed as exc:
                log.warning("relay.publish_failed", error=str(exc), event_id=row.id)
                ok = False
                break  # keep stream order: later rows wait for this one
            sent.append(row.id)
        if sent:
            try:
                with write_transaction(self._engine) as conn:
                    relax_durability(conn)  # a lost mark only means a harmless republish
                    store.mark_published(conn, sent)
            except Transient as exc:
                # Published but not marked: the sweeper republishes them, consumers dedupe.
                log.warning("relay.mark_failed", error=str(exc))
        return ok

    def run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sweep_once()
            except Exception as exc:  # noqa: BLE001 - the sweeper must outlive outages
                log.warning("relay.sweep_failed", error=repr(exc))

    def stop(self) -> None:
        self._stop.set()
