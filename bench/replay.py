"""imagesvc read-model replay benchmark (reliability plan E1): ``projector rebuild`` of a SQLite
event store of 10,000 events, next to a baseline measured in the same run.

    .venv/bin/python bench/replay.py [--events 10000] [--rounds 3]

The event store is made by imagesvc's own command handlers, in process, on a fresh SQLite
database: imports of 250 images (the manifest served by an in-memory fetcher), then rounds of
description updates until the store holds ``--events`` events (each command stores its image
event and its task's terminal event). Nothing is published: the events only need to be stored.

imagesvc: ``services.projector.handlers.rebuild`` in one write transaction, as
``imagesvc projector rebuild`` runs it (drop the read model, replay every event in commit order,
batches of 1,000).

Baseline: the floor of any replay on this database — the same transaction reads every stored
event body in pages of 1,000, parses the JSON and writes one row per event into a scratch table
(no projection logic: what a replay cannot avoid doing). Rounds alternate (baseline, imagesvc, ...);
the best of each side counts. The plan's bound: 10,000 events in at most 60 s on 2 cores. After
the rounds, the rebuilt read model is checked against the one a live projector built.

No broker, no server. See bench/README.md.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402

from imagesvc.domain import tasks  # noqa: E402
from imagesvc.services.importer.handlers import import_image  # noqa: E402
from imagesvc.services.projector.handlers import apply, rebuild  # noqa: E402
from imagesvc.services.updater.handlers import update_image  # noqa: E402
from imagesvc.shared import contracts  # noqa: E402
from imagesvc.shared.broker.consumer import Delivery, Outcome  # noqa: E402
from imagesvc.shared.contracts import Actor, ImportImage, UpdateImage  # noqa: E402
from imagesvc.shared.db import accounts, migrate  # noqa: E402
from imagesvc.shared.db import events as store  # noqa: E402
from imagesvc.shared.db.engine import make_engine, read_transaction, write_transaction  # noqa: E402
from imagesvc.shared.db.models import StoredEvent  # noqa: E402
from imagesvc.shared.handling import CommandConsumer, EventConsumer  # noqa: E402
from imagesvc.shared.logging import configure_logging  # noqa: E402
from tests.support.projection import delivery_of  # noqa: E402
from tests.support.read_model import read_model as rows_of_read_model  # noqa: E402

IMAGES = 250
BOUND_SECONDS = 60.0
MANIFEST_URL = "https://repo.example.com/images/{uuid}"


class MemoryFetcher:
    """Serves made-up manifests (and a file probe) from memory."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}

    def serve(self, index: int) -> str:
        image = str(uuid.uuid4())
        url = MANIFEST_URL.format(uuid=image)
        self.bodies[url] = orjson.dumps({
            "v": 2, "uuid": image, "name": f"bench-{index}", "version": "1.0", "type": "zone-dataset",
            "os": "smartos", "description": "replay bench", "published_at": "2026-11-27T00:00:00Z",
            "files": [{"sha1": "0" * 40, "size": 32, "compression": "none"}],
        })
        self.bodies[url + "/file"] = b"x" * 32
        return url

    def get(self, url, *, max_bytes, timeout, truncate=False):
        return self.bodies[url]


class NoRelay:
    def publish(self, rows) -> bool:
        return False  # stays in the outbox: only the store matters here


def fill(engine, events: int) -> int:
    """Store at least ``events`` events by running import and update commands; returns the count."""
    fetcher = MemoryFetcher()
    importer = CommandConsumer(name="importer", engine=engine, relay=NoRelay(), check_first=True,
                               routes={"image.import": functools.partial(import_image, fetcher=fetcher)})
    updater = CommandConsumer(name="updater", engine=engine, relay=NoRelay(), routes={"image.update": update_image})

    def run(consumer: CommandConsumer, command) -> None:
        envelope = contracts.wrap(command, correlation_id=tasks.new_task_id(user_id=1, owner_id=1, dc_id=1),
                                  actor=Actor(user="root", dc="main"))
        delivery = Delivery(body=contracts.encode(envelope), queue="bench", headers={}, message_id=envelope.id,
                            correlation_id=envelope.correlation_id, message_type=envelope.type, user_id=None,
                            redelivered=False, attempt=1)
        disposition = consumer(delivery)
        assert disposition.outcome is Outcome.ACK, disposition

    names = [f"bench-{i:04d}" for i in range(IMAGES)]
    for index, name in enumerate(names):
        run(importer, ImportImage(name=name, manifest_url=fetcher.serve(index), dc="main"))
    round_ = 0
    while count_events(engine) < events:
        for name in names:
            run(updater, UpdateImage(name=name, desc=f"round {round_}"))
        round_ += 1
    return count_events(engine)


def count_events(engine) -> int:
    with read_transaction(engine) as conn:
        return conn.execute(select(func.count()).select_from(StoredEvent)).scalar_one()


def project_live(engine) -> None:
    """Build the read model as a live projector would: every stored event through the consumer."""
    projector = EventConsumer(name="projector", engine=engine, apply=apply, notify=lambda note: None)
    bodies, after = [], 0
    with read_transaction(engine) as conn:
        while page := store.all_events(conn, after_id=after, limit=1000):
            bodies.extend(body for _, body in page)
            after = page[-1][0]
    for body in bodies:
        assert projector(delivery_of(body.encode() if isinstance(body, str) else body)).outcome is Outcome.ACK


def read_model(engine) -> tuple:
    with read_transaction(engine) as conn:
        return rows_of_read_model(conn)


def time_rebuild(engine) -> tuple[float, int]:
    started = time.perf_counter()
    with write_transaction(engine) as conn:
        replayed = rebuild(conn)
    return time.perf_counter() - started, replayed


def time_baseline(engine) -> tuple[float, int]:
    started = time.perf_counter()
    seen = 0
    with write_transaction(engine) as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_scratch (id INTEGER PRIMARY KEY, type TEXT, stream TEXT)"))
        conn.execute(text("DELETE FROM bench_scratch"))
        after = 0
        while True:
            page = store.all_events(conn, after_id=after, limit=1000)
            if not page:
                break
            rows = []
            for event_id, body in page:
                event = orjson.loads(body)
                rows.append({"id": event_id, "type": event["type"], "stream": str(event.get("payload", {}).get("name"))})
                after = event_id
            conn.execute(text("INSERT INTO bench_scratch (id, type, stream) VALUES (:id, :type, :stream)"), rows)
            seen += len(page)
    return time.perf_counter() - started, seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", metavar="PATH", default=None, help="write the result there (bench/all reads it)")
    args = parser.parse_args()
    configure_logging("bench", fmt="json", level="warning")

    with tempfile.TemporaryDirectory(prefix="imagesvc-replay-") as workdir:
        url = f"sqlite:///{workdir}/replay.db"
        migrate.upgrade(url)
        engine = make_engine(url, pool_size=1)
        with write_transaction(engine) as conn:
            accounts.create_user(conn, "root", api_key=None, is_superadmin=True)
        started = time.perf_counter()
        events = fill(engine, args.events)
        print(f"event store: {events} events from {IMAGES} imports and updates, made in "
              f"{time.perf_counter() - started:.1f} s")
        project_live(engine)
        live = read_model(engine)

        baseline, imagesvc = [], []
        for round_ in range(args.rounds):
            seconds, seen = time_baseline(engine)
            baseline.append(seconds)
            seconds, replayed = time_rebuild(engine)
            imagesvc.append(seconds)
            assert seen == replayed == events, (seen, replayed, events)
            print(f"round {round_ + 1}: baseline {baseline[-1]:.2f} s, imagesvc rebuild {imagesvc[-1]:.2f} s")
        identical = read_model(engine) == live
        engine.dispose()

    best_base, best = min(baseline), min(imagesvc)
    print()
    print(f"{'':28}{'baseline':>12}{'imagesvc':>12}")
    print(f"{'seconds (best)':28}{best_base:>12.2f}{best:>12.2f}")
    print(f"{'events per second':28}{events / best_base:>12,.0f}{events / best:>12,.0f}")
    print(f"imagesvc / baseline time: {best / best_base:.1f}x")
    scaled = best * 10_000 / events
    print(f"10,000 events replay in {scaled:.1f} s (bound {BOUND_SECONDS:.0f} s): "
          f"{'met' if scaled <= BOUND_SECONDS else 'NOT met'}")
    print(f"rebuilt read model identical to the live projector's: {identical}")
    if args.json:
        from report import figure, write_json

        figures = [
            figure("replay time, s (best round; ratio: x the floor)", best, best_base, best / best_base,
                   f"10,000 events <= {BOUND_SECONDS:.0f} s", scaled <= BOUND_SECONDS),
            figure("10,000 events replay in, s", scaled, None, None, f"<= {BOUND_SECONDS:.0f} s",
                   scaled <= BOUND_SECONDS),
            figure("events per second (info)", events / best, events / best_base, best_base / best),
            figure(f"  {'round 1' if len(imagesvc) == 1 else f'rounds 1-{len(imagesvc)}'}, s, info",
                   " / ".join(f"{x:.2f}" for x in imagesvc), " / ".join(f"{x:.2f}" for x in baseline)),
            figure("rebuilt read model equal to the live one", "yes" if identical else "no", None, None, "yes",
                   identical),
        ]
        write_json("replay", args, figures, {"events": events, "images": IMAGES, "imagesvc_rounds_s": imagesvc,
                                             "baseline_rounds_s": baseline, "identical": identical},
                   path=args.json)
    return 0 if identical and scaled <= BOUND_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
