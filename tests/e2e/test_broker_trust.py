"""The broker is not a back door: a command acts for its actor only if RabbitMQ vouches (AMQP
``user_id``) that imagesvc itself or that very user published it. Real RabbitMQ users, made with
``rabbitmqctl`` for the test and removed afterwards."""

from __future__ import annotations

import re
import subprocess
import uuid
from urllib.parse import quote, urlsplit

import orjson
import pika
import pytest

from tests.e2e.test_distributed import command, stored_events
from tests.support.tap import EventTap, publish

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.postgres]


def rabbitmqctl(*args: str) -> None:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}"


@pytest.fixture(scope="module")
def program(distributed):
    """A broker user and an imagesvc SuperAdmin of the same name: a program acting as itself."""
    name = f"prog{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    rabbitmqctl("add_user", name, password)
    try:
        commands = re.escape(f"{distributed.prefix}imagesvc.commands")
        rabbitmqctl("set_permissions", "-p", "/", name, "^$", f"^{commands}$", "^$")
        distributed.new_user(name, "--superadmin")
        parts = urlsplit(distributed.broker_url)
        url = f"amqp://{name}:{quote(password)}@{parts.hostname}:{parts.port or 5672}//"
        yield name, url
    finally:
        rabbitmqctl("delete_user", name)


@pytest.fixture
def tap(distributed):
    events = EventTap(distributed.broker_url, f"{distributed.prefix}imagesvc.events")
    yield events
    events.close()


@pytest.fixture
def image(distributed, origin, name):
    with distributed.client() as client:
        response = client.post(f"/image/{name}/", json={"manifest_url": origin.add_manifest()[0], "dc": "main"})
        assert response.status_code == 200, response.text
    return name


def send_as(distributed, broker_url: str, envelope: dict, **properties) -> None:
    publish(broker_url, f"{distributed.prefix}imagesvc.commands", envelope["type"], orjson.dumps(envelope),
            content_type="application/json", delivery_mode=2, message_id=envelope["id"],
            correlation_id=envelope["correlation_id"], type=envelope["type"], **properties)


def update(image: str, actor: str, desc: str) -> dict:
    envelope = command("image.update", {"name": image, "desc": desc})
    envelope["actor"] = {"user": actor, "dc": "main"}
    return envelope


def desc_of(distributed, image: str) -> str:
    with distributed.client() as client:
        return client.get(f"/image/{image}/").json()["result"]["desc"]


def test_a_program_acts_as_itself(distributed, program, tap, image):
    user, url = program
    envelope = update(image, user, "set by the program")
    send_as(distributed, url, envelope, user_id=user)
    done = tap.wait_for(type="task.succeeded", correlation_id=envelope["correlation_id"])
    assert done["payload"]["user"] == user
    assert desc_of(distributed, image) == "set by the program"


@pytest.mark.parametrize("how", ["forged actor", "no user_id"])
def test_a_program_cannot_act_as_somebody_else(distributed, program, tap, image, how):
    user, url = program
    envelope = update(image, "root" if how == "forged actor" else user, f"{how} got through")
    send_as(distributed, url, envelope, **({"user_id": user} if how == "forged actor" else {}))
    failed = tap.wait_for(type="task.failed", correlation_id=envelope["correlation_id"])
    payload = failed["payload"]
    assert (payload["http_code"], payload["result"], payload["code"]) == (
        403, {"detail": "Permission denied"}, "actor_not_trusted")
    assert desc_of(distributed, image) != f"{how} got through"
    assert [e["type"] for e in stored_events(distributed, causation_id=envelope["id"])] == ["task.failed"]


def test_the_broker_refuses_a_user_id_that_is_not_the_publishers(distributed, program, image):
    user, url = program
    envelope = update(image, "root", "claimed to be imagesvc")
    service_user = urlsplit(distributed.broker_url).username or "guest"
    with pytest.raises(pika.exceptions.AMQPError):
        send_as(distributed, url, envelope, user_id=service_user)
    assert stored_events(distributed, causation_id=envelope["id"]) == []
