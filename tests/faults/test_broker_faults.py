"""Reliability plan §3, rows R1-R7: the broker fails under a running distributed system.

Every row runs against a private RabbitMQ node (``tests.support.private_broker``) that the test
may stop, kill or alarm, never the shared one; the network faults go through
``tests.support.faultproxy``. After each fault the ledger (``tests.support.ledger``) must be clean:
every command the gateway accepted (200/201) ended in exactly one terminal event with exactly one
effect, nothing else ran, the outbox and every queue are empty. Figures (answers, times) are
printed with ``-s`` and recorded in docs/reliability.md.
"""

from __future__ import annotations

import os
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from kombu import Connection

from tests.support.contract_tap import unbound
from tests.support.faultproxy import FaultProxy
from tests.support.ledger import assert_clean, read_ledger
from tests.support.polling import eventually
from tests.support.private_broker import PrivateBroker, available
from tests.support.services import unavailable
from tests.support.systems import System, start_distributed
from tests.support.tier import scaled

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.postgres]

HEARTBEAT = 10
#: The gateway's confirm deadline (IMAGESVC_PUBLISH_TIMEOUT's default): a 503 must come by then.
PUBLISH_TIMEOUT = 5.0
ACCEPTED = (200, 201)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    why = available()
    if why:
        unavailable("A private RabbitMQ node", why)
    node = PrivateBroker(tmp_path_factory.mktemp("rabbitmq"))
    try:
        node.start()
    except Exception as exc:  # noqa: BLE001
        node.close()
        unavailable("A private RabbitMQ node", f"it did not start: {exc!r}")
    yield node
    node.close()


@pytest.fixture(scope="module")
def system(broker, postgres_admin_url, tmp_path_factory):
    started = start_distributed(tmp_path_factory.mktemp("faults"), broker_url=broker.url,
                                postgres_admin_url=postgres_admin_url, gateways=1,
                                extra_env={"IMAGESVC_HEARTBEAT": str(HEARTBEAT)})
    yield started
    broker_up(broker)  # the queues are deleted on stop: the node must be serving
    started.stop()


@pytest.fixture(autouse=True)
def broker_serving_after_each_row(broker):
    """A row that fails half-way must not leave the next one a dead broker."""
    yield
    broker_up(broker)


def broker_up(broker: PrivateBroker) -> None:
    if broker.pid is None:
        broker.start()
    elif not broker.serving():
        broker.start_app()
    broker.set_disk_free_limit("50MB")


@dataclass
class Answer:
    name: str
    code: int
    task_id: str | None
    started: float
    seconds: float


def post_import(system: System, origin, *, delay: float = 0.0) -> Answer:
    url, _ = origin.add_manifest(delay=delay)
    name = "flt-" + os.urandom(5).hex()
    started = time.monotonic()
    with system.client() as client:
        response = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"})
    seconds = time.monotonic() - started
    task_id = response.json().get("task_id") if response.status_code in ACCEPTED else None
    return Answer(name, response.status_code, task_id, started, seconds)


def post_stream(system: System, origin, *, threads: int, pace: float,
                stop: threading.Event) -> tuple[list[Answer], list[threading.Thread]]:
    """``threads`` clients each POSTing imports ``pace`` seconds apart until ``stop`` (the
    load's shape, not a wait for a result); returns the shared answer list and the threads."""
    answers: list[Answer] = []

    def client() -> None:
        while not stop.is_set():
            answers.append(post_import(system, origin))
            stop.wait(pace)  # load shaping

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    return answers, workers


def accepted_ids(answers: list[Answer]) -> set[str]:
    return {a.task_id for a in answers if a.code in ACCEPTED and a.task_id}


#: Task ids that existed when the current row started (the rows share one system: a row judges
#: only the tasks of its own time).
_BEFORE: set[str] = set()


@pytest.fixture(autouse=True)
def _tasks_before(system):
    _BEFORE.clear()
    _BEFORE.update(read_ledger(system.database_url, broker_url=None, prefix=system.prefix).tasks)
    yield


def unexpected(ledger, accepted: set[str]) -> set[str]:
    return set(ledger.unexpected(accepted)) - _BEFORE


def ledger_clean(system: System, accepted: set[str], *, before: set[str] | None = None, **options):
    """A check that the ledger is clean for ``accepted``, judging only tasks not in ``before``
    (default: those that existed when the row started)."""
    def check():
        ledger = read_ledger(system.database_url, broker_url=system.broker_url, prefix=system.prefix)
        assert_clean(ledger, accepted, known_before=frozenset(_BEFORE if before is None else before), **options)
        return ledger

    return check


def respawn(system: System, names: list[str], broker_url: str) -> None:
    """Restart processes of ``system`` with their broker connections going to ``broker_url``
    (a fault proxy, or the node again): ``gateway0`` and consumer services."""
    env = system.env
    system.env = {**env, "IMAGESVC_BROKER_URL": broker_url}
    try:
        for name in names:
            system.kill(name, 15)
            if name.startswith("gateway"):
                system.start_gateway(int(name.removeprefix("gateway")))
            else:
                system.start_worker(name)
    finally:
        system.env = env


def proc_status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Threads", "VmRSS"):
            fields[key] = int(value.split()[0])
    return fields


def report(row: str, **figures) -> None:
    print(f"\n{row}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# --- R1 / R2: the broker goes away mid-stream ------------------------------------------------


def broker_outage_mid_stream(system, origin, broker, *, take_down, bring_up, down_for: float, row: str,
                             flowing: int = 12):
    """The fault strikes once ``flowing`` POSTs of the stream were answered. Judges only the
    tasks of this call (a row may call it several times)."""
    before = set(read_ledger(system.database_url, broker_url=None, prefix=system.prefix).tasks)
    stop = threading.Event()
    answers, workers = post_stream(system, origin, threads=4, pace=0.5, stop=stop)
    try:
        eventually(lambda: _at_least(len(answers), flowing), timeout=60)  # the stream is flowing
        take_down()
        went_down = time.monotonic()
        time.sleep(down_for)  # the fault's duration
        came_back_from = time.monotonic()
        bring_up()
        back = time.monotonic()
        # The stream goes on after the restart: the gateway must accept again, consumers resume.
        eventually(lambda: _at_least(sum(1 for a in answers if a.code in ACCEPTED and a.started >= back), 20),
                   timeout=30, interval=0.1)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=120)
    codes = Counter(a.code for a in answers)
    assert set(codes) <= {200, 201, 503}, codes
    # Sent while the broker was away (with a margin for requests already past their publish).
    during = [a for a in answers if went_down + 0.5 <= a.started and a.started + a.seconds <= came_back_from]
    assert during, "no request was made while the broker was down"
    assert all(a.code == 503 for a in during), Counter(a.code for a in during)
    slowest_503 = max(a.seconds for a in answers if a.code == 503)
    assert slowest_503 <= PUBLISH_TIMEOUT, f"a 503 took {slowest_503:.2f} s"
    accepted = accepted_ids(answers)
    ledger = eventually(ledger_clean(system, accepted, before=before, allow_unexpected=True), timeout=60, interval=0.5)
    # As in R3: a 503 is "unknown outcome". A publish the broker took just as it went down may
    # have lost its confirm, so its command can run though its POST was answered 503; then only
    # for a name answered 503, and exactly once. Nothing accepted is missing (checked above).
    refused_names = {a.name for a in answers if a.code == 503}
    ran_though_503 = set(ledger.unexpected(accepted)) - before
    for task_id in ran_though_503:
        record = ledger.tasks[task_id]
        assert record.image_names <= refused_names and len(record.terminal) == 1, record
    recovered = time.monotonic() - back
    first_after = min((a.started + a.seconds for a in answers if a.code in ACCEPTED and a.started >= back),
                      default=None)
    report(row, posts=len(answers), codes=dict(codes), accepted=len(accepted), lost=len(ledger.lost(accepted)),
           doubled=len(ledger.doubled(accepted)), ran_though_503=len(ran_though_503),
           slowest_503_s=round(slowest_503, 2),
           first_accept_after_restart_s=None if first_after is None else round(first_after - back, 2),
           ledger_clean_after_restart_s=round(recovered, 1))
    return ledger


def _at_least(value: int, minimum: int) -> None:
    assert value >= minimum, f"{value} < {minimum}"


def test_r1_broker_restart_graceful_mid_stream(system, origin, broker):
    broker_outage_mid_stream(system, origin, broker, take_down=broker.stop_app, bring_up=broker.start_app,
                             down_for=10, row="R1")


def test_r2_broker_kill9_mid_stream(system, origin, broker):
    # CI: once; nightly: three times, the kill striking at a different point of the stream.
    for round_, flowing in enumerate(scaled(ci=[12], nightly=[8, 16, 24])):
        broker_outage_mid_stream(system, origin, broker, take_down=broker.kill, bring_up=broker.start,
                                 down_for=5, row=f"R2 round {round_ + 1}", flowing=flowing)


# --- R3: confirms lost on the way back ---------------------------------------------------------


def test_r3_publish_confirm_lost(system, origin, broker):
    proxy = FaultProxy("127.0.0.1", broker.port, trap_grace=1.0)
    try:
        respawn(system, ["gateway0"], f"amqp://guest:guest@127.0.0.1:{proxy.port}//")
        answers = []
        trapped = 0
        for index in range(60):
            if index % 6 == 0:
                # More than a heartbeat frame (8 bytes): the next publish frame set springs it.
                proxy.reset_after(200)
                trapped += 1
            answers.append(post_import(system, origin))
        codes = Counter(a.code for a in answers)
        assert set(codes) <= {200, 201, 503}, codes
        assert proxy.traps_sprung >= trapped - 1, (proxy.traps_sprung, trapped)
        accepted = accepted_ids(answers)
        refused_names = {a.name for a in answers if a.code == 503}
        ledger = eventually(ledger_clean(system, accepted, allow_unexpected=True), timeout=60, interval=0.5)
        # A 503 is "unknown outcome": its command may have run, but then exactly once, and only
        # for a name that was answered 503; nothing accepted is missing (checked above).
        for task_id in unexpected(ledger, accepted):
            record = ledger.tasks[task_id]
            assert record.image_names <= refused_names and len(record.terminal) == 1, record
        report("R3", posts=len(answers), traps_sprung=proxy.traps_sprung, codes=dict(codes), accepted=len(accepted),
               lost=len(ledger.lost(accepted)), doubled=len(ledger.doubled(accepted)),
               ran_though_503=len(unexpected(ledger, accepted)),
               redelivered_duplicates=system.log("importer").count('"duplicate"'))
    finally:
        respawn(system, ["gateway0"], broker.url)
        proxy.close()


# --- R4: the broker is down: bounded 503s, no leak, quick recovery ------------------------------


def test_r4_broker_down_bounded_retry(system, origin, broker):
    gateway = system.processes["gateway0"].pid
    warm = post_import(system, origin)  # pooled connections exist before the fault
    assert warm.code in ACCEPTED
    before = proc_status(gateway)
    broker.stop_app()
    answers = [post_import(system, origin) for _ in range(20)]
    after = proc_status(gateway)
    assert [a.code for a in answers] == [503] * 20
    slowest = max(a.seconds for a in answers)
    assert slowest <= PUBLISH_TIMEOUT, f"slowest 503: {slowest:.2f} s"
    assert after["Threads"] <= before["Threads"] + 2, (before, after)
    assert after["VmRSS"] - before["VmRSS"] < 20 * 1024, (before, after)
    broker.start_app()
    back = time.monotonic()

    def accepted_again() -> Answer:
        answer = post_import(system, origin)
        assert answer.code in ACCEPTED, answer
        return answer

    first = eventually(accepted_again, timeout=30, interval=0.05)
    # Accepted = the broker confirmed the command (the gateway logs when, as accepted_ms); the
    # answer itself may wait for the outcome up to the answer window (consumers reconnecting).
    to_first_accept = first.started + accepted_after(system, first.task_id) - back
    assert to_first_accept <= 2.0, f"first command accepted {to_first_accept:.2f} s after the broker came back"
    ledger = eventually(ledger_clean(system, {warm.task_id, first.task_id}), timeout=30, interval=0.5)
    report("R4", posts_while_down=20, codes=dict(Counter(a.code for a in answers)), slowest_503_s=round(slowest, 2),
           threads=f"{before['Threads']}->{after['Threads']}", rss_kib=f"{before['VmRSS']}->{after['VmRSS']}",
           first_accept_after_restart_s=round(to_first_accept, 2), lost=len(ledger.lost({first.task_id})))


def accepted_after(system: System, task_id: str) -> float:
    """Seconds from the start of the request of ``task_id`` to the broker's confirm (the gateway's
    request line)."""
    for line in system.log("gateway0").splitlines():
        if task_id in line and '"accepted_ms"' in line:
            accepted_ms = json.loads(line).get("accepted_ms")
            if accepted_ms is not None:
                return accepted_ms / 1000
    raise AssertionError(f"no request line with accepted_ms for {task_id}")


# --- R5: a resource alarm blocks publishers ------------------------------------------------------


def test_r5_broker_resource_alarm(system, origin, broker):
    broker.set_disk_free_limit("1000GB")
    try:
        eventually(lambda: _alarm_raised(broker), timeout=15, interval=0.2)
        answers = [post_import(system, origin) for _ in range(50)]
    finally:
        broker.set_disk_free_limit("50MB")
    restored = time.monotonic()
    codes = Counter(a.code for a in answers)
    assert codes == Counter({503: len(answers)}), codes
    slowest = max(a.seconds for a in answers)
    assert slowest <= PUBLISH_TIMEOUT + 0.5, f"slowest 503: {slowest:.2f} s"

    def accepted_again() -> Answer:
        answer = post_import(system, origin)
        assert answer.code in ACCEPTED, answer
        return answer

    first = eventually(accepted_again, timeout=30, interval=0.1)
    ledger = eventually(ledger_clean(system, {first.task_id}, allow_unexpected=True), timeout=30, interval=0.5)
    ran_anyway = unexpected(ledger, {first.task_id})
    report("R5", posts_during_alarm=len(answers), codes=dict(codes), slowest_503_s=round(slowest, 2),
           ran_though_503=len(ran_anyway), first_accept_after_restore_s=round(first.started + first.seconds - restored, 2))
    assert not ran_anyway, f"{len(ran_anyway)} commands answered 503 during the alarm ran once it cleared"


def _alarm_raised(broker: PrivateBroker) -> None:
    status = broker.ctl("status")
    assert "Free disk space alarm" in status or "disk" in status.split("Alarms")[-1].split("\n\n")[0].lower(), status


# --- R6: a silently dead consumer link ----------------------------------------------------------


def test_r6_client_broker_blackhole(system, origin, broker):
    proxy = FaultProxy("127.0.0.1", broker.port)
    try:
        respawn(system, ["importer", "projector"], f"amqp://guest:guest@127.0.0.1:{proxy.port}//")
        lost_marker = system.log("importer").count('"consumer.connection_lost"')
        ready_marker = system.log("importer").count('"consumer.ready"')
        # Slow manifests keep imports in flight when the path dies: their acks will be lost.
        answers, workers = [], []
        for _ in range(4):
            batch, started = post_stream_slow(system, origin, count=5)
            answers.append(batch)
            workers.extend(started)
        eventually(lambda: _at_least(system.log("importer").count('"message.handled"'), 1), timeout=30)
        proxy.blackhole(True)
        dead_since = time.monotonic()

        def importer_noticed() -> float:
            assert system.log("importer").count('"consumer.connection_lost"') > lost_marker
            return time.monotonic() - dead_since

        detected = eventually(importer_noticed, timeout=2 * HEARTBEAT + 10, interval=0.2)
        proxy.blackhole(False)
        healed = time.monotonic()
        eventually(lambda: _at_least(system.log("importer").count('"consumer.ready"'), ready_marker + 1), timeout=30)
        reconnected = time.monotonic() - healed
        for worker in workers:
            worker.join(timeout=120)
        flat = [a for batch in answers for a in batch]
        assert all(a.code in ACCEPTED for a in flat), Counter(a.code for a in flat)
        accepted = accepted_ids(flat)
        ledger = eventually(ledger_clean(system, accepted), timeout=60, interval=0.5)
        assert detected <= 2 * HEARTBEAT + 5, f"dead link detected after {detected:.1f} s"
        redelivered = system.log("importer").count('"redelivered":true')
        report("R6", commands=len(flat), accepted=len(accepted), lost=len(ledger.lost(accepted)),
               doubled=len(ledger.doubled(accepted)), detected_after_s=round(detected, 1),
               reconnected_after_heal_s=round(reconnected, 1), redelivered=redelivered)
    finally:
        respawn(system, ["importer", "projector"], broker.url)
        proxy.close()


def post_stream_slow(system, origin, *, count: int):
    answers: list[Answer] = []

    def client() -> None:
        for _ in range(count):
            answers.append(post_import(system, origin, delay=0.3))

    worker = threading.Thread(target=client)
    worker.start()
    return answers, [worker]


# --- R7: a command nobody is bound to receive ---------------------------------------------------


def test_r7_unroutable_command(system, origin, broker):
    queue = f"{system.prefix}importer.commands"
    exchange = f"{system.prefix}imagesvc.commands"
    marker = system.log("gateway0").count('"command.unroutable"')
    with Connection(broker.url, connect_timeout=5) as conn:
        conn.channel().queue_unbind(queue=queue, exchange=exchange, routing_key="image.import")
    try:
        with unbound(system.contract_tap, exchange, "image.import"):  # the tap's queue would route it too
            answers = [post_import(system, origin) for _ in range(5)]
    finally:
        with Connection(broker.url, connect_timeout=5) as conn:
            conn.channel().queue_bind(queue=queue, exchange=exchange, routing_key="image.import")
    assert [a.code for a in answers] == [503] * 5
    counted = system.log("gateway0").count('"command.unroutable"') - marker
    assert counted == 5, f"command.unroutable logged {counted} times"
    after = post_import(system, origin)
    assert after.code in ACCEPTED
    ledger = eventually(ledger_clean(system, {after.task_id}), timeout=30, interval=0.5)
    report("R7", posts=5, codes=dict(Counter(a.code for a in answers)), unroutable_logged=counted,
           slowest_503_s=round(max(a.seconds for a in answers), 2), lost=len(ledger.lost({after.task_id})))
