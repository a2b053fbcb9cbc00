"""Concurrent copies of one command (issue 12; reliability row C3): the same message (same message
id, same task id) published 2 to 5 times at once, or within 50-500 ms, to one consumer and to
two, on RabbitMQ and PostgreSQL. Exactly one copy runs the handler; the others wait while it runs
(deferred: its claim on the command is live) and end as duplicates once it has the outcome, so
every command ends once, in SUCCESS, with one effect.

Before the claims, a copy that arrived while the first still ran (an import downloading) ran its
own checks, saw the first copy's work, and recorded a refusal (406 ``image_exists``, 400
``uuid_taken``) as the task's outcome: the accepted import was lost.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter

import orjson
import pytest

from tests.e2e.test_distributed import command, send, stored_events
from tests.support.origin import Origin
from tests.support.polling import eventually
from tests.support.systems import start_distributed
from tests.support.tier import scaled

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.postgres]

TERMINAL = ("task.succeeded", "task.failed")
#: The services whose queues get a second consumer.
SERVICES = ("importer", "updater", "deleter")


@pytest.fixture(scope="module")
def origin():
    served = Origin()
    yield served
    served.close()


@pytest.fixture(scope="module")
def system(rabbitmq_url, postgres_admin_url, origin, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("copies")
    repository = origin.add_repository("/repo-copies/", [])
    started = start_distributed(workdir, broker_url=rabbitmq_url, postgres_admin_url=postgres_admin_url, gateways=1,
                                extra_env={"IMAGESVC_IMAGE_STORE": str(workdir / "store"),
                                           "IMAGESVC_IMAGE_REPOSITORIES": f"copies={repository}"})
    started.admin("dc", "create", "other")
    yield started
    started.stop()


@pytest.fixture(params=[1, 2], ids=["one consumer", "two consumers"])
def consumers(request, system):
    """Each command service with one consumer process, or with a second one beside it."""
    if request.param == 2:
        for service in SERVICES:
            system.start_worker(service, f"{service}2")
    yield request.param
    if request.param == 2:
        for service in SERVICES:
            system.kill(f"{service}2")


def publish_copies(system, envelope: dict, copies: int, gaps: tuple[float, ...] = ()) -> None:
    """``copies`` copies of one message: at the same moment (threads released together), or one
    after another with ``gaps`` seconds between them."""
    if gaps:
        send(system, envelope)
        for gap in gaps:
            time.sleep(gap)  # the gap between copies is the fault itself
            send(system, envelope)
        return
    barrier = threading.Barrier(copies)

    def one() -> None:
        barrier.wait(10)
        send(system, envelope)

    threads = [threading.Thread(target=one) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)


def ended_once_in_success(system, envelope: dict) -> list[dict]:
    """The command's stored events, once it has exactly one terminal event, a success."""
    def ended() -> list[dict]:
        found = stored_events(system, correlation_id=envelope["correlation_id"])
        terminal = [e for e in found if e["type"] in TERMINAL]
        assert terminal, "no outcome yet"
        assert [(e["type"], e["payload"].get("code")) for e in terminal] == [("task.succeeded", None)], terminal
        return found

    return eventually(ended, timeout=90, interval=0.3)


def every_copy_acked(system, envelope: dict, copies: int, consumers: int) -> Counter:
    """Every copy was handled to an ack (the first with the outcome, the others as duplicates of
    it), after however many deferrals; returns the reasons the copies ended with."""
    names = [n for service in SERVICES for n in (service, f"{service}2")[:consumers]] + ["importer"]

    def acked() -> Counter:
        reasons = Counter()
        for name in set(names):
            for line in system.log(name).splitlines():
                if envelope["id"] not in line:
                    continue
                record = orjson.loads(line)
                if record.get("event") == "message.handled" and record.get("outcome") == "ack":
                    reasons["duplicate" if record.get("reason") == "duplicate" else "handled"] += 1
        assert sum(reasons.values()) == copies, reasons
        return reasons

    return eventually(acked, timeout=90, interval=0.3)


def imported(system, origin, name: str, content: bytes = b"\x00" * 4096, dc: str = "main") -> dict:
    url, manifest = origin.add_image(content)
    envelope = command("image.import", {"name": name, "manifest_url": url, "dc": dc})
    send(system, envelope)
    ended_once_in_success(system, envelope)
    return manifest


@pytest.mark.parametrize("copies, gaps", [(2, ()), (5, ()), (4, (0.05, 0.2, 0.5))],
                         ids=["2 at once", "5 at once", "4 within 50-500 ms"])
def test_copies_of_an_import_downloading_have_one_effect_and_one_success(system, origin, consumers, copies, gaps):
    content = os.urandom(2 * 1024 * 1024)
    url, manifest = origin.add_image(content, pace=0.05)  # about 1.6 s: the copies arrive mid-download
    envelope = command("image.import", {"name": f"cc-{uuid.uuid4().hex[:8]}", "manifest_url": url, "dc": "main"})
    publish_copies(system, envelope, copies, gaps)
    events = ended_once_in_success(system, envelope)
    assert Counter(e["type"] for e in events)["image.imported"] == 1
    reasons = every_copy_acked(system, envelope, copies, consumers)
    assert reasons["handled"] == 1, reasons
    stored = [e for e in stored_events(system, type="image.imported")
              if e["payload"]["image"]["uuid"] == manifest["uuid"]]
    assert len(stored) == 1


@pytest.mark.parametrize("kind", ["image.update", "image.delete", "image.attach", "image.detach",
                                  "imagestore.refresh"])
def test_copies_of_each_other_command_have_one_effect_and_one_success(system, origin, consumers, kind):
    copies = scaled(ci=3, nightly=5)
    name = f"cc-{uuid.uuid4().hex[:8]}"
    if kind != "imagestore.refresh":
        imported(system, origin, name)
    if kind == "image.detach":
        attach = command("image.attach", {"name": name, "dc": "other"})
        send(system, attach)
        ended_once_in_success(system, attach)
    payload = {"image.update": {"name": name, "desc": "once"}, "image.delete": {"name": name},
               "image.attach": {"name": name, "dc": "other"}, "image.detach": {"name": name, "dc": "other"},
               "imagestore.refresh": {"repositories": {"copies": system.env["IMAGESVC_IMAGE_REPOSITORIES"].split("=", 1)[1]}}}
    envelope = command(kind, payload[kind])
    publish_copies(system, envelope, copies)
    events = ended_once_in_success(system, envelope)
    effects = Counter(e["type"] for e in events if not e["type"].startswith("task."))
    expected = {"image.update": {"image.updated": 2}, "image.delete": {"image.updated": 1, "image.deleted": 1},
                "image.attach": {"image.updated": 1}, "image.detach": {"image.updated": 1},
                "imagestore.refresh": {}}[kind]
    # (With an image store an update of the manifest and a delete first mark the image PENDING:
    # one image.updated more, once.)
    assert effects == Counter(expected), effects
    reasons = every_copy_acked(system, envelope, copies, consumers)
    assert reasons["handled"] == 1, reasons
