"""The lease sweeper in the distributed mode: an import whose importer is SIGKILLed mid-download
and never restarted (its command waits in a queue nobody consumes) ends FAILURE ``lease_expired``
once its lease runs out, ended by the sweeper of another consumer process; no image row and
nothing of it in the store remain. The lease is made short for the test."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import launch
from tests.support.polling import eventually

pytestmark = pytest.mark.e2e

LEASE_SECONDS = 4
SWEEP_SECONDS = 0.5


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def distributed(request, tmp_path_factory, store_dir):
    started = launch("distributed", request, tmp_path_factory, IMAGESVC_IMAGE_STORE=str(store_dir),
                     IMAGESVC_LEASE_SECONDS=str(LEASE_SECONDS), IMAGESVC_SWEEP_SECONDS=str(SWEEP_SECONDS))
    yield started
    started.stop()


def test_an_import_whose_importer_died_for_good_fails_with_lease_expired(distributed, origin, store_dir, name):
    content = os.urandom(80 * 65536)  # about 8 s at 0.1 s per piece: the kill lands mid-download
    url, manifest = origin.add_image(content, pace=0.1)
    uuid = manifest["uuid"]
    with distributed.client() as client:
        answer = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"})
        assert answer.status_code in (200, 201), answer.text
        task_id = answer.json()["task_id"]

        def downloading():
            partial = list((store_dir / ".partial").glob(f"{uuid}*"))
            assert partial and partial[0].stat().st_size > 0

        eventually(downloading, timeout=20)
        # A progress report renewed the lease at most a second ago: it lapses within the lease.
        assert client.get(f"/image/{name}/").json()["result"]["status"] == 2
        distributed.kill("importer")  # SIGKILL, and no importer ever again
        killed = time.monotonic()

        def failed():
            status = client.get(f"/task/{task_id}/status/")
            assert status.status_code == 500, status.text
            return status

        status = eventually(failed, timeout=LEASE_SECONDS + 30)
        took = time.monotonic() - killed
        assert status.json()["status"] == "FAILURE"
        assert "lease expired" in status.json()["result"]["detail"]
        assert client.get(f"/image/{name}/").status_code == 404
        eventually(lambda: _ended_once_by_a_sweeper(distributed, task_id), timeout=10)
    assert not sorted(str(p) for p in store_dir.rglob(f"{uuid}*"))
    # Ended once, by a sweeper, within the lease plus a few sweep periods of the kill.
    assert took < LEASE_SECONDS + 1 + 10 * SWEEP_SECONDS, took
    print(f"\nlease {LEASE_SECONDS} s, sweep every {SWEEP_SECONDS} s: FAILURE {took:.1f} s after the kill")


def _ended_once_by_a_sweeper(system, task_id: str) -> None:
    ended = [line for service in ("updater", "deleter") for line in system.log(service).splitlines()
             if '"sweeper.task_failed"' in line and task_id in line]
    assert len(ended) == 1, ended
    assert '"lease_expired"' in ended[0]
