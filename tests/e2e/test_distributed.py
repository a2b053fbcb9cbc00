"""Guarantees of the distributed mode (every service its own process on RabbitMQ + PostgreSQL):
the message contract seen by an independent AMQP client (pika), nothing lost or doubled when a
consumer is SIGKILLed mid-stream or a command is delivered three times, read-your-writes across
gateway processes.
"""

from __future__ import annotations

import uuid
from collections import Counter
from urllib.parse import urlsplit
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import orjson
import pytest
from sqlalchemy import create_engine, select

from imagesvc.domain import tasks
from imagesvc.shared.db.models import StoredEvent, SubmittedCommand
from tests.support.polling import eventually
from tests.support.tap import EventTap, publish, take

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.postgres]

ENVELOPE_KEYS = {"id", "type", "schema_version", "time", "correlation_id", "causation_id", "actor", "payload"}


@pytest.fixture
def tap(distributed):
    events = EventTap(distributed.broker_url, f"{distributed.prefix}imagesvc.events")
    yield events
    events.close()


def command(type_: str, payload: dict, *, task_id: str | None = None, message_id: str | None = None) -> dict:
    return {
        "id": message_id or str(uuid.uuid4()),
        "type": type_,
        "schema_version": 1,
        "time": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "correlation_id": task_id or tasks.new_task_id(user_id=1, owner_id=1, dc_id=1),
        "causation_id": None,
        "actor": {"user": "root", "dc": "main"},
        "payload": payload,
    }


def send(system, envelope: dict) -> None:
    """Publish a command as imagesvc's own broker user (the one in the system's broker URL), which
    RabbitMQ vouches for with ``user_id``: such commands may act for anybody."""
    publish(system.broker_url, f"{system.prefix}imagesvc.commands", envelope["type"], orjson.dumps(envelope),
            content_type="application/json", delivery_mode=2, message_id=envelope["id"],
            correlation_id=envelope["correlation_id"], type=envelope["type"],
            user_id=urlsplit(system.broker_url).username or "guest")


def journal(system) -> list:
    engine = create_engine(system.database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(SubmittedCommand.__table__)))
    finally:
        engine.dispose()


def stored_events(system, **where) -> list[dict]:
    engine = create_engine(system.database_url)
    table = StoredEvent.__table__
    try:
        with engine.connect() as conn:
            query = select(table.c.body)
            for column, value in where.items():
                query = query.where(table.c[column] == value)
            return [orjson.loads(row.body) for row in conn.execute(query)]
    finally:
        engine.dispose()


class TestMessageContractWithPika:
    def test_a_pika_client_publishes_an_import_and_receives_its_events(self, distributed, tap, origin, name):
        manifest_url, manifest = origin.add_manifest()
        envelope = command("image.import", {"name": name, "manifest_url": manifest_url, "dc": "main"})
        task_id = envelope["correlation_id"]
        send(distributed, envelope)

        def both_events():
            imported = tap.envelopes(type="image.imported", correlation_id=task_id)
            succeeded = tap.envelopes(type="task.succeeded", correlation_id=task_id)
            assert imported and succeeded
            return imported[0], succeeded[0]

        imported, succeeded = eventually(both_events, timeout=20)
        for event in (imported, succeeded):
            assert set(event) == ENVELOPE_KEYS
            assert event["schema_version"] == 1
            assert event["causation_id"] == envelope["id"]
            assert event["actor"] == {"user": "root", "dc": "main"}
        state = imported["payload"]["image"]
        assert (state["uuid"], state["name"], state["dc_bound"], state["dcs"]) == (manifest["uuid"], name, "main", ["main"])
        assert imported["payload"]["version"] == 1
        assert succeeded["payload"]["task_id"] == task_id
        assert succeeded["payload"]["stream"] == f"image:{manifest['uuid']}"
        assert succeeded["payload"]["stream_version"] == 1
        assert succeeded["payload"]["result"]["uuid"] == manifest["uuid"]

        raw = next(m for m in tap.messages() if m.envelope["id"] == imported["id"])
        # Routed by its datacenter, and vouched for by RabbitMQ as published by imagesvc's service user.
        assert raw.routing_key == "image.imported.dc.main"
        assert (raw.properties.message_id, raw.properties.type, raw.properties.correlation_id) == (
            imported["id"], "image.imported", task_id)
        assert raw.properties.user_id == (urlsplit(distributed.broker_url).username or "guest")
        assert raw.properties.content_type == "application/json" and raw.properties.delivery_mode == 2

        # The events leave the importer before the projector has applied them: a program that
        # published the command itself has no read-your-writes promise, so the read model catches up.
        with distributed.client() as client:
            def projected() -> None:
                assert client.get(f"/image/{name}/").json().get("result", {}).get("uuid") == manifest["uuid"]
                status = client.get(f"/task/{task_id}/status/")
                assert status.status_code == 200 and status.json()["status"] == "SUCCESS"

            eventually(projected, timeout=15)

    def test_a_refused_command_ends_in_task_failed_with_the_original_code(self, distributed, tap, origin, name):
        url, _ = origin.add_manifest()
        with distributed.client() as client:
            assert client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"}).status_code == 200
        envelope = command("image.import", {"name": name, "manifest_url": url, "dc": "main"})
        send(distributed, envelope)
        failed = tap.wait_for(type="task.failed", correlation_id=envelope["correlation_id"])
        payload = failed["payload"]
        assert (payload["http_code"], payload["result"], payload["code"]) == (406, {"detail": "Image already exists"},
                                                                               "image_exists")

    def test_an_actor_without_rights_is_refused_by_the_consumer(self, distributed, tap, origin, name):
        url, _ = origin.add_manifest()
        envelope = command("image.import", {"name": name, "manifest_url": url, "dc": "main"})
        envelope["actor"] = {"user": "intruder", "dc": "main"}
        send(distributed, envelope)
        failed = tap.wait_for(type="task.failed", correlation_id=envelope["correlation_id"])
        assert (failed["payload"]["http_code"], failed["payload"]["result"]) == (403, {"detail": "Permission denied"})
        with distributed.client() as client:
            assert client.get(f"/image/{name}/").status_code == 404

    def test_a_poison_command_is_dead_lettered_and_its_task_fails(self, distributed, tap):
        task_id = tasks.new_task_id(user_id=1, owner_id=1, dc_id=1)
        publish(distributed.broker_url, f"{distributed.prefix}imagesvc.commands", "image.update", b"\xff not json",
                content_type="application/json", message_id=str(uuid.uuid4()), correlation_id=task_id,
                type="image.update")
        failed = tap.wait_for(type="task.failed", correlation_id=task_id)
        assert failed["payload"]["http_code"] == 400 and failed["payload"]["code"] == "invalid_message"
        dlq = f"{distributed.prefix}updater.commands.dlq"

        def dead_lettered():
            message = take(distributed.broker_url, dlq)
            assert message is not None, "nothing in the dead-letter queue yet"
            return message

        dead = eventually(dead_lettered, timeout=10)
        assert dead.properties.headers["x-imagesvc-death-reason"].startswith("body is not JSON")


class TestNothingLostNothingDoubled:
    def test_the_same_command_delivered_three_times_has_one_effect(self, distributed, tap, origin, name):
        url, _ = origin.add_manifest()
        with distributed.client() as client:
            before = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"}).json()["result"]
        envelope = command("image.update", {"name": name, "desc": "three times"})
        for _ in range(3):
            send(distributed, envelope)

        def duplicates_acknowledged():
            log = distributed.log("updater")
            assert log.count(envelope["id"]) >= 3 and log.count('"reason":"duplicate"') >= 2
            # A copy delivered while another holds the command is deferred first (logged as its own
            # `defer` line) and then acknowledged as a duplicate: three final outcomes, whatever the timing.
            lines = [line for line in log.splitlines() if envelope["id"] in line and "message.handled" in line
                     and '"outcome":"defer"' not in line]
            assert len(lines) == 3
            return lines

        eventually(duplicates_acknowledged, timeout=20)
        task_id = envelope["correlation_id"]
        assert Counter(e["type"] for e in stored_events(distributed, causation_id=envelope["id"])) == {
            "image.updated": 1, "task.succeeded": 1}
        updated = tap.wait_for(type="image.updated", correlation_id=task_id)
        assert updated["payload"]["version"] == 2  # imported as version 1, updated exactly once
        assert len({e["id"] for e in tap.envelopes(type="task.succeeded", correlation_id=task_id)}) == 1
        with distributed.client() as client:
            assert client.get(f"/image/{name}/").json()["result"] == {**before, "desc": "three times"}

    def test_a_consumer_killed_mid_stream_loses_and_doubles_nothing(self, distributed, tap, origin):
        total, kill_after = 200, 40
        jobs = []
        for index in range(total):
            # A slow repository keeps imports in flight, so the kill always interrupts some.
            url, manifest = origin.add_manifest(delay=0.05)
            jobs.append((f"kill-{index}-{uuid.uuid4().hex[:6]}", url, manifest["uuid"]))
        answered: list[tuple[str, str, int, str]] = []
        killed = []

        def post(job):
            name, url, image_uuid = job
            with distributed.client() as client:
                response = client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"})
            answered.append((name, image_uuid, response.status_code, response.json().get("task_id")))
            if len(answered) == kill_after and not killed:
                killed.append(True)
                distributed.kill("importer")  # SIGKILL: no ack, no cleanup
                distributed.start_worker("importer")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(post, jobs))
        assert killed
        assert all(code in (200, 201) for _, _, code, _ in answered), Counter(c for _, _, c, _ in answered)
        accepted = {task_id: (name, image_uuid) for name, image_uuid, _, task_id in answered}
        assert len(accepted) == total

        def every_task_ended_once():
            terminal = [e for e in tap.messages() if e.envelope["type"] in ("task.succeeded", "task.failed")]
            ids_by_task: dict[str, set[str]] = {}
            for message in terminal:
                envelope = message.envelope
                ids_by_task.setdefault(envelope["correlation_id"], set()).add(envelope["id"])
            missing = set(accepted) - set(ids_by_task)
            assert not missing, f"{len(missing)} accepted commands have no terminal event yet"
            doubled = {t: ids for t, ids in ids_by_task.items() if t in accepted and len(ids) != 1}
            assert not doubled, f"tasks with more than one terminal event: {doubled}"
            return terminal

        terminal = eventually(every_task_ended_once, timeout=90, interval=0.5)
        # The kill did interrupt work: the restarted importer got deliveries back from the broker.
        assert '"redelivered":true' in distributed.log("importer")
        assert all(m.routing_key == "task.succeeded.dc.main" for m in terminal
                   if m.envelope["correlation_id"] in accepted)
        stored_terminal = Counter(e["correlation_id"] for e in stored_events(distributed, type="task.succeeded"))
        assert all(stored_terminal[task_id] == 1 for task_id in accepted)
        stored_imports = Counter(e["payload"]["image"]["uuid"] for e in stored_events(distributed, type="image.imported"))
        assert all(stored_imports[image_uuid] == 1 for _, image_uuid in accepted.values())
        with distributed.client() as client:
            listed = {item["name"]: item["uuid"] for item in client.get("/image/?full=true").json()["result"]}
        assert all(listed.get(name) == image_uuid for name, image_uuid in accepted.values())


def test_read_your_writes_across_gateway_processes(distributed, origin, name):
    url, _ = origin.add_manifest()
    with distributed.client(0) as writer, distributed.client(1) as reader:
        assert writer.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"}).status_code == 200
        for step in range(25):
            response = writer.put(f"/image/{name}/", json={"desc": f"step {step}"})
            assert response.status_code == 200
            assert reader.get(f"/image/{name}/").json()["result"]["desc"] == f"step {step}"
        assert writer.delete(f"/image/{name}/").status_code == 200
        assert reader.get(f"/image/{name}/").status_code == 404


def test_a_streamed_refusal_decided_by_a_consumer_has_the_refusal_body(distributed, origin, name):
    """Two deletes pass the gateway while the deleter is down; the deleter then refuses the second
    (404). The es client gets that refusal streamed as the original answers it: {"detail"}."""
    from tests.support.es import es

    url, _ = origin.add_manifest()
    with distributed.client() as client:
        assert client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"}).status_code == 200
    distributed.kill("deleter")
    with ThreadPoolExecutor(2) as pool:
        calls = [pool.submit(es, distributed.url, distributed.api_key, "delete", f"/image/{name}") for _ in range(2)]

        def both_streaming():
            # A command is journaled when the gateway gives up waiting and starts streaming.
            journaled = [row for row in journal(distributed) if row.object_name == name]
            assert len(journaled) == 2, journaled

        eventually(both_streaming, timeout=20)
        distributed.start_worker("deleter")
        results = sorted((call.result() for call in calls), key=lambda r: r.status)
    assert [r.status for r in results] == [200, 404]
    assert all(r.streamed for r in results)
    assert results[0].body["status"] == "SUCCESS"
    assert results[1].body == {"detail": "Image not found"}


def test_the_read_model_is_rebuilt_by_one_command(distributed, origin, name):
    import signal
    import subprocess
    import sys

    url, _ = origin.add_manifest()
    with distributed.client() as client:
        assert client.post(f"/image/{name}/", json={"manifest_url": url, "dc": "main"}).status_code == 200
        assert client.put(f"/image/{name}/", json={"desc": "before the rebuild"}).status_code == 200
        before = client.get("/image/?full=true&extended=true").json()["result"]
    # While a projector consumes, the rebuild refuses (it would race it for the read model).
    refused = subprocess.run([sys.executable, "-m", "imagesvc", "projector", "rebuild"], cwd=distributed.workdir,
                             env=distributed.env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "1 projector(s) consume" in refused.stderr, refused.stderr
    distributed.kill("projector", signal.SIGTERM)

    def rebuilt():
        done = subprocess.run([sys.executable, "-m", "imagesvc", "projector", "rebuild"], cwd=distributed.workdir,
                              env=distributed.env, capture_output=True, text=True, timeout=120)
        assert "projector(s) consume" not in done.stderr, done.stderr  # the broker may see it leave late
        return done

    done = eventually(rebuilt, timeout=30, interval=0.5)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("read model rebuilt from ")
    distributed.start_worker("projector")
    with distributed.client() as client:
        assert client.get("/image/?full=true&extended=true").json()["result"] == before
        # ... and the rebuilt projector carries on from there.
        assert client.put(f"/image/{name}/", json={"desc": "after"}).json()["result"]["desc"] == "after"


@pytest.mark.parametrize("change", [
    {"actor": {"user": "root", "dc": "x" * 20}},
    {"type": "y" * 100},
    {"actor": {"user": "root\u0000", "dc": "main"}},
])
def test_an_unstorable_envelope_still_ends_its_task_readably(distributed, tap, change):
    envelope = {**command("image.delete", {"name": "whatever"}), **change}
    publish(distributed.broker_url, f"{distributed.prefix}imagesvc.commands", "image.delete", orjson.dumps(envelope),
            content_type="application/json", message_id=envelope["id"], correlation_id=envelope["correlation_id"],
            type="image.delete")
    failed = tap.wait_for(type="task.failed", correlation_id=envelope["correlation_id"])
    assert failed["payload"]["code"] == "invalid_message"

    def readable():
        with distributed.client() as client:
            status = client.get(f"/task/{envelope['correlation_id']}/status/")
        assert status.status_code == 400, status.text
        return status.json()

    assert eventually(readable)["status"] == "FAILURE"
