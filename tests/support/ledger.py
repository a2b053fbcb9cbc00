"""The ledger of a running system: what happened to each command, read from its database and broker.

For every task (the correlation id of the events it caused): its terminal events
(``task.succeeded`` / ``task.failed``: exactly one each), its effects (image events, and the image
rows they name) and the image names it touched; plus events still waiting in the outbox and the
depth of every imagesvc work and dead-letter queue (by topology prefix). ``assert_clean`` checks a
set of accepted task ids against it, as RabbitMQ's Jepsen test does: nothing lost, nothing
doubled, nothing unexpected, every queue empty.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import orjson
from sqlalchemy import create_engine, select

from imagesvc.shared.db.models import Image, StoredEvent

TERMINAL = ("task.succeeded", "task.failed")


@dataclass
class TaskRecord:
    terminal: list[str] = field(default_factory=list)
    #: Image events (``image.*``) the task caused.
    effects: list[str] = field(default_factory=list)
    image_uuids: set[str] = field(default_factory=set)
    image_names: set[str] = field(default_factory=set)
    #: How many of ``image_uuids`` have a row in ``images``.
    image_rows: int = 0


@dataclass
class Ledger:
    tasks: dict[str, TaskRecord]
    #: Stored events not yet marked published (the outbox's backlog).
    unpublished_events: int
    #: Ready messages per queue (None: queues not read).
    queue_depths: dict[str, int] | None

    def lost(self, accepted: set[str]) -> set[str]:
        return {t for t in accepted if not self.tasks.get(t, TaskRecord()).terminal}

    def doubled(self, accepted: set[str]) -> dict[str, TaskRecord]:
        return {t: r for t, r in self.tasks.items() if t in accepted and len(r.terminal) > 1}

    def unexpected(self, accepted: set[str]) -> set[str]:
        return {t for t, r in self.tasks.items() if t not in accepted and r.terminal}

    def effect_counts(self, accepted: set[str], effect: str) -> dict[str, int]:
        """Per accepted task, how many events of type ``effect`` (e.g. ``image.imported``) it caused."""
        return {t: self.tasks.get(t, TaskRecord()).effects.count(effect) for t in accepted}

    def summary(self, accepted: set[str]) -> str:
        depths = {q: n for q, n in (self.queue_depths or {}).items() if n}
        return (f"accepted={len(accepted)} lost={len(self.lost(accepted))} doubled={len(self.doubled(accepted))} "
                f"unexpected={len(self.unexpected(accepted))} unpublished_events={self.unpublished_events} "
                f"non-empty queues={depths}")


def read_ledger(database_url: str, *, broker_url: str | None = None, prefix: str = "") -> Ledger:
    engine = create_engine(database_url)
    events = StoredEvent.__table__
    tasks: dict[str, TaskRecord] = defaultdict(TaskRecord)
    unpublished = 0
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(events.c.type, events.c.correlation_id, events.c.body,
                                       events.c.published_at).order_by(events.c.id))
            for row in rows:
                if row.published_at is None:
                    unpublished += 1
                record = tasks[row.correlation_id]
                if row.type in TERMINAL:
                    record.terminal.append(row.type)
                elif row.type.startswith("image."):
                    record.effects.append(row.type)
                    image = (orjson.loads(row.body).get("payload") or {}).get("image") or {}
                    if image.get("uuid"):
                        record.image_uuids.add(image["uuid"])
                    if image.get("name"):
                        record.image_names.add(image["name"])
            existing = set(conn.execute(select(Image.__table__.c.uuid)).scalars())
    finally:
        engine.dispose()
    for record in tasks.values():
        record.image_rows = len(record.image_uuids & existing)
    depths = queue_depths(broker_url, prefix) if broker_url else None
    return Ledger(dict(tasks), unpublished, depths)


def queue_depths(broker_url: str, prefix: str) -> dict[str, int]:
    """Ready messages in each of the topology's work and dead-letter queues (passive declares:
    nothing is created; a missing queue counts as empty)."""
    from kombu import Connection

    from imagesvc.shared.broker.topology import build_topology

    depths: dict[str, int] = {}
    with Connection(broker_url, connect_timeout=5) as conn:
        channel = conn.channel()
        for queue in build_topology(prefix).all_queues():
            try:
                depths[queue.name] = channel.queue_declare(queue.name, passive=True).message_count
            except Exception:  # noqa: BLE001 - NOT_FOUND closes the channel
                depths[queue.name] = 0
                channel = conn.channel()
    return depths


def assert_clean(ledger: Ledger, accepted_task_ids, *, effect: str | None = "image.imported",
                 allow_unexpected: bool = False, known_before: frozenset[str] = frozenset()) -> None:
    """Every accepted task ended in exactly one terminal event and (with ``effect``) had exactly
    one such effect and one image row; no other task ended (unless ``allow_unexpected``: commands
    answered 503 whose publish did reach the broker); the outbox and every queue are empty."""
    accepted = set(accepted_task_ids)
    problems = []
    lost = ledger.lost(accepted)
    if lost:
        problems.append(f"{len(lost)} accepted tasks have no terminal event (lost): {sorted(lost)[:5]}")
    doubled = ledger.doubled(accepted)
    if doubled:
        sample = {t: r.terminal for t, r in list(doubled.items())[:5]}
        problems.append(f"{len(doubled)} accepted tasks have several terminal events: {sample}")
    if effect:
        wrong = {t: n for t, n in ledger.effect_counts(accepted, effect).items() if n != 1}
        if wrong:
            problems.append(f"{len(wrong)} accepted tasks without exactly one {effect}: {dict(list(wrong.items())[:5])}")
        rowless = [t for t in accepted if ledger.tasks.get(t) and ledger.tasks[t].image_rows != 1]
        if rowless:
            problems.append(f"{len(rowless)} accepted tasks without exactly one image row: {rowless[:5]}")
    unexpected = ledger.unexpected(accepted) - set(known_before)  # earlier checks' tasks are not news
    if unexpected and not allow_unexpected:
        problems.append(f"{len(unexpected)} tasks nobody was told were accepted ended anyway: {sorted(unexpected)[:5]}")
    if ledger.unpublished_events:
        problems.append(f"{ledger.unpublished_events} events still in the outbox")
    busy = {q: n for q, n in (ledger.queue_depths or {}).items() if n}
    if busy:
        problems.append(f"queues not empty at the end: {busy}")
    assert not problems, "ledger not clean (" + ledger.summary(accepted) + "):\n  " + "\n  ".join(problems)
