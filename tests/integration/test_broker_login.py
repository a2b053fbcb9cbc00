"""A worker whose broker user is refused says so plainly (``consumer.access_refused``, naming the
URL without its password and what to check) and keeps knocking, with a growing pause, so it starts
consuming by itself once an operator has fixed the user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from urllib.parse import urlsplit

import pytest

from tests.support.polling import eventually
from tests.support.services import unavailable

pytestmark = pytest.mark.rabbitmq


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=True)


def test_a_refused_worker_says_so_and_starts_once_its_user_exists(rabbitmq_url, tmp_path):
    if shutil.which("rabbitmqctl") is None:
        unavailable("rabbitmqctl", "not on the PATH (needed to make a broker user)")
    user, password = f"imagesvc-late-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    broker = urlsplit(rabbitmq_url)
    url = f"amqp://{user}:{password}@{broker.hostname}:{broker.port or 5672}/"
    env = {**os.environ, "IMAGESVC_BROKER_URL": url, "IMAGESVC_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}",
           "IMAGESVC_LOG_FORMAT": "json", "IMAGESVC_TOPOLOGY_PREFIX": f"login{uuid.uuid4().hex[:6]}."}
    subprocess.run([sys.executable, "-m", "imagesvc", "db", "upgrade"], env=env, check=True, capture_output=True)
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "imagesvc", "worker", "updater"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        def lines() -> list[dict]:
            found = []
            for line in log_path.read_text(errors="replace").splitlines():
                try:
                    found.append(json.loads(line))
                except ValueError:
                    pass
            return found

        def refused_twice() -> list[dict]:
            refusals = [line for line in lines() if line.get("event") == "consumer.access_refused"]
            assert len(refusals) >= 2, refusals
            return refusals

        refusals = eventually(refused_twice, timeout=30)
        assert refusals[0]["level"] == "error" and password not in log_path.read_text()
        assert f"amqp://{user}:**@" in refusals[0]["problem"] and "IMAGESVC_BROKER_URL" in refusals[0]["problem"]
        assert refusals[1]["retry_in"] > refusals[0]["retry_in"]  # a growing pause
        assert worker.poll() is None  # still trying

        rabbitmqctl("add_user", user, password)
        rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")

        def consuming() -> None:
            assert any(line.get("event") == "consumer.ready" for line in lines()), "not consuming yet"

        eventually(consuming, timeout=60, interval=0.2)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        subprocess.run(["rabbitmqctl", "delete_user", user], capture_output=True, timeout=60)
