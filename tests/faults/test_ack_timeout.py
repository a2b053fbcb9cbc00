"""Reliability plan row C5 (nightly, about 4 minutes): RabbitMQ times a delivery out.

A private RabbitMQ node with ``consumer_timeout = 60000`` (1 min; the broker checks about once a
minute) under a distributed system with an image store, one importer, prefetch 1.

1. The download's own deadline is shorter than the broker's (``IMAGESVC_DOWNLOAD_TIMEOUT`` 45 s,
   a file served at 64 KiB/s): the import fails with ``timeout`` and is acknowledged before the
   broker would time it out; the importer's connection is never closed, one delivery.
2. The deadline is longer (600 s): the broker closes the importer's channel (PRECONDITION_FAILED)
   while the slow download runs; the importer reconnects and the redelivered command takes the
   work over (the file is served fast the second time); the first delivery, still downloading
   on its worker thread, is superseded at its next lease renewal and stops without an outcome.
   The task ends once, successfully, with the right file and nothing partial left.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from tests.support.ledger import assert_clean, read_ledger
from tests.support.polling import eventually
from tests.support.private_broker import PrivateBroker, available
from tests.support.services import unavailable
from tests.support.systems import start_distributed

pytestmark = [pytest.mark.nightly, pytest.mark.faults, pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.postgres]

CONSUMER_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    why = available()
    if why:
        unavailable("A private RabbitMQ node", why)
    node = PrivateBroker(tmp_path_factory.mktemp("rabbitmq-c5"), extra_config=f"consumer_timeout = {CONSUMER_TIMEOUT_MS}\n")
    node.start()
    yield node
    node.close()


@pytest.fixture(scope="module")
def system(broker, postgres_admin_url, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults-c5")
    started = start_distributed(workdir, broker_url=broker.url, postgres_admin_url=postgres_admin_url, gateways=1,
                                extra_env={"IMAGESVC_IMAGE_STORE": str(workdir / "store"), "IMAGESVC_PREFETCH": "1",
                                           "IMAGESVC_HEARTBEAT": "10", "IMAGESVC_DOWNLOAD_TIMEOUT": "45"})
    yield started
    started.stop()


def importer_with(system, **env: str) -> None:
    shared = system.env
    system.env = {**shared, **env}
    try:
        system.kill("importer")
        system.start_worker("importer")
    finally:
        system.env = shared


def start_import(system, name: str, url: str) -> str:
    with system.client() as client:
        answer = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"})
    assert answer.status_code == 201, answer.text
    return answer.json()["task_id"]


def ended(system, task_id: str, timeout: float) -> dict:
    with system.client() as client:
        def done():
            status = client.get(f"/task/{task_id}/status/").json()
            assert status["status"] in ("SUCCESS", "FAILURE"), status
            return status

        return eventually(done, timeout=timeout, interval=1.0)


def test_c5a_the_download_deadline_fires_before_the_broker_times_the_delivery_out(system, origin):
    lost_before = system.log("importer").count('"consumer.connection_lost"')
    url, _ = origin.add_image(os.urandom(160 * 65536), pace=1.0)  # 10 MiB at 64 KiB/s: 160 s
    started = time.monotonic()
    task_id = start_import(system, "c5-deadline", url)
    status = ended(system, task_id, timeout=CONSUMER_TIMEOUT_MS / 1000 + 60)
    seconds = time.monotonic() - started
    assert status["status"] == "FAILURE" and status["result"]["code"] == "timeout", status
    assert seconds < CONSUMER_TIMEOUT_MS / 1000, seconds
    assert system.log("importer").count('"consumer.connection_lost"') == lost_before
    ledger = read_ledger(system.database_url, broker_url=system.broker_url, prefix=system.prefix)
    assert_clean(ledger, {task_id}, effect=None, allow_unexpected=True)
    print(f"\nC5a: download deadline 45 s fired after {seconds:.0f} s, before the broker's 60 s; 1 delivery")


@pytest.mark.timeout(900)
def test_c5b_a_delivery_the_broker_timed_out_is_taken_over_once(system, origin):
    importer_with(system, IMAGESVC_DOWNLOAD_TIMEOUT="600")
    try:
        content = os.urandom(240 * 65536)  # 15 MiB: 240 s at 64 KiB/s the first time, fast the second
        url, manifest = origin.add_image(content, pace=1.0)
        # Slow for the importer's probe of the file and its first download, fast after that.
        origin.routes[f"/images/{manifest['uuid']}/file"].paced_requests = 2
        lost_before = system.log("importer").count('"consumer.connection_lost"')
        started = time.monotonic()
        task_id = start_import(system, "c5-taken-over", url)
        status = ended(system, task_id, timeout=400)
        seconds = time.monotonic() - started
        assert status["status"] == "SUCCESS", status
        log = system.log("importer")
        assert log.count('"consumer.connection_lost"') > lost_before, "the broker never timed the delivery out"
        assert "PRECONDITION_FAILED" in log or "precondition" in log.lower()
        # The first delivery stops at its next renewal (a second at most after the takeover):
        # superseded, or a duplicate if the redelivery had already ended the task by then.
        def first_delivery_stopped() -> dict:
            records = [json.loads(line) for line in system.log("importer").splitlines()
                       if '"message.handled"' in line and task_id in line]
            assert len(records) == 2, records
            return {record["attempt"]: record["reason"] for record in records}

        reasons = eventually(first_delivery_stopped, timeout=30)
        assert reasons[1] in ("superseded", "duplicate") and reasons[2] == "handled", reasons
        store = system.workdir / "store"
        stored = store / manifest["uuid"] / "file"
        assert hashlib.sha1(stored.read_bytes()).hexdigest() == hashlib.sha1(content).hexdigest()
        eventually(lambda: _nothing_partial(store, manifest["uuid"]), timeout=30)
        ledger = read_ledger(system.database_url, broker_url=system.broker_url, prefix=system.prefix)
        assert_clean(ledger, {task_id}, allow_unexpected=True)
        print(f"\nC5b: the broker timed the delivery out; the redelivery took over and the import succeeded "
              f"after {seconds:.0f} s; the first delivery stopped as {reasons[1]}; 1 terminal event, 1 image")
    finally:
        importer_with(system)


def _nothing_partial(store, uuid: str) -> None:
    partial = store / ".partial"
    left = sorted(p.name for p in partial.glob(f"{uuid}*")) if partial.is_dir() else []
    assert not left, left


def _at_least(value: int, minimum: int) -> None:
    assert value >= minimum, f"{value} < {minimum}"
