"""Seed a read model with a large synthetic catalogue, through the projector's own row builder.

    .venv/bin/python bench/seed_catalogue.py --database-url postgresql+psycopg://…/db --images 1000000

For benchmarks only: it writes the read model (``rm_images`` and the projector's stream
positions) of a migrated database directly, in batches of multi-row INSERTs (SQLAlchemy Core's
``insertmanyvalues``), so a million images take about a minute instead of the projector's
event-by-event path. Each row is what the projector would write for an ``image.imported`` event of
that image (``services.projector.handlers.read_model_row``), so lists and shows over it answer as
they would over a real catalogue. Nothing is written to the event store: a ``projector rebuild``
of such a database empties it again. Never point it at a database anyone uses.

The catalogue is deterministic for a given ``--seed``: names ``img-<n>`` (zero-padded, so name
order is numeric order) in a shuffled insertion order, 6 operating-system types, 200 owners, 5
statuses weights, public and private access, tags from a small vocabulary, a tenth of the images
bound to a datacenter, creation times spread over five years (many sharing a second, so orders by
``created`` need the name tie-breaker).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BATCH = 5_000
OWNERS = [f"owner{i:03d}" for i in range(200)]
TAGS = ["linux", "windows", "bsd", "db", "web", "gpu", "lts", "minimal", "cloud-init", "bench"]
OSTYPES = [1, 2, 3, 4, 5, 6]
#: (status, weight): most images are ready; some pending or failed.
STATUSES = [(1, 90), (2, 6), (3, 2), (4, 1), (5, 1)]
EPOCH = datetime(2021, 1, 1, tzinfo=timezone.utc)


def image_name(index: int, width: int) -> str:
    return f"img-{index:0{width}d}"


def synthetic_states(count: int, *, seed: int, datacenters: list[str]) -> Iterator[dict]:
    """``count`` image states (the shape image events carry), in a shuffled order."""
    from imagesvc.domain.images import to_state
    from imagesvc.shared.db.records import ImageRecord

    rng = random.Random(seed)
    width = len(str(count - 1))
    order = list(range(count))
    rng.shuffle(order)
    statuses, weights = zip(*STATUSES)
    for index in order:
        name = image_name(index, width)
        # Seconds since the epoch in steps of 150 s: about 8 images share each created second at 1M.
        created = EPOCH + timedelta(seconds=150 * rng.randrange(max(count // 8, 1)))
        bound = datacenters[rng.randrange(len(datacenters))] if datacenters and rng.random() < 0.1 else None
        record = ImageRecord(
            uuid=str(uuid.UUID(int=rng.getrandbits(128), version=4)), name=name, alias=name[:32],
            version=f"{rng.randrange(1, 30)}.{rng.randrange(10)}", desc=f"synthetic image {index}",
            owner=OWNERS[rng.randrange(len(OWNERS))], access=1 if rng.random() < 0.7 else 3,
            size=rng.randrange(1, 200) * 1024, ostype=OSTYPES[rng.randrange(len(OSTYPES))],
            deploy=rng.random() < 0.2, resize=rng.random() < 0.5,
            status=rng.choices(statuses, weights)[0], tags=sorted(rng.sample(TAGS, rng.randrange(0, 4))),
            created=created, changed=created, dc_bound=bound,
            dcs=[bound] if bound else (datacenters[:1] if datacenters else []),
            manifest_active={"v": 2, "name": name},
        )
        yield to_state(record, with_manifest=False)


def seed(database_url: str, count: int, *, seed_value: int = 1, batch: int = BATCH,
         progress: bool = True) -> float:
    """Write ``count`` images into the read model of ``database_url``; returns seconds taken."""
    from sqlalchemy import insert, select, text

    from imagesvc.services.projector.handlers import read_model_row
    from imagesvc.shared.contracts import ImageImported
    from imagesvc.shared.contracts.events import image_stream
    from imagesvc.shared.db.engine import make_engine, write_transaction
    from imagesvc.shared.db.models import Datacenter, ReadImage, ReadStream

    engine = make_engine(database_url, pool_size=1)
    started = time.monotonic()
    try:
        with engine.connect() as conn:
            datacenters = sorted(conn.execute(select(Datacenter.__table__.c.name)).scalars())
        images, streams = [], []
        written = 0

        def flush() -> None:
            nonlocal written
            with write_transaction(engine) as conn:
                conn.execute(insert(ReadImage.__table__), images)
                conn.execute(insert(ReadStream.__table__), streams)
            written += len(images)
            images.clear()
            streams.clear()
            if progress and written % (batch * 20) == 0:
                rate = written / (time.monotonic() - started)
                print(f"  {written:,} images ({rate:,.0f}/s)", flush=True)

        for state in synthetic_states(count, seed=seed_value, datacenters=datacenters):
            event = ImageImported(image=state, version=1)
            images.append({"uuid": state["uuid"], **read_model_row(event)})
            streams.append({"stream_id": image_stream(state["uuid"]), "version": 1})
            if len(images) >= batch:
                flush()
        if images:
            flush()
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("ANALYZE rm_images"))
    finally:
        engine.dispose()
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="a migrated imagesvc database (SQLAlchemy URL)")
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1, help="random seed (same seed, same catalogue)")
    parser.add_argument("--batch", type=int, default=BATCH, help="rows per INSERT transaction")
    args = parser.parse_args(argv)
    if args.images < 1 or args.batch < 1:
        parser.error("--images and --batch must be positive")
    seconds = seed(args.database_url, args.images, seed_value=args.seed, batch=args.batch)
    print(f"seeded {args.images:,} images in {seconds:.1f} s ({args.images / seconds:,.0f} images/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
