"""A node of a three-node RabbitMQ cluster dies under a running distributed system.

A real cluster runs on this machine (``tests.support.private_broker.PrivateCluster``: three
private nodes, one Erlang cookie, joined with ``rabbitmqctl join_cluster``); imagesvc runs in the
distributed mode with ``IMAGESVC_BROKER_URL`` listing the three nodes. While clients stream image
imports through the HTTP gateway, the node that leads the command queues (quorum queues) is
SIGKILLed. Then, by the ledger (``tests.support.ledger``): every import the gateway accepted ended
in exactly one terminal event with exactly one effect and one image row, the read model shows
every accepted image, nothing is left in the outbox or any queue; a POST answered 503 may have run
(its publish reached the broker before the confirm was lost), but then exactly once. The time
until commands flow again is printed (``-s``) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timezone

import pytest
from sqlalchemy import create_engine, select

from imagesvc.shared.broker.topology import build_topology
from imagesvc.shared.db.models import StoredEvent
from tests.support.ledger import TERMINAL, assert_clean, read_ledger
from tests.support.polling import eventually
from tests.support.private_broker import PrivateBroker, PrivateCluster, available
from tests.support.services import unavailable
from tests.support.systems import System, start_distributed

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.postgres]

#: AMQP heartbeat of every imagesvc process (seconds): a node that dies without closing its
#: sockets is noticed within about two of them.
HEARTBEAT = 5
ACCEPTED = (200, 201)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = available()
    if why:
        unavailable("A private three-node RabbitMQ cluster", why)
    nodes = PrivateCluster(tmp_path_factory.mktemp("rabbitmq-cluster"), size=3)
    started = time.monotonic()
    try:
        nodes.start()
    except Exception as exc:  # noqa: BLE001
        nodes.close()
        unavailable("A private three-node RabbitMQ cluster", f"it did not start: {exc!r}")
    print(f"\ncluster of 3 nodes started in {time.monotonic() - started:.1f} s")
    yield nodes
    nodes.close()


@pytest.fixture(scope="module")
def system(cluster, postgres_admin_url, tmp_path_factory):
    # The contract tap is off: its own consumer would be one more connection to the dying node.
    started = start_distributed(tmp_path_factory.mktemp("cluster"), broker_url=cluster.urls,
                                postgres_admin_url=postgres_admin_url, gateways=1, contract_tap=False,
                                extra_env={"IMAGESVC_HEARTBEAT": str(HEARTBEAT)})
    yield started
    started.stop()


@dataclass
class Answer:
    name: str
    code: int
    task_id: str | None
    started: float  # time.time(): compared with the events' created_at
    seconds: float


def post_import(system: System, origin) -> Answer:
    url, _ = origin.add_manifest()
    name = "clu-" + os.urandom(5).hex()
    started = time.time()
    with system.client() as client:
        response = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"})
    task_id = response.json().get("task_id") if response.status_code in ACCEPTED else None
    return Answer(name, response.status_code, task_id, started, time.time() - started)


def post_stream(system: System, origin, *, threads: int, pace: float,
                stop: threading.Event) -> tuple[list[Answer], list[threading.Thread]]:
    """``threads`` clients each POSTing imports ``pace`` seconds apart until ``stop``."""
    answers: list[Answer] = []

    def client() -> None:
        while not stop.is_set():
            answers.append(post_import(system, origin))
            stop.wait(pace)  # load shaping

    workers = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    return answers, workers


def outcome_times(database_url: str) -> dict[str, float]:
    """Task id -> when its terminal event was stored (epoch seconds)."""
    engine = create_engine(database_url)
    events = StoredEvent.__table__
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(events.c.correlation_id, events.c.created_at)
                                .where(events.c.type.in_(TERMINAL)))
            return {row.correlation_id: row.created_at.replace(tzinfo=row.created_at.tzinfo or timezone.utc).timestamp()
                    for row in rows}
    finally:
        engine.dispose()


def command_queue_leader(cluster: PrivateCluster, prefix: str) -> PrivateBroker:
    """The node that leads most of this system's command queues (the importer's first); each of
    them must have a replica on every node."""
    names = {queue.name for queue in build_topology(prefix).command_queues.values()}
    queues = {name: found for name, found in cluster.quorum_queues().items() if name in names}
    assert queues, f"no quorum command queue of prefix {prefix!r} on the cluster"
    every_node = sorted(node.node for node in cluster.nodes)
    assert all(sorted(members) == every_node for _leader, members in queues.values()), queues
    leaders = {name: leader for name, (leader, _members) in queues.items()}
    importer = build_topology(prefix).command_queues["importer"].name
    counts = Counter(leaders.values())
    node = leaders.get(importer) or counts.most_common(1)[0][0]
    print(f"\ncommand queue leaders: {dict(counts)}; killing {node} (leads {importer}: {leaders.get(importer)})")
    return cluster.node_named(node)


def _log_event(line: str) -> str:
    """A JSON log line's event and error, shortened (what a 503 was about)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return line[:120]
    return f"{entry.get('event')}: {str(entry.get('error', ''))[:140]}"


def _reconnected(cluster: PrivateCluster, names: set[str]) -> None:
    back = {name for _node, name in cluster.connections()}
    assert names <= back, f"not reconnected: {sorted(names - back)}"


def _at_least(value: int, minimum: int) -> None:
    assert value >= minimum, f"{value} < {minimum}"


def test_the_command_queue_leader_is_killed_mid_stream(system, origin, cluster):
    stop = threading.Event()
    answers, workers = post_stream(system, origin, threads=4, pace=0.3, stop=stop)
    try:
        eventually(lambda: _at_least(sum(1 for a in answers if a.code in ACCEPTED), 12), timeout=60)
        victim = command_queue_leader(cluster, system.prefix)
        # Every process starts at the first URL, where the queues were declared (their leaders
        # are on the declaring connection's node): the kill takes the leaders and the connections.
        on_victim = {name for node, name in cluster.connections() if node == victim.node}
        assert on_victim, f"no imagesvc connection on {victim.node}: {cluster.connections()}"
        killed_at = time.time()
        victim.kill()
        # The stream goes on on the two nodes left: 20 accepted imports sent after the kill.
        eventually(lambda: _at_least(sum(1 for a in answers if a.code in ACCEPTED and a.started >= killed_at), 20),
                   timeout=90, interval=0.2)
        # Every kind of connection that was on the dead node is back, on the nodes left.
        eventually(lambda: _reconnected(cluster, on_victim), timeout=60, interval=0.5)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=120)
    survivor = cluster.running()[0]
    codes = Counter(a.code for a in answers)
    assert set(codes) <= {200, 201, 503}, codes
    accepted = {a.task_id for a in answers if a.code in ACCEPTED and a.task_id}

    def clean():
        ledger = read_ledger(system.database_url, broker_url=survivor.url, prefix=system.prefix)
        assert_clean(ledger, accepted, allow_unexpected=True)
        return ledger

    ledger = eventually(clean, timeout=90, interval=0.5)
    # A 503 is "unknown outcome": the command may have run (its confirm lost with the node), but
    # then only for a name answered 503, and exactly once.
    refused_names = {a.name for a in answers if a.code == 503}
    ran_though_503 = ledger.unexpected(accepted)
    for task_id in ran_though_503:
        record = ledger.tasks[task_id]
        assert record.image_names <= refused_names and len(record.terminal) == 1, record
    # The read model says what the accepted commands say: each accepted image is there.
    with system.client() as client:
        for answer in (a for a in answers if a.code in ACCEPTED):
            shown = client.get(f"/image/{answer.name}/")
            assert shown.status_code == 200, (answer.name, shown.status_code, shown.text[:200])
            assert shown.json()["result"]["name"] == answer.name

    outcomes = outcome_times(system.database_url)
    by_task = {a.task_id: a for a in answers if a.task_id}
    after = [outcomes[t] for t, a in by_task.items() if a.started >= killed_at and t in outcomes]
    first_outcome = min(after) - killed_at
    around = sorted(t for t in outcomes.values() if t >= killed_at - 10)
    gap = max((b - a for a, b in zip(around, around[1:]) if b >= killed_at), default=0.0)
    first_accept = min(a.started + a.seconds for a in answers if a.code in ACCEPTED and a.started >= killed_at) - killed_at
    reasons = Counter(_log_event(line) for line in system.log("gateway0").splitlines()
                      if '"warning"' in line or '"error"' in line)
    print(f"\nconnections on the killed node: {sorted(on_victim)}\ngateway warnings: {dict(reasons)}")
    print(f"\ncluster node kill: posts={len(answers)} codes={dict(codes)} accepted={len(accepted)} "
          f"lost={len(ledger.lost(accepted))} doubled={len(ledger.doubled(accepted))} "
          f"ran_though_503={len(ran_though_503)} first_accept_after_kill_s={first_accept:.2f} "
          f"first_outcome_after_kill_s={first_outcome:.2f} longest_outcome_gap_s={gap:.2f}")
