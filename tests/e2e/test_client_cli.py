"""The user command line against the running system, in both modes: the commands people and
scripts run (``imagesvc image|task|login|logout``), their output and exit codes, and the live
progress line of an import seen through a real terminal (a pty), where Ctrl-C detaches without
cancelling the task. ``events tail`` needs a broker another process can reach: distributed mode.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import launch


pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery"
#: 64 KiB pieces this many seconds apart: an import that takes a few seconds and reports progress.
PACE = 0.04
PIECES = 100


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def system(request, tmp_path_factory):
    """conftest's system in each mode, with an image store: imports download their file, and report progress."""
    started = launch(request.param, request, tmp_path_factory,
                     IMAGESVC_IMAGE_STORE=str(tmp_path_factory.mktemp("store")))
    yield started
    started.stop()


@pytest.fixture
def cli_env(system, tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESVC_")}
    env.update({"IMAGESVC_CLIENT_URL": system.url, "IMAGESVC_CLIENT_API_KEY": system.api_key,
                "IMAGESVC_CLIENT_CONFIG": str(tmp_path / "profiles.json"), "COLUMNS": "200"})
    return env


def imagesvc(env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 60
             ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagesvc", *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=timeout)


def slow_image(origin) -> str:
    content = os.urandom(64 * 1024) * PIECES
    url, _ = origin.add_image(content, pace=PACE)
    return url


class Terminal:
    """``imagesvc ARGS`` on a pseudo-terminal of its own (its controlling terminal, so a typed
    Ctrl-C reaches it as SIGINT), its output collected as the screen would receive it."""

    def __init__(self, env: dict[str, str], *args: str):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: exec the command on the terminal
            # As a person's shell starts it: a test run started in the background (nohup, CI)
            # ignores SIGINT, an ignored signal survives exec, and Python then installs no
            # KeyboardInterrupt handler, so a typed Ctrl-C would do nothing.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execvpe(sys.executable, [sys.executable, "-m", "imagesvc", *args], env)
        self.output = b""
        self.status: int | None = None

    def read(self, until: "re.Pattern[bytes]", timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while (match := until.search(self.output)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._pump(remaining):
                raise AssertionError(f"{until.pattern!r} never appeared; the terminal showed:\n{self.text()}")
        return match

    def _pump(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], min(timeout, 1.0))
        if ready:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                return False
            if not chunk:
                return False
            self.output += chunk
        return True

    def type(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                while self._pump(0.05):
                    pass
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                raise AssertionError(f"the command did not end; the terminal showed:\n{self.text()}")
            self._pump(0.1)
        os.close(self.fd)
        return self.status

    def text(self) -> str:
        return self.output.decode(errors="replace")


PERCENT = re.compile(rb"\[[#-]+\]\s+(\d+)%")


def test_an_import_shows_live_progress_on_a_terminal_and_ends_with_the_image(system, origin, name, cli_env):
    terminal = Terminal(cli_env, "image", "import", name, slow_image(origin), "--dc", "main", "--set", "desc=from the cli")
    terminal.read(re.compile(rb"MiB/s\s+ETA \d+:\d\d"))  # a rate and the time left, once two samples exist
    assert terminal.wait() == 0, terminal.text()
    percents = [int(p) for p in PERCENT.findall(terminal.output)]
    assert len(set(percents)) >= 2 and percents == sorted(percents), terminal.text()
    assert "\r\x1b[2K" in terminal.text()  # redrawn in place, not scrolled
    assert re.search(r"status\s+SUCCESS", terminal.text()), terminal.text()
    with httpx.Client(base_url=system.url, headers={"ES-API-KEY": system.api_key}, timeout=30) as client:
        image = client.get(f"/image/{name}/").json()["result"]
    assert image["desc"] == "from the cli" and image["status"] == 1


def test_ctrl_c_detaches_and_the_import_goes_on(system, origin, name, cli_env):
    terminal = Terminal(cli_env, "image", "import", name, slow_image(origin), "--dc", "main")
    terminal.read(PERCENT)
    terminal.type(b"\x03")
    assert terminal.wait() == 130, terminal.text()
    detached = re.search(r"detached: task (\S+) goes on", terminal.text())
    assert detached, terminal.text()
    waited = imagesvc(cli_env, "task", "wait", detached.group(1), "--json")
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["status"] == "SUCCESS"


def test_off_a_terminal_the_commands_print_tables_or_json_and_exit_by_outcome(system, origin, name, cli_env):
    manifest_url, _ = origin.add_image(os.urandom(4096))
    imported = imagesvc(cli_env, "image", "import", name, manifest_url, "--dc", "main", "--json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["status"] == "SUCCESS"
    assert "\r" not in imported.stderr

    listed = imagesvc(cli_env, "image", "list", "--json")
    assert listed.returncode == 0 and name in [i["name"] for i in json.loads(listed.stdout)]
    table = imagesvc(cli_env, "image", "list")
    assert table.stdout.splitlines()[0].split()[:3] == ["NAME", "VERSION", "STATUS"]
    assert any(line.split()[0] == name and line.split()[2] == "ok" for line in table.stdout.splitlines()[1:])

    updated = imagesvc(cli_env, "image", "update", name, "--set", "desc=changed", "--set", "access=3")
    assert updated.returncode == 0, updated.stderr
    shown = imagesvc(cli_env, "image", "show", name, "--json")
    assert {k: json.loads(shown.stdout)[k] for k in ("desc", "access")} == {"desc": "changed", "access": 3}
    assert imagesvc(cli_env, "image", "wait", name, "--timeout", "10").returncode == 0
    vms = imagesvc(cli_env, "image", "vms", name, "--json")
    assert vms.returncode == 0 and json.loads(vms.stdout) == []

    again = imagesvc(cli_env, "image", "import", name, manifest_url, "--dc", "main")
    assert again.returncode == 1
    assert "refused (406)" in again.stderr and "Image already exists" in again.stderr

    invalid = imagesvc(cli_env, "image", "update", name, "--set", "access=7")
    assert invalid.returncode == 1 and "refused (400)" in invalid.stderr
    assert re.search(r"^\s+access: ", invalid.stderr, re.MULTILINE), invalid.stderr

    deleted = imagesvc(cli_env, "image", "delete", name, "--json")
    assert deleted.returncode == 0 and json.loads(deleted.stdout)["status"] == "SUCCESS"
    gone = imagesvc(cli_env, "image", "show", name)
    assert gone.returncode == 1 and "refused (404)" in gone.stderr


def test_a_failed_task_exits_1_with_its_code_and_detach_returns_at_once(system, origin, name, cli_env):
    missing = origin.route(f"/missing/{name}", status=404)
    refused = imagesvc(cli_env, "image", "import", name, missing, "--dc", "main")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "refused (400)" in refused.stderr and re.search(r"^\s+manifest_url: ", refused.stderr, re.MULTILINE)

    corrupt, _ = origin.add_image(os.urandom(4096), sha1="0" * 40)
    failed = imagesvc(cli_env, "image", "import", name, corrupt, "--dc", "main")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "checksum_mismatch" in failed.stdout + failed.stderr

    started = imagesvc(cli_env, "image", "import", name + "-d", slow_image(origin), "--dc", "main", "--detach", "--json")
    assert started.returncode == 0, started.stderr
    task_id = json.loads(started.stdout)["task_id"]
    status = imagesvc(cli_env, "task", "status", task_id, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["task_id"] == task_id
    assert imagesvc(cli_env, "task", "wait", task_id).returncode == 0


def test_unreachable_service_and_bad_credentials(system, cli_env):
    nobody = dict(cli_env, IMAGESVC_CLIENT_URL="http://127.0.0.1:9")
    down = imagesvc(nobody, "image", "list")
    assert down.returncode == 3 and "cannot be reached" in down.stderr
    wrong = imagesvc(dict(cli_env, IMAGESVC_CLIENT_API_KEY="not-a-key"), "image", "list")
    assert wrong.returncode == 1 and "refused (403)" in wrong.stderr


def test_login_keeps_a_token_for_its_owner_only_and_logout_ends_it(system, cli_env):
    username = f"cli{uuid.uuid4().hex[:8]}"
    system.new_user(username, "--superadmin")
    system.admin("user", "password", username, stdin=PASSWORD + "\n")
    env = {k: v for k, v in cli_env.items() if k != "IMAGESVC_CLIENT_API_KEY"}
    refused = imagesvc(env, "login", "--username", username, "--password-stdin", stdin="wrong\n")
    assert refused.returncode == 1, refused.stderr
    logged = imagesvc(env, "login", "--username", username, "--password-stdin", stdin=PASSWORD + "\n")
    assert logged.returncode == 0, logged.stderr
    profile = Path(env["IMAGESVC_CLIENT_CONFIG"])
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600
    token = json.loads(profile.read_text())["default"]["token"]
    assert imagesvc(env, "image", "list").returncode == 0  # the kept token is used
    assert imagesvc(env, "logout").returncode == 0
    assert "token" not in json.loads(profile.read_text())["default"]
    with httpx.Client(base_url=system.url, timeout=30) as client:
        assert client.get("/image/", headers={"Authorization": f"Token {token}"}).status_code == 403


def test_events_tail_prints_the_lifecycle_of_an_import(system, origin, name, cli_env):
    if system.mode != "distributed":
        pytest.skip("the embedded broker (memory://) lives inside imagesvc serve: no other process can subscribe")
    service_user = httpx.URL(system.broker_url.replace("amqp://", "http://")).username
    tail = subprocess.Popen(
        [sys.executable, "-m", "imagesvc", "events", "tail", "--broker-url", system.broker_url, "--prefix",
         system.prefix, "--service-user", service_user, "--type", "task.succeeded", "--type", "image.imported",
         "--count", "2", "--json", "--idle-timeout", "60"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        listening = tail.stderr.readline()
        assert listening.startswith("listening on "), listening + tail.stderr.read()
        imported = imagesvc(cli_env, "image", "import", name, origin.add_image(os.urandom(4096))[0], "--dc", "main")
        assert imported.returncode == 0, imported.stderr
        out, err = tail.communicate(timeout=60)
    finally:
        if tail.poll() is None:
            tail.kill()
    assert tail.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["type"] for e in events] == ["image.imported", "task.succeeded"], out
    assert events[0]["correlation_id"] == events[1]["correlation_id"]
    assert events[0]["payload"]["image"]["name"] == name
