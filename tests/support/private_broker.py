"""A private RabbitMQ node that a fault test may stop, kill or alarm.

The shared broker (127.0.0.1:5672) serves everybody's test runs, so faults that take a broker
down run against a node of our own: its own node name, AMQP and distribution ports, data and log
directories, config file (the system's /etc/rabbitmq/rabbitmq.conf binds 5672) and Erlang cookie
(``HOME`` points into the node's directory, so ``rabbitmqctl`` run by ``ctl`` finds the same
cookie). The scripts under /usr/lib/rabbitmq/bin are run directly: the /usr/sbin wrappers switch
to the ``rabbitmq`` user, which could not write our temporary directory.

``available()`` says why a node cannot be started here (None when it can).

``PrivateCluster`` runs several such nodes with one Erlang cookie, joined into one RabbitMQ
cluster (``rabbitmqctl join_cluster``), for the tests that kill a cluster node.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.polling import eventually
from tests.support.services import free_port

RABBITMQ_BIN = Path(os.environ.get("IMAGESVC_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
#: Seconds a node gets to boot (a cold node with a fresh database takes ~5 s on 2 cores).
START_TIMEOUT = 60.0


def available() -> str | None:
    """None if a private node can be started on this machine, else the reason it cannot."""
    for script in ("rabbitmq-server", "rabbitmqctl"):
        if not os.access(RABBITMQ_BIN / script, os.X_OK):
            return f"{RABBITMQ_BIN / script} is missing or not executable (RabbitMQ server not installed)"
    return None


class PrivateBroker:
    """``start()`` boots the node; ``url`` is its AMQP URL; ``close()`` always leaves nothing running."""

    def __init__(self, base_dir: Path, *, extra_config: str = "", cookie: str | None = None) -> None:
        """``extra_config``: more lines of ``rabbitmq.conf`` (e.g. ``consumer_timeout = 60000``).
        ``cookie``: the Erlang cookie (nodes of one cluster share theirs); default a random one."""
        self.dir = Path(base_dir)
        self.node = f"imagesvc-faults-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        home = self.dir / "home"
        for sub in ("home", "mnesia", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        cookie_file = home / ".erlang.cookie"
        cookie_file.write_text(cookie or uuid.uuid4().hex.upper())
        cookie_file.chmod(0o400)
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
            # Loopback-only guest is RabbitMQ's default; stated so that a changed default shows here.
            "loopback_users.guest = true\n" + extra_config)
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "node.pid"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Boot the node (or boot it again after ``kill``/``stop``: same name, same data) and
        wait until it accepts AMQP connections."""
        self.launch()
        self.wait_started()

    def launch(self) -> None:
        """Start booting the node, without waiting (``wait_started`` waits)."""
        pid_file = self.dir / "node.pid"
        pid_file.unlink(missing_ok=True)
        subprocess.run([str(RABBITMQ_BIN / "rabbitmq-server"), "-detached"], env=self.env, check=True,
                       capture_output=True, timeout=30, cwd=self.dir)
        self._launched = True

    def wait_started(self) -> None:
        """Wait until the launched node has booted and accepts AMQP connections."""

        # ``await_startup`` fails at once while the node is not yet registered with epmd.
        def booted() -> None:
            done = self._ctl("await_startup", "--timeout", "5", check=False, timeout=30)
            assert done.returncode == 0, f"node {self.node} not up: {done.stdout}{done.stderr}\n{self.log_tail()}"

        eventually(booted, timeout=START_TIMEOUT, interval=0.5)
        eventually(self._accepts_amqp, timeout=START_TIMEOUT, interval=0.1)

    def _accepts_amqp(self) -> None:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError as exc:
            raise AssertionError(f"port {self.port}: {exc}") from None

    def serving(self) -> bool:
        """Whether the node accepts AMQP connections now."""
        try:
            self._accepts_amqp()
        except AssertionError:
            return False
        return True

    @property
    def pid(self) -> int | None:
        """The node's beam.smp process id (None when it is not running)."""
        try:
            pid = int((self.dir / "node.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def stop_app(self) -> None:
        """``rabbitmqctl stop_app``: the node stays up, AMQP goes away (a graceful broker restart)."""
        self._ctl("stop_app")

    def start_app(self) -> None:
        self._ctl("start_app")
        eventually(self._accepts_amqp, timeout=START_TIMEOUT, interval=0.1)

    def kill(self) -> None:
        """SIGKILL the node's beam process (a crash: nothing is flushed, nothing is closed)."""
        pid = self.pid
        assert pid is not None, "the private node is not running"
        os.kill(pid, signal.SIGKILL)

        def gone() -> None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            raise AssertionError(f"beam {pid} still running")

        eventually(gone, timeout=10)

    def join(self, other: "PrivateBroker") -> None:
        """Make this (running) node a member of ``other``'s cluster; it forgets its own data."""
        self._ctl("stop_app")
        self._ctl("reset")
        self._ctl("join_cluster", other.node)
        self.start_app()

    def set_disk_free_limit(self, limit: str) -> None:
        """E.g. ``"1000GB"`` raises the disk alarm (publishers are blocked); ``"50MB"`` clears it."""
        self._ctl("set_disk_free_limit", limit)

    def ctl(self, *args: str) -> str:
        """Run ``rabbitmqctl -n <node> ARGS`` on this node; returns its output."""
        return self._ctl(*args).stdout

    def close(self) -> None:
        """Stop the node (kill it if ``stop`` does not work) and remove its files."""
        if getattr(self, "_launched", False) and not (self.dir / "node.pid").exists():
            # Launched but not yet far enough to have written its pid: wait for it, or the
            # booting node would outlive us.
            try:
                eventually(lambda: (self.dir / "node.pid").exists() or _fail("no pid file yet"),
                           timeout=START_TIMEOUT, interval=0.2)
            except AssertionError:
                pass
        try:
            if self.pid is not None:
                self._ctl("stop", check=False, timeout=60)
        finally:
            pid = self.pid
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- helpers -----------------------------------------------------------------------------

    def _ctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        done = subprocess.run([str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if check and done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.node}: {done.stdout}{done.stderr}")
        return done

    def log_tail(self, chars: int = 2000) -> str:
        logs = sorted((self.dir / "log").glob("*.log"))
        return "".join(p.read_text(errors="replace")[-chars:] for p in logs)


class PrivateCluster:
    """``size`` private nodes with one Erlang cookie, joined into one cluster.

    ``start()`` boots them side by side (a boot mostly waits) and joins the others to the first;
    ``urls`` is imagesvc's ``IMAGESVC_BROKER_URL`` for the cluster (one URL per node,
    ``;``-separated); ``close()`` always leaves no node running, even a half-started cluster.
    """

    def __init__(self, base_dir: Path, *, size: int = 3, extra_config: str = "") -> None:
        cookie = uuid.uuid4().hex.upper()
        self.nodes = [PrivateBroker(Path(base_dir) / f"node{index}", extra_config=extra_config, cookie=cookie)
                      for index in range(size)]

    @property
    def urls(self) -> str:
        return ";".join(node.url for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.launch()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.wait_started(), self.nodes))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.join(first)

        def formed() -> None:
            running = first.ctl("eval", "length(rabbit_nodes:all_running()).").strip()
            assert running == str(len(self.nodes)), f"{running} of {len(self.nodes)} nodes running in the cluster"

        eventually(formed, timeout=START_TIMEOUT, interval=0.5)

    def node_named(self, name: str) -> PrivateBroker:
        for node in self.nodes:
            if node.node == name:
                return node
        raise KeyError(f"{name} is not a node of this cluster ({[n.node for n in self.nodes]})")

    def running(self) -> list[PrivateBroker]:
        return [node for node in self.nodes if node.pid is not None]

    def quorum_queues(self) -> dict[str, tuple[str, list[str]]]:
        """Queue name -> (its leader's node name, its members' node names), for the quorum queues
        (asked of a running node)."""
        import json

        output = self.running()[0].ctl("list_queues", "--quiet", "--formatter", "json", "name", "type", "leader",
                                       "members")
        return {row["name"]: (row["leader"], list(row["members"])) for row in json.loads(output)
                if row.get("type") == "quorum"}

    def connections(self) -> list[tuple[str, str]]:
        """(node name, client's connection name) of every AMQP connection to a running node."""
        import json

        port_to_node = {node.port: node.node for node in self.nodes}
        output = self.running()[0].ctl("list_connections", "--quiet", "--formatter", "json", "port",
                                       "client_properties")
        found = []
        for row in json.loads(output):
            name = next((value for key, _kind, value in row["client_properties"] if key == "connection_name"), "")
            found.append((port_to_node.get(row["port"], str(row["port"])), name))
        return found

    def close(self) -> None:
        """Stop every node (killing what does not stop) and remove their files."""
        errors = []
        for node in self.nodes:
            try:
                node.close()
            except Exception as exc:  # noqa: BLE001 - every node must be closed, whatever one did
                errors.append(exc)
        if errors:
            raise errors[0]


def _fail(message: str) -> None:
    raise AssertionError(message)
