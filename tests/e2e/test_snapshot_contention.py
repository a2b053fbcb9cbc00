"""Reliability plan row K3: contention for one VM's snapshot, on RabbitMQ and PostgreSQL.

Fifty clients ask at once for an image of the same snapshot: exactly one export runs and ends
with an image; every other request is refused with the reference's 417 (by the gateway, or by
the node agent that finds the snapshot held), each accepted task ends exactly once, and no lease,
partial file or stray image is left. A VM that is being migrated (its status is not one of the
operational ones) and a node in maintenance are refused with 423 before anything is published.

The reference locks the snapshot, not the whole VM: images of two different snapshots of one VM
proceed side by side (``test_snapshot_images.py``), so "exactly one" is per snapshot.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
from kombu import Connection
from sqlalchemy import create_engine, func, select

from imagesvc.shared.db.models import Image, Lock
from tests.e2e.conftest import launch
from tests.e2e.test_contention import all_at_once
from tests.e2e.test_snapshot_images import NODE, new_vm, post, start_agent
from tests.support.ledger import assert_clean, read_ledger
from tests.support.polling import eventually
from tests.support.tier import scaled

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.postgres]

CLIENTS = scaled(ci=50, nightly=200)
SNAPSHOT_REFUSED = {"detail": "VM snapshot status is not OK"}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return {"store": tmp_path_factory.mktemp("store"), "vms": tmp_path_factory.mktemp("vms")}


@pytest.fixture(scope="module")
def system(request, tmp_path_factory, dirs):
    started = launch("distributed", request, tmp_path_factory, IMAGESVC_IMAGE_STORE=str(dirs["store"]),
                     IMAGESVC_SNAPSHOT_DIR=str(dirs["vms"]))
    started.admin("node", "set", NODE, "--status", "online")
    start_agent(started)
    yield started
    started.stop()


def ended(client, answer) -> tuple[int, dict]:
    """(HTTP code, body) the request finally ended with: a 201 is followed to its task's end."""
    if answer.status_code != 201:
        return answer.status_code, answer.json()
    task_id = answer.json()["task_id"]

    def done():
        status = client.get(f"/task/{task_id}/status/")
        assert status.json()["status"] in ("SUCCESS", "FAILURE"), status.text
        return status

    status = eventually(done, timeout=180, interval=0.2)
    return status.status_code, status.json()


def test_k3_many_images_of_one_snapshot_exactly_one_is_made(system, dirs, name):
    # Incompressible and large, so the one export still runs when the last request is decided.
    before = frozenset(read_ledger(system.database_url, prefix=system.prefix).tasks)
    vm = new_vm(system, dirs, content=os.urandom(160 * 1024 * 1024))
    names = [f"{name}-{i:03d}" for i in range(CLIENTS)]
    requests = [(lambda client, n=n: post(client, vm["hostname"], vm["snapname"], n)) for n in names]
    answers = [response for _, response in all_at_once(system, requests)]
    with system.client() as client:
        outcomes = [ended(client, answer) for answer in answers]
        codes = Counter(code for code, _ in outcomes)
        assert codes == Counter({200: 1, 417: CLIENTS - 1}), codes
        assert all(body == SNAPSHOT_REFUSED for code, body in outcomes if code == 417 and "detail" in body)
        made = [n for n, (code, _) in zip(names, outcomes) if code == 200]
        shown = {n: client.get(f"/image/{n}/").status_code for n in names}
        assert [n for n, code in shown.items() if code == 200] == made
        image = client.get(f"/image/{made[0]}/").json()["result"]
        assert image["status"] == 1
        snapshot_status = system.admin("vm", "snapshot", "list", vm["uuid"])
        assert "ok" in snapshot_status

    # Every command the gateway published is a task of the ledger (an answer within the answer
    # window carries the outcome, not the task id); a refusal by the gateway's own checks was
    # never published. Each published one ended exactly once, one of them with the image.
    ledger = eventually(lambda: _clean(system, before), timeout=60, interval=0.5)
    accepted = set(ledger.tasks) - before
    assert 1 <= len(accepted) <= CLIENTS
    assert sorted(record.terminal[0] for record in (ledger.tasks[t] for t in accepted)).count("task.succeeded") == 1
    refused_early = CLIENTS - len(accepted)
    engine = create_engine(system.database_url)
    try:
        with engine.connect() as conn:
            images = conn.execute(select(Image.name).where(Image.name.in_(names))).scalars().all()
            held = conn.execute(select(func.count()).select_from(Lock)).scalar_one()
    finally:
        engine.dispose()
    assert images == made and held == 0
    assert sorted(p.name for p in dirs["store"].iterdir() if not p.name.startswith(".")) == [image["uuid"]]
    assert not list((dirs["store"] / ".partial").glob("*"))
    print(f"\nK3: {CLIENTS} requests for one snapshot: 1 image, {refused_early} refused 417 by the gateway, "
          f"{len(accepted) - 1} accepted and refused 417 by the node agent, "
          f"lost={len(ledger.lost(accepted))}, doubled={len(ledger.doubled(accepted))}, leases left={held}")


def test_k3_a_vm_being_migrated_is_423_and_nothing_is_published(system, dirs, name):
    vm = new_vm(system, dirs, status="migrating")
    with system.client() as client:
        answer = post(client, vm["hostname"], vm["snapname"], name)
        assert (answer.status_code, answer.json()) == (423, {"detail": "VM is not operational"})
        assert client.get(f"/image/{name}/").status_code == 404
        # Once the migration is over, the same request goes through.
        system.admin("vm", "set", vm["uuid"], "--hostname", vm["hostname"], "--dc", "main", "--node", NODE,
                     "--status", "running", "--ostype", "1", "--disk", "1:10")
        assert ended(client, post(client, vm["hostname"], vm["snapname"], name))[0] == 200


def test_k3_a_node_in_maintenance_is_423_and_nothing_is_published(system, dirs, name):
    vm = new_vm(system, dirs)
    system.admin("node", "set", NODE, "--status", "maintenance")
    try:
        with system.client() as client:
            answers = [post(client, vm["hostname"], vm["snapname"], f"{name}-{i}") for i in range(5)]
            assert {(a.status_code, a.json()["detail"]) for a in answers} == {(423, "Node is not operational")}
    finally:
        system.admin("node", "set", NODE, "--status", "online")
    with Connection(system.broker_url, connect_timeout=5) as conn:
        queue = conn.channel().queue_declare(f"{system.prefix}node.{NODE}.commands", passive=True)
    assert queue.message_count == 0
    assert queue.consumer_count == 1  # the agent is there: an empty queue means nothing was sent


def _clean(system, before: frozenset[str]):
    """The ledger once every task begun since ``before`` ended exactly once and the queues are empty."""
    ledger = read_ledger(system.database_url, broker_url=system.broker_url, prefix=system.prefix)
    assert_clean(ledger, set(ledger.tasks) - before, effect=None)
    return ledger
