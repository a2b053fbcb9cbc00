"""Reliability plan row C1: importers SIGKILLed in the middle of downloads.

Two importer processes (prefetch 1) share the import queue; every import streams a file that
the loopback origin serves slowly, so a kill always lands mid-download. A supervisor (this test)
kills one of them at a random moment while both are downloading and restarts it at once. After
the last import ends: the ledger is clean (every accepted import ended exactly once, with one
image), the store holds exactly one file per image and no partial or trash file, no image is left
PENDING and no lease is held, and each kill's delivery came back with the broker's
``x-delivery-count`` (our attempt number above 1).

CI: 20 imports of 4 MiB at 2 MiB/s, 2 kills; nightly: the plan's 100 imports of 20 MiB, 5 kills.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
import hashlib
import json
import os
import random
import time
from collections import Counter

import pytest
from sqlalchemy import create_engine, func, select

from imagesvc.shared.db.models import Image, Lock
from tests.support.ledger import assert_clean, read_ledger
from tests.support.origin import Origin
from tests.support.polling import eventually
from tests.support.systems import start_distributed
from tests.support.tier import scaled

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.postgres]

IMPORTS = scaled(ci=20, nightly=100)
KILLS = scaled(ci=2, nightly=5)
FILE_BYTES = scaled(ci=4, nightly=20) * 1024 * 1024
#: The origin serves 64 KiB pieces, one per PACE seconds: 2 MiB/s.
PACE = 1 / 32
IMPORTERS = ("importer", "importer2")


@pytest.fixture(scope="module")
def system(rabbitmq_url, postgres_admin_url, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults-kills")
    started = start_distributed(workdir, broker_url=rabbitmq_url, postgres_admin_url=postgres_admin_url,
                                extra_env={"IMAGESVC_IMAGE_STORE": str(workdir / "store"), "IMAGESVC_PREFETCH": "1"})
    started.start_worker("importer", name="importer2")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def origin():
    """An origin of the module's own: its files (nightly: 2 GiB) are freed when the module ends."""
    with contextlib.closing(Origin()) as served:
        yield served


def partial_downloads(system) -> list[str]:
    partial = system.workdir / "store" / ".partial"
    return [p.name for p in partial.iterdir()] if partial.is_dir() else []


def growing_downloads(system) -> list[str]:
    """Partial files written to within the last half second (a killed download's file stays
    behind until its redelivery starts over)."""
    partial = system.workdir / "store" / ".partial"
    now, growing = time.time(), []
    for name in partial_downloads(system):
        try:
            if now - (partial / name).stat().st_mtime < 0.5:
                growing.append(name)
        except FileNotFoundError:
            pass  # completed (renamed into place) or discarded meanwhile
    return growing


def handled_records(system, name: str) -> list[dict]:
    records = []
    for line in system.log(name).splitlines():
        if '"message.handled"' in line:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by the kill
    return records


@pytest.mark.timeout(scaled(ci=300, nightly=1800))
def test_c1_importers_killed_mid_download_lose_and_double_nothing(system, origin):
    rng = random.Random(os.environ.get("IMAGESVC_TEST_SEED", "c1"))
    accepted: dict[str, str] = {}  # task id -> image name
    contents: dict[str, bytes] = {}  # image name -> its file
    urls = {}
    for index in range(IMPORTS):
        name = f"c1-{index:03d}"
        contents[name] = rng.randbytes(FILE_BYTES)
        urls[name], _ = origin.add_image(contents[name], pace=PACE)

    def post(name: str) -> None:
        with system.client() as client:
            answer = client.post(f"/image/{name}/", json={"manifest_url": urls[name], "dc": "main"})
        assert answer.status_code == 201, answer.text
        accepted[answer.json()["task_id"]] = name

    # All at once: each answer waits for its import to start (or the answer window), and the
    # kills below must come while most imports are still queued.
    with ThreadPoolExecutor(IMPORTS) as pool:
        list(pool.map(post, sorted(urls)))

    kills: list[str] = []
    for _ in range(KILLS):
        # Both importers are mid-download: whichever dies leaves a partial file and an unacked
        # delivery behind.
        eventually(lambda: _assert_at_least(len(growing_downloads(system)), 2), timeout=60, interval=0.05)
        victim = rng.choice(IMPORTERS)
        system.kill(victim)
        system.start_worker("importer", name=victim)  # the supervisor restarts it at once
        kills.append(victim)

    with system.client() as client:
        def all_ended() -> dict[str, int]:
            codes = {}
            for task_id in accepted:
                status = client.get(f"/task/{task_id}/status/")
                assert status.json()["status"] in ("SUCCESS", "FAILURE"), (task_id, status.text)
                codes[task_id] = status.status_code
            return codes

        codes = eventually(all_ended, timeout=scaled(ci=180, nightly=900), interval=1.0)
    assert Counter(codes.values()) == Counter({200: IMPORTS}), codes

    ledger = eventually(lambda: _clean(system, set(accepted)), timeout=60, interval=0.5)
    assert not ledger.unexpected(set(accepted))

    # The store: one complete, verified file per image; nothing partial, nothing in the trash.
    store = system.workdir / "store"
    engine = create_engine(system.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Image.name, Image.uuid, Image.status)).all()
            held = conn.execute(select(func.count()).select_from(Lock)).scalar_one()
    finally:
        engine.dispose()
    assert sorted(name for name, _, _ in rows) == sorted(accepted.values())
    assert {status for _, _, status in rows} == {1}, "an image was left PENDING"
    assert held == 0
    image_dirs = sorted(p.name for p in store.iterdir() if not p.name.startswith("."))
    assert image_dirs == sorted(uuid for _, uuid, _ in rows)
    for name, uuid, _ in rows:
        stored = store / uuid / "file"
        assert hashlib.sha1(stored.read_bytes()).digest() == hashlib.sha1(contents[name]).digest(), name
    assert partial_downloads(system) == []
    trash = store / ".trash"
    assert not trash.is_dir() or not list(trash.iterdir())

    # Each kill interrupted the one delivery its victim held (prefetch 1), which came back counted
    # by the broker: the attempts beyond the first, over all tasks, add up to the kills (a copy
    # that was killed again shows in its task's last attempt).
    handled = [record for name in IMPORTERS for record in handled_records(system, name)
               if record.get("task_id") in accepted]
    last_attempt: dict[str, int] = {}
    for record in handled:
        last_attempt[record["task_id"]] = max(last_attempt.get(record["task_id"], 1), record["attempt"])
    again = [record for record in handled if record["attempt"] > 1]
    assert all(record["redelivered"] for record in again), again
    assert sum(attempt - 1 for attempt in last_attempt.values()) >= KILLS, (kills, again)
    print(f"\nC1: imports={IMPORTS} of {FILE_BYTES >> 20} MiB, kills={kills}, "
          f"redelivered={len(again)}, lost={len(ledger.lost(set(accepted)))}, "
          f"doubled={len(ledger.doubled(set(accepted)))}, images={len(rows)}, partial=0")


def _assert_at_least(value: int, minimum: int) -> None:
    assert value >= minimum, f"{value} < {minimum}"


def _clean(system, accepted: set[str]):
    ledger = read_ledger(system.database_url, broker_url=system.broker_url, prefix=system.prefix)
    assert_clean(ledger, accepted)
    return ledger
