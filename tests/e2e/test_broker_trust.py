"""The broker is not a back door: a command acts for its actor only if RabbitMQ vouches (AMQP
``user_id``) that imagesvc itself or that very user published it. Real RabbitMQ users, made with
``rabbitmqctl`` for the test and removed afterwards."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import uuid
from typing import Iterator
from urllib.parse import quote, urlsplit

import orjson
import pika
import pytest

from tests.e2e.test_distributed import command, stored_events
from tests.support.polling import eventually
from tests.support.services import unavailable
from tests.support.tap import EventTap, publish

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq, pytest.mark.postgres]


def rabbitmqctl(*args: str) -> None:
    if shutil.which("rabbitmqctl") is None:  # a broker elsewhere: its users cannot be made from here
        unavailable("rabbitmqctl", "not on the PATH (needed to make broker users)")
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}"


@contextlib.contextmanager
def broker_user(distributed, name: str) -> Iterator[str]:
    """A RabbitMQ user that may write to the commands exchange only; yields its broker URL."""
    password = uuid.uuid4().hex
    rabbitmqctl("add_user", name, password)
    try:
        commands = re.escape(f"{distributed.prefix}imagesvc.commands")
        rabbitmqctl("set_permissions", "-p", "/", name, "^$", f"^{commands}$", "^$")
        parts = urlsplit(distributed.broker_url)
        yield f"amqp://{name}:{quote(password)}@{parts.hostname}:{parts.port or 5672}//"
    finally:
        rabbitmqctl("delete_user", name)


@pytest.fixture(scope="module")
def program(distributed):
    """A broker user and an imagesvc SuperAdmin of the same name: a program acting as itself."""
    name = f"prog{uuid.uuid4().hex[:8]}"
    with broker_user(distributed, name) as url:
        distributed.new_user(name, "--superadmin")
        yield name, url


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


def desc_becomes(distributed, image: str, desc: str) -> None:
    """A publisher on the broker has no read-your-writes promise: the outcome event can reach a
    subscriber before the projector has applied it to the read model, so poll the read model."""
    def check() -> None:
        assert desc_of(distributed, image) == desc
    eventually(check)


def test_a_program_acts_as_itself(distributed, program, tap, image):
    user, url = program
    envelope = update(image, user, "set by the program")
    send_as(distributed, url, envelope, user_id=user)
    done = tap.wait_for(type="task.succeeded", correlation_id=envelope["correlation_id"])
    assert done["payload"]["user"] == user
    desc_becomes(distributed, image, "set by the program")


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


@pytest.fixture(scope="module")
def dc1_program(distributed):
    """A program whose imagesvc user is ImageAdmin (not SuperAdmin) of dc1 only."""
    name = f"dcprog{uuid.uuid4().hex[:8]}"
    dc = f"dc{name[-6:]}"
    with broker_user(distributed, name) as url:
        distributed.new_user(name)
        distributed.admin("dc", "create", dc)
        distributed.admin("role", "create", f"role-{name}", "--permission=admin", "--permission=image_admin")
        distributed.admin("role", "add-user", f"role-{name}", name)
        distributed.admin("role", "attach", f"role-{name}", dc)
        yield name, url, dc


def test_a_program_has_its_users_roles_and_no_more(distributed, dc1_program, tap, origin):
    """The refusals of the HTTP API, for a command published straight to the broker."""
    user, url, dc = dc1_program
    names = {}
    with distributed.client() as client:
        for where, body in (("own", {"dc": dc}), ("main", {"dc": "main"}), ("global", {"dc_bound": False})):
            names[where] = f"bt-{where}-{uuid.uuid4().hex[:6]}"
            response = client.post(f"/image/{names[where]}/", json={"manifest_url": origin.add_manifest()[0], **body})
            assert response.status_code == 200, response.text
    outcomes = {}
    for where, image in names.items():
        envelope = update(image, user, f"by {user}")
        send_as(distributed, url, envelope, user_id=user)
        outcomes[where] = envelope["correlation_id"]
    done = tap.wait_for(type="task.succeeded", correlation_id=outcomes["own"])
    assert done["payload"]["user"] == user
    desc_becomes(distributed, names["own"], f"by {user}")
    for where in ("main", "global"):
        failed = tap.wait_for(type="task.failed", correlation_id=outcomes[where])["payload"]
        assert (failed["http_code"], failed["result"]) == (
            403, {"detail": "You do not have permission to perform this action."})
        assert desc_of(distributed, names[where]) != f"by {user}"
    # Importing needs ImageImportAdmin in the target datacenter, which the role does not hold.
    envelope = command("image.import", {"name": f"bt-imp-{uuid.uuid4().hex[:6]}",
                                        "manifest_url": origin.add_manifest()[0], "dc": dc})
    envelope["actor"] = {"user": user, "dc": dc}
    send_as(distributed, url, envelope, user_id=user)
    failed = tap.wait_for(type="task.failed", correlation_id=envelope["correlation_id"])["payload"]
    assert (failed["http_code"], failed["result"]) == (403, {"detail": "You do not have permission to perform this action."})
