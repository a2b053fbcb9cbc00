"""Issue 12: each store-writing process killed at each of its steps leaves nothing behind in the
image store. Once the step is retried (the process restarted: its command comes back) or, when
it never comes back, once the lease sweeper of another process has ended the task, the store holds
exactly the files of the OK images (their manifest and file), ``services.sweeper.garbage`` (what
``imagesvc store check`` runs) finds nothing, no image is PENDING, no lease is held, and the
ledger is clean: every accepted task ended exactly once, every queue and the outbox empty.

Distributed mode: RabbitMQ + PostgreSQL, every service its own process, a node agent. A kill is a
crash point (shared/crash.py, ``IMAGESVC_CRASH_AT``) armed in the victim's life alone: the
process ends with ``os._exit(137)`` at that step, as a SIGKILL there would end it. Right after the
kill the test checks that the step did leave something behind (a temporary name, a PENDING image),
so each case tests a real leftover. CI: one kill at each step, both ways; nightly: the retried
step killed again at the same step (``KILLS`` in a row; ``AGAIN`` where the retry does not pass
it again), ``ROUNDS`` rounds of each case.
Then a starting worker sweeps what dead writers left beside a live import, and ``imagesvc store
check`` reports what it keeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid as uuidlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from imagesvc.services.sweeper import garbage
from imagesvc.shared.db.engine import make_engine
from imagesvc.shared.db.models import Image, Lock
from imagesvc.shared.store import LocalStore
from imagesvc.shared.store.local import IDENTITY_FILE
from tests.e2e.test_snapshot_images import NODE, new_vm
from tests.support.ledger import assert_clean, read_ledger
from tests.support.origin import Origin
from tests.support.polling import eventually
from tests.support.services import delete_queues
from tests.support.systems import System, start_distributed
from tests.support.tier import scaled

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.postgres]

#: Kills in a row at the same step before the retry may pass (the redelivery killed again).
KILLS = scaled(ci=1, nightly=3)
ROUNDS = scaled(ci=1, nightly=2)
#: The lease of a victim whose command does not come back: the lease sweeper ends its task
#: this long after the kill (plus a sweep period).
SHORT_LEASE = "3"
FILE_BYTES = 2 * 1024 * 1024

STEPS = {
    "importer": ("mid_download", "after_download", "after_manifest_temp", "after_store"),
    "updater": ("after_manifest_temp", "after_manifest_rewrite"),
    "deleter": ("after_trash_move", "after_data_removed"),
    "node-agent": ("mid_export", "after_export", "after_manifest_temp", "after_store"),
}
#: The step after which nothing is left in the store but the task's PENDING record (its data gone).
NAMELESS = {("deleter", "after_data_removed")}
#: Where a retried step is killed again when it does not pass its first point again: the retried
#: removal finds the image's directory moved already, and goes on to empty the trash.
AGAIN = {("deleter", "after_trash_move"): "after_data_removed"}
CASES = [(service, point, way) for way in ("retried", "swept") for service, points in STEPS.items()
         for point in points]


@dataclass
class Run:
    system: System
    origin: Origin
    vms: Path
    accepted: set[str] = field(default_factory=set)
    figures: Counter = field(default_factory=Counter)

    @property
    def store(self) -> Path:
        return self.system.workdir / "store"


@pytest.fixture(scope="module")
def run(rabbitmq_url, postgres_admin_url, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("store-garbage")
    system = start_distributed(workdir, broker_url=rabbitmq_url, postgres_admin_url=postgres_admin_url, gateways=1,
                               extra_env={"IMAGESVC_IMAGE_STORE": str(workdir / "store"),
                                          "IMAGESVC_SNAPSHOT_DIR": str(workdir / "vms"),
                                          "IMAGESVC_SWEEP_SECONDS": "0.5"})
    with contextlib.closing(Origin()) as origin:
        try:
            system.admin("node", "set", NODE, "--status", "online")
            start(system, "node-agent")
            yield Run(system, origin, workdir / "vms")
        finally:
            system.stop()
            delete_queues(rabbitmq_url, system.prefix, nodes=(NODE,))


# --- the victim's lives --------------------------------------------------------------------------


def start(system: System, service: str, **env: str) -> None:
    """(Re)start ``service`` with ``env`` added for this life alone; returns once it consumes (an
    armed life may die at once, on the command delivered to it again: it did consume)."""
    marker = system.log(service).count('"consumer.ready"')
    shared = system.env
    system.env = {**shared, **env}
    try:
        system.spawn(service, *(("node-agent", "--node", NODE) if service == "node-agent" else ("worker", service)))
    finally:
        system.env = shared

    def ready() -> None:
        assert system.log(service).count('"consumer.ready"') > marker, system.log(service)[-2000:]

    eventually(ready, timeout=30)


def crashes(system: System, service: str, point: str) -> int:
    return system.log(service).count(f"crash point {point} reached")


def died_at(system: System, service: str, point: str, crashed: int) -> None:
    """The victim ended at ``point``, the ``crashed``-th time its log says so."""
    process = system.processes[service]

    def ended() -> None:
        assert process.poll() is not None, f"{service} is still running (armed at {point})"

    eventually(ended, timeout=60, interval=0.05)
    assert process.returncode == 137, system.log(service)[-2000:]
    assert crashes(system, service, point) == crashed


# --- commands ------------------------------------------------------------------------------------


def ended(client, task_id: str, timeout: float = 90) -> tuple[int, dict]:
    """The task's final answer: (HTTP status, body)."""
    def done() -> tuple[int, dict]:
        answer = client.get(f"/task/{task_id}/status/")
        assert answer.json()["status"] in ("SUCCESS", "FAILURE"), answer.text
        return answer.status_code, answer.json()

    return eventually(done, timeout=timeout, interval=0.1)


def accepted(run: Run, answer) -> str:
    assert answer.status_code in (200, 201), answer.text
    task_id = answer.json()["task_id"]
    run.accepted.add(task_id)
    run.figures["commands"] += 1
    return task_id


def imported(run: Run, client, name: str) -> str:
    """Import ``name`` (its file from the origin); returns the task id, the task not yet ended."""
    url, _ = run.origin.add_image(os.urandom(FILE_BYTES))
    return accepted(run, client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"}))


def an_image(run: Run, client) -> str:
    name = f"g-{uuidlib.uuid4().hex[:10]}"
    assert ended(client, imported(run, client, name))[0] == 200
    return name


def command(run: Run, client, service: str, name: str) -> str:
    """The command the victim handles: the task id."""
    if service == "importer":
        return imported(run, client, name)
    if service == "updater":
        return accepted(run, client.put(f"/image/{name}/", json={"desc": "rewritten"}))
    if service == "deleter":
        return accepted(run, client.delete(f"/image/{name}/"))
    vm = new_vm(run.system, {"vms": run.vms}, size_bytes=FILE_BYTES)
    return accepted(run, client.post(f"/vm/{vm['hostname']}/snapshot/{vm['snapname']}/image/{name}/", json={}))


# --- the store -----------------------------------------------------------------------------------


def images(run: Run) -> tuple[dict[str, tuple[str, int]], int]:
    engine = create_engine(run.system.database_url)
    try:
        with engine.connect() as conn:
            rows = {uuid: (name, status) for uuid, name, status in conn.execute(
                select(Image.uuid, Image.name, Image.status))}
            held = conn.execute(select(func.count()).select_from(Lock)).scalar_one()
    finally:
        engine.dispose()
    return rows, held


def leftovers(run: Run) -> list[str]:
    """Every name in the store that is not an OK image's manifest or file (or the store's own
    identity)."""
    rows, _ = images(run)
    ok = {uuid for uuid, (_, status) in rows.items() if status == 1}
    wanted = {f"{uuid}/{part}" for uuid in ok for part in ("manifest", "file")} | {IDENTITY_FILE}
    found = []
    for path in sorted(run.store.rglob("*")):
        relative = path.relative_to(run.store).as_posix()
        if path.is_dir() and not path.is_symlink():
            if relative not in (".partial", ".trash", *ok) and not any(path.iterdir()):
                found.append(relative + "/")  # an empty directory is a leftover too
        elif relative not in wanted:
            found.append(relative)
    return found


def assert_exact(run: Run) -> None:
    """The store holds exactly the OK images' files; the check finds nothing; nothing PENDING,
    no lease held."""
    rows, held = images(run)
    assert {status for _, status in rows.values()} <= {1}, f"images left PENDING: {rows}"
    assert held == 0
    assert leftovers(run) == []
    assert sorted(p.name for p in run.store.iterdir() if not p.name.startswith(".")) == sorted(rows)
    engine = make_engine(run.system.database_url, pool_size=1)
    try:
        found = garbage.check(engine, LocalStore(str(run.store)), repair=False, verify=True)
    finally:
        engine.dispose()
    assert [finding.to_dict() for finding in found.findings] == []
    assert (found.images, found.verified) == (len(rows), len(rows))


def clean_ledger(run: Run):
    ledger = read_ledger(run.system.database_url, broker_url=run.system.broker_url, prefix=run.system.prefix)
    assert_clean(ledger, run.accepted, effect=None)
    return ledger


# --- each step, killed ---------------------------------------------------------------------------


@pytest.mark.timeout(scaled(ci=240, nightly=900))
@pytest.mark.parametrize("service, point, way", CASES, ids=[f"{s}-{p}-{w}" for s, p, w in CASES])
def test_a_killed_step_leaves_nothing_behind(run, service, point, way):
    system = run.system
    for _ in range(ROUNDS):
        name = f"g-{uuidlib.uuid4().hex[:10]}"
        with system.client() as client:
            if service in ("updater", "deleter"):
                name = an_image(run, client)
                before = client.get(f"/image/{name}/").json()["result"]
            system.kill(service)
            kills = KILLS if way == "retried" else 1
            armed = {"IMAGESVC_CRASH_AT": point, **({"IMAGESVC_LEASE_SECONDS": SHORT_LEASE} if way == "swept" else {})}
            points = [point] + [AGAIN.get((service, point), point)] * (kills - 1)
            crashed = Counter({at: crashes(system, service, at) for at in points})
            start(system, service, **armed)
            task_id = command(run, client, service, name)
            for life, at in enumerate(points, start=1):
                crashed[at] += 1
                died_at(system, service, at, crashed[at])
                run.figures["kills"] += 1
                left = leftovers(run)
                assert left or (service, at) in NAMELESS, f"{service} at {at} left nothing to clean up"
                run.figures["left by the kills"] += len(left)
                if way == "retried":  # the process comes back: its command is delivered again
                    start(system, service, **({**armed, "IMAGESVC_CRASH_AT": points[life]} if life < kills else {}))
            code, status = ended(client, task_id)
            if way == "swept":
                start(system, service)  # the command comes back after all: a duplicate now
            expected = expectation(service, point, way)
            assert (code, status["status"]) == expected, status
            if expected[0] == 500:
                assert "its worker died and its lease expired" in status["result"]["detail"], status
            shown = client.get(f"/image/{name}/")
            if service in ("importer", "node-agent"):
                assert shown.status_code == (200 if way == "retried" else 404), shown.text
            elif service == "updater":
                assert shown.json()["result"]["desc"] == ("rewritten" if way == "retried" else before["desc"])
            else:
                assert shown.status_code == (200 if expected[0] == 500 else 404), shown.text
        ledger = eventually(lambda: clean_ledger(run), timeout=60, interval=0.5)
        assert_exact(run)
        run.figures["lost"] = len(ledger.lost(run.accepted))
        run.figures["doubled"] = len(ledger.doubled(run.accepted))
    print(f"\n{service} {point} {way}: {dict(run.figures)}")


def expectation(service: str, point: str, way: str) -> tuple[int, str]:
    """The task's end: retried, the work is done; swept, it is undone (``lease_expired``, 500),
    except a removal whose data was gone already, which the sweeper finishes."""
    if way == "retried" or (service, point) == ("deleter", "after_data_removed"):
        return 200, "SUCCESS"
    return 500, "FAILURE"


# --- a starting worker, and imagesvc store check -----------------------------------------------


def store_check(run: Run, *args: str) -> tuple[int, list[dict]]:
    done = subprocess.run([sys.executable, "-m", "imagesvc", "store", "check", *args], cwd=run.system.workdir,
                          env=run.system.env, capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 4), done.stderr
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.timeout(180)
def test_a_starting_worker_sweeps_what_dead_writers_left_and_nothing_else(run):
    system, store = run.system, run.store
    with system.client() as client:
        ok = client.get(f"/image/{an_image(run, client)}/").json()["result"]["uuid"]
        url, manifest = run.origin.add_image(os.urandom(FILE_BYTES), pace=1 / 4)  # 256 KiB/s: 8 s
        live = accepted(run, client.post(f"/image/g-live-{uuidlib.uuid4().hex[:6]}/",
                                         json={"manifest_url": url, "dc": "main"}))
        partial = store / ".partial"
        eventually(lambda: next(partial.glob(f"{manifest['uuid']}.*")), timeout=30, interval=0.05)
        orphan, staged = str(uuidlib.uuid4()), str(uuidlib.uuid4())
        planted = {
            f".partial/{ok}.1e1u1-deaddead-bbbb-cccc-dddd_0123abcd": b"a dead attempt",
            f"{ok}/.manifest.0123abcd": b"{",
            f".trash/{uuidlib.uuid4()}.4567cdef/file": b"a removal left half done",
            f"{ok}/.file.md5.89abcdef": b"{}",
        }
        # An image directory nobody records: a start-up sweep only reports it (the process may
        # have been started on the wrong database); the operator's `store check --repair` removes it.
        orphaned = {f"{orphan}/manifest": b"{}", f"{orphan}/file": b"an image nobody records"}
        for relative, content in {**planted, **orphaned}.items():
            (store / relative).parent.mkdir(parents=True, exist_ok=True)
            (store / relative).write_bytes(content)
        hours_ago = time.time() - 2 * garbage.SCRATCH_GRACE_SECONDS
        os.utime(store / f"{ok}/.file.md5.89abcdef", (hours_ago, hours_ago))
        kept = {f"{staged}/file": b"put there by hand for an import from the image server", "README": b"ours"}
        for relative, content in kept.items():
            (store / relative).parent.mkdir(parents=True, exist_ok=True)
            (store / relative).write_bytes(content)

        log_before = len(system.log("updater"))
        system.kill("updater")
        start(system, "updater")
        eventually(lambda: _contains(system.log("updater")[log_before:], '"store.swept"'), timeout=30)
        assert all(not (store / relative).exists() for relative in planted)
        assert all((store / relative).exists() for relative in {**orphaned, **kept})
        assert next(partial.glob(f"{manifest['uuid']}.*"), None) is not None  # the live download's own
        assert client.get(f"/task/{live}/status/").json()["status"] != "SUCCESS"  # (still downloading)
        assert ended(client, live)[0] == 200
        removed = [json.loads(line) for line in system.log("updater")[log_before:].splitlines()
                   if '"store.garbage_removed"' in line]
        run.figures["removed by a start-up sweep"] += len(removed)
        # the partial file, the manifest's temporary, the removal, the scratch file
        assert len(removed) == 4, removed
        kept_orphans = [json.loads(line) for line in system.log("updater")[log_before:].splitlines()
                        if '"store.garbage_kept"' in line]
        assert [entry["path"] for entry in kept_orphans] == [orphan], kept_orphans

    code, lines = store_check(run, "--repair")
    assert code == 0, lines
    assert [(line["finding"], line["path"], line.get("removed")) for line in lines[:-1]
            if line["finding"] == "garbage"] == [("garbage", orphan, True)]
    assert not (store / orphan).exists()

    code, lines = store_check(run)
    assert code == 0, lines
    assert sorted((line["finding"], line["path"]) for line in lines[:-1]) == [("staged", staged), ("unknown", "README")]
    assert lines[-1]["problems"] == 0 and lines[-1]["images"] == lines[-1]["verified"]
    for relative in kept:
        (store / relative).unlink()
    (store / staged).rmdir()
    (store / ok / "file").write_bytes(b"not the image")  # a file gone bad is reported, never removed
    code, lines = store_check(run, "--repair")
    assert code == 4
    assert [(line["finding"], line.get("image")) for line in lines[:-1]] == [("corrupt", ok)]
    print(f"\nstore garbage totals: {dict(run.figures)}")


def _contains(text: str, what: str) -> None:
    assert what in text, f"{what} not logged yet"
