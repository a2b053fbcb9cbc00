"""Start imagesvc the way users do (its own command, in subprocesses) and stop it cleanly.

``start_embedded``: ``imagesvc serve`` (memory:// + SQLite, one process); ``restart_embedded``
starts it again on the same data (after a kill).
``start_image_server``: ``imagesvc image-server`` over a store directory (no broker, no database).
``start_gateway``: ``imagesvc gateway --workers N`` alone, over SQLite and the in-memory broker.
``start_distributed``: ``imagesvc db upgrade``, ``admin create-superadmin``, two gateways and one
process per consumer service on RabbitMQ + PostgreSQL, under a random topology prefix and a
fresh database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.contract_tap import ContractTap
from tests.support.polling import eventually
from tests.support.services import create_database, delete_queues, drop_database, free_port

CONSUMERS = ("importer", "updater", "deleter", "projector")


def _base_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESVC_")}
    env.update({"IMAGESVC_LOG_FORMAT": "json", "IMAGESVC_FETCH_ALLOW": "127.0.0.1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "imagesvc", *args]


@dataclass
class System:
    mode: str
    workdir: Path
    env: dict[str, str]
    api_key: str
    gateway_urls: list[str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    database_url: str | None = None
    broker_url: str | None = None
    prefix: str = ""
    _cleanup: list = field(default_factory=list)
    #: Checks what the system's service users publish against the message contract (distributed only).
    contract_tap: ContractTap | None = None

    @property
    def url(self) -> str:
        return self.gateway_urls[0]

    def client(self, gateway: int = 0, **kwargs) -> httpx.Client:
        headers = {"ES-API-KEY": self.api_key, **kwargs.pop("headers", {})}
        return httpx.Client(base_url=self.gateway_urls[gateway], headers=headers, timeout=30, **kwargs)

    def spawn(self, name: str, *args: str, crash_at: str | None = None) -> subprocess.Popen:
        """Start ``imagesvc ARGS`` as ``name``; ``crash_at``: its ``IMAGESVC_CRASH_AT`` (this process only)."""
        log = open(self.workdir / f"{name}.log", "ab")
        env = self.env if crash_at is None else {**self.env, "IMAGESVC_CRASH_AT": crash_at}
        process = subprocess.Popen(_command(*args), cwd=self.workdir, env=env, stdout=log, stderr=log,
                                   start_new_session=True)
        self.processes[name] = process
        return process

    def admin(self, *args: str, stdin: str | None = None) -> str:
        """Run ``imagesvc admin ARGS`` on this system's database; returns its output (the new
        key of a command that makes one is the last line). Fails the test if the command fails."""
        done = subprocess.run(_command("admin", *args), cwd=self.workdir, env=self.env, capture_output=True,
                              text=True, timeout=60, input=stdin)
        assert done.returncode == 0, f"imagesvc admin {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def new_user(self, username: str, *flags: str) -> str:
        """Create a user; returns its API key."""
        return self.admin("user", "create", username, *flags).strip().splitlines()[-1]

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_worker(self, service: str, name: str | None = None) -> None:
        """Start a ``service`` worker process (named ``name``, by default the service: a second
        consumer of one queue needs a name of its own) and wait until it consumes."""
        name = name or service
        marker = self.log(name).count('"consumer.ready"')
        self.spawn(name, "worker", service)

        def ready() -> None:
            assert self.processes[name].poll() is None, self.log(name)[-2000:]
            assert self.log(name).count('"consumer.ready"') > marker

        eventually(ready, timeout=30)

    def start_gateway(self, index: int = 0, *, crash_at: str | None = None) -> None:
        """(Re)start ``gateway<index>`` on its port (stopping it first if it runs), armed with
        ``crash_at`` if given, and wait until it answers."""
        name = f"gateway{index}"
        if name in self.processes and self.processes[name].poll() is None:
            self.kill(name, signal.SIGTERM)
        process = self.spawn(name, "gateway", "--port", str(httpx.URL(self.gateway_urls[index]).port),
                             crash_at=crash_at)
        _wait_http(self.gateway_urls[index] + "/openapi.json", process, lambda: self.log(name))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)

    def stop(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        try:
            if self.contract_tap is not None:
                self.contract_tap.check()  # raises AssertionError naming each message that broke the contract
        finally:
            for cleanup in self._cleanup:
                cleanup()


def _wait_http(probe_url: str, process: subprocess.Popen, log) -> None:
    """Until ``probe_url`` answers 200 (fails with the process's log if the process ends)."""
    def up() -> None:
        assert process.poll() is None, log()[-3000:]
        try:
            assert httpx.get(probe_url, timeout=2).status_code == 200
        except httpx.HTTPError as exc:
            raise AssertionError(str(exc)) from None

    eventually(up, timeout=40, interval=0.1)


def start_embedded(workdir: Path, extra_env: dict[str, str] | None = None) -> System:
    port = free_port()
    # Database-level operations unless a test configures an image store.
    env = _base_env({"IMAGESVC_DATA_DIR": str(workdir / "var"), "IMAGESVC_IMAGE_STORE": "none", **(extra_env or {})})
    system = System("embedded", workdir, env, api_key="", gateway_urls=[f"http://127.0.0.1:{port}/api"])
    try:
        restart_embedded(system)
        system.api_key = (workdir / "var" / "admin.key").read_text().strip()
    except BaseException:
        system.stop()
        raise
    return system


def restart_embedded(system: System, extra_env: dict[str, str] | None = None, *, crash_at: str | None = None) -> None:
    """(Re)start the system's ``imagesvc serve`` on its data directory and port, with ``extra_env``
    added to its environment from now on (and ``crash_at`` armed for this process only); returns
    once it answers."""
    system.env.update(extra_env or {})
    port = httpx.URL(system.url).port
    process = system.spawn("serve", "serve", "--port", str(port), crash_at=crash_at)
    _wait_http(system.url + "/openapi.json", process, lambda: system.log("serve"))


def start_image_server(workdir: Path, store: Path | str, extra_env: dict[str, str] | None = None) -> System:
    """``imagesvc image-server`` serving ``store`` (a directory, or an ``s3://`` spec with its
    ``IMAGESVC_S3_*`` and ``AWS_*`` variables in ``extra_env``); ``url`` is its root (no ``/api``)."""
    port = free_port()
    env = _base_env({"IMAGESVC_IMAGE_STORE": str(store), **(extra_env or {})})
    system = System("image-server", workdir, env, api_key="", gateway_urls=[f"http://127.0.0.1:{port}"])
    process = system.spawn("image-server", "image-server", "--port", str(port))
    try:
        _wait_http(system.url + "/ping", process, lambda: system.log("image-server"))
    except BaseException:
        system.stop()
        raise
    return system


def start_gateway(workdir: Path, *, workers: int, extra_env: dict[str, str] | None = None) -> System:
    """``imagesvc gateway --workers N`` alone, over a fresh SQLite database and the in-memory broker
    (no consumers: for what the gateway answers by itself); ``url`` ends in ``/api``."""
    port = free_port()
    env = _base_env({"IMAGESVC_DATABASE_URL": f"sqlite:///{workdir / 'gateway.db'}", "IMAGESVC_BROKER_URL": "memory://",
                     "IMAGESVC_IMAGE_STORE": "none", **(extra_env or {})})
    system = System("gateway", workdir, env, api_key="", gateway_urls=[f"http://127.0.0.1:{port}/api"])
    try:
        subprocess.run(_command("db", "upgrade"), cwd=workdir, env=env, check=True, capture_output=True, timeout=120)
        process = system.spawn("gateway", "gateway", "--port", str(port), "--workers", str(workers))
        _wait_http(system.url + "/openapi.json", process, lambda: system.log("gateway"))
    except BaseException:
        system.stop()
        raise
    return system


def start_distributed(workdir: Path, *, broker_url: str, postgres_admin_url: str, gateways: int = 2,
                      extra_env: dict[str, str] | None = None, prefix: str | None = None,
                      contract_tap: bool = True) -> System:
    """``prefix``: the topology prefix (default: a random one, so that systems can share a vhost;
    "" on a virtual host of the test's own, as in production). ``contract_tap``: check what the
    system publishes against the message contract when it stops (benchmarks turn it off: it
    would read and validate every message of the load)."""
    prefix = f"t{uuid.uuid4().hex[:8]}." if prefix is None else prefix
    database_url = create_database(postgres_admin_url)
    env = _base_env({
        "IMAGESVC_DATABASE_URL": database_url,
        "IMAGESVC_BROKER_URL": broker_url,
        "IMAGESVC_TOPOLOGY_PREFIX": prefix,
        **(extra_env or {}),
    })
    ports = [free_port() for _ in range(gateways)]
    system = System("distributed", workdir, env, api_key="", gateway_urls=[f"http://127.0.0.1:{p}/api" for p in ports],
                    database_url=database_url, broker_url=broker_url, prefix=prefix)
    system._cleanup.append(lambda: drop_database(postgres_admin_url, database_url))
    system._cleanup.append(lambda: delete_queues(broker_url, prefix))
    try:
        subprocess.run(_command("db", "upgrade"), cwd=workdir, env=env, check=True, capture_output=True, timeout=120)
        created = subprocess.run(_command("admin", "create-superadmin", "root"), cwd=workdir, env=env, check=True,
                                 capture_output=True, text=True, timeout=60)
        system.api_key = created.stdout.strip().splitlines()[-1]
        for index in range(gateways):
            system.start_gateway(index)
        for service in CONSUMERS:
            system.start_worker(service)
        if contract_tap:
            system.contract_tap = ContractTap.for_system(broker_url, prefix, env)
    except BaseException:
        system.stop()
        raise
    return system

