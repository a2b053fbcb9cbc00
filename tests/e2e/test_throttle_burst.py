"""Reliability plan row A3: one API key bursts far over its rate while another key works beside it.

With ``IMAGESVC_THROTTLE=40/minute`` (the original's throttle is a sliding window per user,
deviations #13), one key sends 200 import POSTs from 8 threads as fast as it can, while a second
key sends 20: the first gets 429 with the original's message and a ``Retry-After`` for
everything over its window, the second is never throttled, nothing answers 5xx, and every
import that was let through ends in exactly one terminal state. Embedded and distributed.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.e2e.conftest import database_url, launch
from tests.support.ledger import read_ledger
from tests.support.polling import eventually

pytestmark = pytest.mark.e2e

LIMIT, PERIOD = 40, 60.0
BURST = 200
NEIGHBOUR = 20
THROTTLED = re.compile(r"^Request was throttled\. Expected available in (\d+) seconds\.$")


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def system(request, tmp_path_factory):
    started = launch(request.param, request, tmp_path_factory, IMAGESVC_THROTTLE=f"{LIMIT}/minute")
    yield started
    started.stop()


def test_a3_a_burst_is_throttled_per_key_and_what_passes_completes(system, origin):
    burster = system.new_user(f"burst{uuid.uuid4().hex[:6]}", "--superadmin")
    neighbour = system.new_user(f"calm{uuid.uuid4().hex[:6]}", "--superadmin")
    manifests = [origin.add_manifest()[0] for _ in range(BURST + NEIGHBOUR)]

    def post(key: str, index: int) -> httpx.Response:
        with httpx.Client(base_url=system.url, headers={"ES-API-KEY": key}, timeout=60) as client:
            return client.post(f"/image/a3-{key[:6]}-{index:03d}/", json={"manifest_url": manifests[index], "dc": "main"})

    started = time.monotonic()
    with ThreadPoolExecutor(10) as pool:
        bursts = [pool.submit(post, burster, i) for i in range(BURST)]
        calm = [pool.submit(post, neighbour, BURST + i) for i in range(NEIGHBOUR)]
        burst_answers = [f.result() for f in bursts]
        calm_answers = [f.result() for f in calm]
    elapsed = time.monotonic() - started

    codes = Counter(a.status_code for a in burst_answers)
    assert not [c for c in codes if c >= 500], codes
    assert set(codes) <= {200, 201, 429}, codes
    passed = [a for a in burst_answers if a.status_code != 429]
    # A sliding window lets LIMIT through per PERIOD: the burst gets exactly that while it lasts
    # less than one period, and never more than one window's worth per period begun.
    assert LIMIT <= len(passed) <= LIMIT * math.ceil(elapsed / PERIOD), (len(passed), elapsed)
    for answer in burst_answers:
        if answer.status_code == 429:
            seconds = THROTTLED.match(answer.json()["detail"])
            assert seconds, answer.text
            assert answer.headers["retry-after"] == seconds.group(1) and 1 <= int(seconds.group(1)) <= PERIOD
    assert all(a.status_code in (200, 201) for a in calm_answers), [a.text for a in calm_answers]

    # Everything let through ends exactly once (read from the event store: the API would
    # throttle a poller too).
    tasks = {a.json()["task_id"] for a in passed + calm_answers}

    def ended():
        ledger = read_ledger(database_url(system))
        assert not ledger.lost(tasks), "not all ended yet"
        return ledger

    ledger = eventually(ended, timeout=120, interval=0.5)
    assert {t: ledger.tasks[t].terminal for t in tasks} == {t: ["task.succeeded"] for t in tasks}
    print(f"\nA3 ({system.mode}): {BURST} POSTs in {elapsed:.1f} s by one key: {len(passed)} let through, "
          f"{codes[429]} x 429; the other key: {NEIGHBOUR}/{NEIGHBOUR} let through; 0 x 5xx")
