"""Reliability plan row E1: the read model rebuilt from the stored events is the read model.

A distributed system (RabbitMQ, PostgreSQL) takes commands until its event store holds at least
1,000 events (nightly 10,000). With the projector stopped, ``imagesvc projector rebuild`` drops
the read model and replays every stored event: the result equals what the live projector had
built (every row, every stream position, every task; projection timestamps aside), and a second
replay changes nothing. Then commands keep flowing while the projector is stopped and rebuilt:
once it is back and has caught up from its queue, the read model again equals a fresh replay, so
the live catch-up after a rebuild left no gap and applied nothing twice.

The replay's speed is measured in ``bench/replay.py`` (docs/benchmarks.md), not here.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from sqlalchemy import create_engine, func, select

from imagesvc.shared.db.models import Image, StoredEvent
from tests.e2e.test_distributed import command, send
from tests.support.ledger import queue_depths, read_ledger
from tests.support.polling import eventually
from tests.support.read_model import read_model
from tests.support.systems import System, start_distributed
from tests.support.tier import scaled

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.postgres]

EVENTS = scaled(ci=1_000, nightly=10_000)
IMAGES = scaled(ci=40, nightly=200)


@pytest.fixture(scope="module")
def system(rabbitmq_url, postgres_admin_url, tmp_path_factory):
    started = start_distributed(tmp_path_factory.mktemp("replay"), broker_url=rabbitmq_url,
                                postgres_admin_url=postgres_admin_url, gateways=1)
    yield started
    started.stop()


class Load:
    """Commands sent straight to the broker as imagesvc's own user: imports of ``IMAGES`` images,
    then updates of their descriptions, round after round."""

    def __init__(self, system: System, origin):
        self.system, self.origin = system, origin
        self.names = [f"e1-{uuid.uuid4().hex[:8]}" for _ in range(IMAGES)]
        self.sent = 0

    def imports(self) -> None:
        for name in self.names:
            url, _ = self.origin.add_manifest()
            self._send("image.import", {"name": name, "manifest_url": url, "dc": "main"})

    def updates(self, rounds: int, stop: threading.Event | None = None) -> None:
        for round_ in range(rounds):
            for name in self.names:
                if stop is not None and stop.is_set():
                    return
                self._send("image.update", {"name": name, "desc": f"round {round_} {uuid.uuid4().hex[:6]}"})

    def _send(self, type_: str, payload: dict) -> None:
        send(self.system, command(type_, payload))
        self.sent += 1


def stored_events(system: System) -> int:
    engine = create_engine(system.database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(StoredEvent)).scalar_one()
    finally:
        engine.dispose()


def event_types(system: System) -> dict[str, int]:
    engine = create_engine(system.database_url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(select(StoredEvent.type, func.count()).group_by(StoredEvent.type)).all())
    finally:
        engine.dispose()


def snapshot(system: System):
    engine = create_engine(system.database_url)
    try:
        with engine.connect() as conn:
            return read_model(conn)
    finally:
        engine.dispose()


def quiescent(system: System) -> None:
    """Every queue empty, nothing left in the outbox, as many images read as written."""
    ledger = read_ledger(system.database_url, broker_url=system.broker_url, prefix=system.prefix)
    assert ledger.unpublished_events == 0 and not any((ledger.queue_depths or {}).values()), ledger.queue_depths
    engine = create_engine(system.database_url)
    try:
        with engine.connect() as conn:
            images = conn.execute(select(func.count()).select_from(Image)).scalar_one()
    finally:
        engine.dispose()
    images_read = len(snapshot(system)[0])
    assert images_read == images, f"read model {images_read} images, write side {images}"


def rebuild(system: System) -> tuple[int, float]:
    """Run ``imagesvc projector rebuild`` (projector stopped); (events replayed, seconds)."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "imagesvc", "projector", "rebuild"], cwd=system.workdir,
                          env=system.env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    replayed = int(done.stdout.split("rebuilt from ")[1].split()[0])
    return replayed, time.monotonic() - started


def settled_snapshot(system: System):
    """The read model once nothing moves any more (two equal looks, the system quiescent)."""
    def stable():
        first = snapshot(system)
        quiescent(system)
        assert snapshot(system) == first
        return first

    return eventually(stable, timeout=120, interval=0.5)


@pytest.mark.timeout(scaled(ci=300, nightly=1800))
def test_e1_replay_rebuilds_the_read_model_exactly(system, origin):
    load = Load(system, origin)
    load.imports()
    # The updates go to another queue: sent before their image exists they would only fail.
    eventually(lambda: _at_least(len(snapshot(system)[0]), IMAGES), timeout=120, interval=0.5)
    rounds = 0
    while stored_events(system) < EVENTS:
        load.updates(1)
        rounds += 1
        eventually(lambda: _at_most(sum(queue_depths(system.broker_url, system.prefix).values()), 50),
                   timeout=120, interval=0.2)  # keep the queues short: the load is paced by the consumers
    live = settled_snapshot(system)
    events = stored_events(system)
    assert events >= EVENTS

    system.kill("projector", signal.SIGTERM)
    replayed, seconds = rebuild(system)
    assert replayed == events
    assert snapshot(system) == live
    again, _ = rebuild(system)
    assert again == events and snapshot(system) == live  # a second replay changes nothing

    # Live: commands flow while the projector is stopped and the read model rebuilt; the
    # restarted projector catches up from its queue.
    stop = threading.Event()
    flowing = threading.Thread(target=load.updates, args=(3,), kwargs={"stop": stop})
    flowing.start()
    try:
        eventually(lambda: _at_least(stored_events(system), events + 50), timeout=60)
        rebuild(system)
        system.start_worker("projector")
    finally:
        flowing.join(timeout=300)
        stop.set()
    caught_up = settled_snapshot(system)
    system.kill("projector", signal.SIGTERM)
    total, _ = rebuild(system)
    assert snapshot(system) == caught_up, "the live catch-up after a rebuild differs from a replay"
    system.start_worker("projector")
    print(f"\nE1: {events} events ({load.sent} commands; {event_types(system)}) replayed in {seconds:.1f} s, "
          "identical twice; "
          f"live catch-up over {total - events} more events identical to a replay of all {total}")


def _at_least(value: int, minimum: int) -> None:
    assert value >= minimum, f"{value} < {minimum}"


def _at_most(value: int, maximum: int) -> None:
    assert value <= maximum, f"{value} > {maximum}"
