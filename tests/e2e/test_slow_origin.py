"""Reliability row T5 (slow_origin_headers): origins that send their response headers one byte
every 4 s, for the manifest, for the file probe and for the file itself. Nine such imports by one
user, then one normal import by another user, against a running system with an image store.

Each slow import must fail ``timeout`` within its wall-clock deadline + 5 s (measured from the
moment the origin received the request that trickles), and the origin must see its connection
closed by then; the other user's import must complete while they run: before the first of them
ends, which it can only do if one user's imports cannot take every importer thread (8 threads,
at most 4 of one user's imports at once, the rest deferred)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import time

import orjson
import pytest
from sqlalchemy import create_engine, select

from imagesvc.shared.db.models import StoredEvent
from tests.e2e.conftest import database_url, launch
from tests.support.origin import Origin
from tests.support.polling import eventually

pytestmark = pytest.mark.e2e

#: Seconds between two bytes of a slow origin's status line and headers: below every per-read
#: timeout in play (manifest and probe: FETCH_TIMEOUT; download: the idle timeout, 30 s), so
#: only a wall-clock deadline can end these fetches.
TRICKLE = 4.0
FETCH_TIMEOUT = 6.0
DOWNLOAD_TIMEOUT = 8.0
#: The row's bound beyond each deadline.
GRACE = 5.0
PHASES = ("manifest", "probe", "file")
PER_PHASE = 3


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def system(request, tmp_path_factory):
    started = launch(request.param, request, tmp_path_factory,
                     IMAGESVC_IMAGE_STORE=str(tmp_path_factory.mktemp("store")),
                     IMAGESVC_FETCH_TIMEOUT=str(FETCH_TIMEOUT), IMAGESVC_DOWNLOAD_TIMEOUT=str(DOWNLOAD_TIMEOUT),
                     IMAGESVC_WORKER_THREADS="8", IMAGESVC_ANSWER_WINDOW="0.5")
    yield started
    started.stop()


def slow_image(origin: Origin, phase: str) -> tuple[str, str]:
    """An image whose ``phase`` trickles; returns (manifest URL, the trickling path)."""
    url, manifest = origin.add_image(os.urandom(64 * 1024))
    path = f"/images/{manifest['uuid']}"
    if phase == "manifest":
        origin.routes[path].trickle = TRICKLE
        return url, path
    file_route = origin.routes[path + "/file"]
    file_route.trickle = TRICKLE
    file_route.trickle_from = 1 if phase == "probe" else 2  # "file": the probe is answered at once
    return url, path + "/file"


def post_import(client, name: str, manifest_url: str) -> str:
    answer = client.post(f"/image/{name}/", json={"manifest_url": manifest_url, "dc": "main"})
    assert answer.status_code in (200, 201, 400), answer.text
    return answer.json()["task_id"]


def failure_codes(system) -> dict[str, str]:
    """task id -> the ``code`` of its ``task.failed`` event."""
    engine = create_engine(database_url(system))
    events = StoredEvent.__table__
    try:
        with engine.connect() as conn:
            bodies = conn.execute(select(events.c.body).where(events.c.type == "task.failed")).scalars().all()
    finally:
        engine.dispose()
    return {e["correlation_id"]: e["payload"]["code"] for e in map(orjson.loads, bodies)}


def test_slow_origin_headers(system, origin):
    other_key = system.new_user(f"other-{os.urandom(3).hex()}", "--superadmin")
    images = [(phase, *slow_image(origin, phase)) for phase in PHASES for _ in range(PER_PHASE)]
    names = [f"slow-{phase}-{index}-{os.urandom(3).hex()}" for index, (phase, _, _) in enumerate(images)]
    started = time.monotonic()

    with system.client() as client, concurrent.futures.ThreadPoolExecutor(len(images)) as pool:
        slow_tasks = list(pool.map(lambda args: post_import(client, *args),
                                   [(name, url) for name, (_, url, _) in zip(names, images)]))
        slow_paths = {path for _, _, path in images}

        def four_running() -> None:
            arrived = {path for path, _ in origin.arrivals if path in slow_paths}
            assert len(arrived) >= 4, arrived

        eventually(four_running, timeout=30)

        normal_url, _ = origin.add_image(os.urandom(256 * 1024))
        with system.client(headers={"ES-API-KEY": other_key}) as other:
            normal_task = post_import(other, f"normal-{os.urandom(3).hex()}", normal_url)
            normal_posted = time.monotonic()
            ended: dict[str, tuple[float, int]] = {}

            def all_ended() -> None:
                for task_id in [normal_task, *slow_tasks]:
                    if task_id not in ended:
                        answer = (other if task_id == normal_task else client).get(f"/task/{task_id}/status/")
                        if answer.status_code != 201:
                            ended[task_id] = (time.monotonic(), answer.status_code)
                assert len(ended) == len(slow_tasks) + 1, f"{len(ended)} ended"

            eventually(all_ended, timeout=len(images) * (DOWNLOAD_TIMEOUT + GRACE), interval=0.2)

    # The other user's import completed while the slow ones ran: before the first of them ended.
    normal_end, normal_status = ended[normal_task]
    first_slow_end = min(ended[task][0] for task in slow_tasks)
    assert normal_status == 200
    assert normal_end < first_slow_end, (normal_end - started, first_slow_end - started)

    # Each slow import failed `timeout`, its connection closed within its deadline + 5 s of the
    # trickling request's arrival and the task ended within that too.
    codes = failure_codes(system)
    figures = []
    for (phase, _, path), task_id, name in zip(images, slow_tasks, names):
        deadline = DOWNLOAD_TIMEOUT if phase == "file" else FETCH_TIMEOUT
        arrival = [at for got, at in origin.arrivals if got == path][-1]
        cut = [at for got, at in origin.dropped if got == path and at >= arrival]  # not a probe's early close
        assert ended[task_id][1] == 400 and codes.get(task_id) == "timeout", (phase, ended[task_id], codes.get(task_id))
        assert cut and cut[0] - arrival <= deadline + GRACE, (phase, arrival - started, origin.dropped)
        assert ended[task_id][0] - arrival <= deadline + GRACE, (phase, ended[task_id][0] - arrival)
        figures.append((phase, round(cut[0] - arrival, 2), round(ended[task_id][0] - arrival, 2)))
    with system.client() as client:
        assert all(client.get(f"/image/{name}/").status_code == 404 for name in names)

    # Only the user at the cap was deferred (the log names the user).
    log = system.log("serve" if system.mode == "embedded" else "importer")
    deferred = [json.loads(line) for line in log.splitlines() if '"command.deferred"' in line]
    assert deferred and {line["user"] for line in deferred} == {"admin" if system.mode == "embedded" else "root"}
    print(f"\nT5 {system.mode}: normal import {normal_end - normal_posted:.2f} s after its POST, "
          f"first slow import ended {first_slow_end - started:.2f} s, all {max(e for e, _ in ended.values()) - started:.2f} s "
          f"after the start; deferrals {len(deferred)}; (phase, cut after, failed after): {figures}")
