"""A real S3 server for the tests: a one-node Ceph cluster with radosgw, from Debian's packages.

``start_s3(workdir)`` builds a throw-away cluster in ``workdir`` (its own ceph.conf, fsid, monitor
store, run, log and socket directories; nothing under /etc/ceph or /var/lib/ceph, no systemd):
one monitor on two free loopback ports (msgr v2 and v1), one OSD on ``memstore`` (objects live
in the OSD's memory, bounded by ``memstore device bytes``), and radosgw with the beast frontend
on a free loopback port. Authentication inside the cluster is off (``auth_* = none``); S3 requests
are signed as usual, with the keys of a user made by ``radosgw-admin``. It returns when an S3
request round trip works (bucket, object and multipart calls, which also makes radosgw create
all its pools, so a test's first request does not pay for that), with the endpoint and a
callable that kills every daemon and waits for it.

Daemons run in their own process groups and die with the process that started them (SIGKILL as
parent-death signal), so they cannot outlive a test run even if it is killed; ``stop`` is also
registered with ``atexit``. Start from a thread that lives as long as the server is needed (the
parent-death signal follows the starting thread).

The pytest fixture ``s3_endpoint`` (session scope, registered in tests/conftest.py) starts one
server lazily for the whole run; if it cannot start it skips, or fails under CI=true with the
reason and the tail of the daemons' logs. ``new_bucket(endpoint)`` makes a fresh bucket with a
unique name, so tests never see each other's objects. ``s3_client(endpoint)`` is a boto3 client
for it (path-style addressing: radosgw has no DNS name here).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from tests.support.services import CI

REGION = "us-east-1"
# Generous: a cold start takes 3-5 s on an idle 2-core machine, but CI machines can be busy.
START_TIMEOUT = float(os.environ.get("IMAGESVC_TEST_CEPH_START_TIMEOUT", "150"))
STORE_BYTES = 2 << 30
BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph", "setpriv")
# util-linux's setpriv sets the parent-death signal and execs the tool (no preexec_fn, which is
# unsafe in a process with threads, as a test process often is).
_DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--")


@dataclass(frozen=True)
class S3Endpoint:
    """Where the test S3 server answers and the credentials of its one user."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str


class CephStartError(RuntimeError):
    """The cluster did not come up; the message says which step failed and ends with log tails."""


def available() -> str | None:
    """None if a cluster can be started here, else why not."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return ("missing " + ", ".join(missing) + " (apt-get install --no-install-recommends "
                "radosgw ceph-mon ceph-osd ceph-common)")
    try:
        import boto3  # noqa: F401
    except ImportError:
        return "boto3 is not installed (pip install -e '.[test]')"
    return None


def _free_ports(count: int) -> list[int]:
    # All bound at once so the ports differ from each other.
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


class _Cluster:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.conf = workdir / "ceph.conf"
        self.logs = workdir / "log"
        self.processes: dict[str, subprocess.Popen] = {}
        self.extra_dirs: list[Path] = []
        self.stopped = False

    # -- commands ---------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CEPH_")}
        env.pop("PYTHONPATH", None)  # the ceph CLI is the system Python's, not ours
        return env

    def run(self, *args: str, timeout: float) -> str:
        """Run a Ceph tool against this cluster; its stdout, or CephStartError."""
        command = [*_DIE_WITH_PARENT, args[0], "-c", str(self.conf), *args[1:]]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  env=self._env(), cwd=self.dir)
        except subprocess.TimeoutExpired:
            raise CephStartError(f"{' '.join(args[:3])} did not finish in {timeout:.0f} s") from None
        if done.returncode != 0:
            raise CephStartError(f"{' '.join(args[:3])} failed ({done.returncode}): "
                                 f"{done.stderr.strip()[-2000:]}")
        return done.stdout

    def spawn(self, name: str, *args: str) -> None:
        out = open(self.logs / f"{name}.out", "ab")  # noqa: SIM115 (the child keeps it)
        try:
            self.processes[name] = subprocess.Popen(
                [*_DIE_WITH_PARENT, args[0], "-c", str(self.conf), *args[1:]], stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, env=self._env(), cwd=self.dir, start_new_session=True)
        finally:
            out.close()

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise CephStartError(f"{name} exited with {process.returncode}")

    def wait_until(self, what: str, check: Callable[[], bool], deadline: float) -> None:
        """Poll ``check`` (exceptions count as not yet) until true; fail early if a daemon dies."""
        last: BaseException | None = None
        while True:
            self.check_alive()
            try:
                if check():
                    return
            except Exception as exc:  # noqa: BLE001 (not up yet; keep the reason for the report)
                last = exc
            if time.monotonic() >= deadline:
                raise CephStartError(f"timed out waiting for {what}" + (f" (last: {last!r})" if last else ""))
            time.sleep(0.1)

    def stop(self) -> None:
        """Kill every daemon's process group and reap it. Safe to call more than once."""
        if self.stopped:
            return
        self.stopped = True
        # The cluster is thrown away, so there is nothing to shut down cleanly.
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)

    def log_tails(self) -> str:
        parts = []
        for path in sorted(self.logs.glob("*")):
            tail = _tail(path)
            if tail:
                parts.append(f"--- {path.name} ---\n{tail}")
        return "\n".join(parts)

    # -- the steps --------------------------------------------------------------------------
    def write_conf(self, mon_v2: int, mon_v1: int, rgw_port: int, store_bytes: int) -> None:
        d = self.dir
        self.fsid = fsid = str(uuid.uuid4())
        self.mon_addrs = f"[v2:127.0.0.1:{mon_v2},v1:127.0.0.1:{mon_v1}]"
        run = d / "run"
        if len(str(run)) > 60:  # unix socket paths are limited to 107 bytes
            run = Path(tempfile.mkdtemp(prefix="ceph-run-"))
            self.extra_dirs.append(run)
        for sub in ("mon", "osd", "rgw", "log", "crash"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        run.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"""\
# A throw-away one-node test cluster (tests/support/ceph.py).
[global]
fsid = {fsid}
mon host = {self.mon_addrs}
public addr = 127.0.0.1
ms bind ipv6 = false
# No cephx inside the cluster (S3 requests are still signed); with auth none the monitor
# connection must allow crc mode, which radosgw does not offer by default.
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc secure
run dir = {run}
admin socket = $run_dir/$name.$pid.asok
log file = {d}/log/$name.log
log to stderr = false
err to stderr = true
crash dir = {d}/crash
keyring = {d}/keyring
mon data = {d}/mon
osd data = {d}/osd
mgr data = {d}/mgr
rgw data = {d}/rgw
# One OSD: pools of one replica, placed across OSDs rather than hosts, few placement groups
# so new pools are active at once.
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
# The monitor must not stop itself when /tmp is nearly full.
mon data avail crit = 0
# Every pool radosgw creates takes a few map changes, which the monitor batches for a second
# each by default; a test cluster has nothing to batch.
paxos propose interval = 0.05
paxos min wait = 0.01
osd objectstore = memstore
memstore device bytes = {store_bytes}

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw thread pool size = 32
""")

    def start_monitor(self, deadline: float) -> None:
        monmap = self.dir / "monmap"
        subprocess.run(["monmaptool", "--create", "--clobber", "--fsid", self.fsid, "--addv", "a",
                        self.mon_addrs, str(monmap)], check=True, capture_output=True, timeout=30)
        self.run("ceph-mon", "-i", "a", "--mkfs", "--monmap", str(monmap), timeout=60)
        self.spawn("mon.a", "ceph-mon", "-i", "a", "-f")
        self.wait_until("the monitor's quorum",
                        lambda: bool(self.run("ceph", "--connect-timeout", "5", "mon", "stat", timeout=20)),
                        deadline)

    def start_osd(self, deadline: float) -> None:
        osd_uuid = str(uuid.uuid4())
        osd_id = self.run("ceph", "osd", "new", osd_uuid, timeout=30).strip()
        self.run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid, timeout=60)
        self.spawn(f"osd.{osd_id}", "ceph-osd", "-i", osd_id, "-f")

        def up() -> bool:
            stat = json.loads(self.run("ceph", "osd", "stat", "-f", "json", timeout=20))
            return stat.get("num_up_osds") == 1

        self.wait_until("the OSD to be up", up, deadline)

    def make_user(self, deadline: float) -> tuple[str, str]:
        access_key = "IMAGESVC" + uuid.uuid4().hex[:12].upper()
        secret_key = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        # radosgw-admin creates radosgw's first pools (it waits for them to be active).
        self.run("radosgw-admin", "user", "create", "--uid=imagesvc-test", "--display-name=imagesvc tests",
                 f"--access-key={access_key}", f"--secret-key={secret_key}",
                 timeout=max(5.0, deadline - time.monotonic()))
        return access_key, secret_key

    def start_gateway(self) -> None:
        self.spawn("client.rgw", "radosgw", "-n", "client.rgw", "-f")


def s3_client(endpoint: S3Endpoint, **config):
    """A boto3 S3 client for ``endpoint``: path-style addressing, SigV4 also for presigned URLs
    (botocore would presign with SigV2 for a custom endpoint); ``config`` overrides botocore
    Config arguments."""
    import boto3
    from botocore.config import Config

    options = {"s3": {"addressing_style": "path"}, "signature_version": "s3v4",
               "retries": {"max_attempts": 2, "mode": "standard"},
               "connect_timeout": 5, "read_timeout": 60}
    options.update(config)
    return boto3.client("s3", endpoint_url=endpoint.endpoint_url, aws_access_key_id=endpoint.access_key,
                        aws_secret_access_key=endpoint.secret_key, region_name=endpoint.region,
                        config=Config(**options))


def _s3_works(endpoint: S3Endpoint) -> bool:
    # Touches what the tests use, so radosgw makes its bucket index, data and multipart pools now.
    client = s3_client(endpoint, retries={"max_attempts": 1}, read_timeout=30)
    bucket = "warmup-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="probe", Body=b"probe")
    assert client.get_object(Bucket=bucket, Key="probe")["Body"].read() == b"probe"
    upload = client.create_multipart_upload(Bucket=bucket, Key="multi")["UploadId"]
    client.upload_part(Bucket=bucket, Key="multi", UploadId=upload, PartNumber=1, Body=b"part")
    client.abort_multipart_upload(Bucket=bucket, Key="multi", UploadId=upload)
    client.delete_object(Bucket=bucket, Key="probe")
    client.delete_bucket(Bucket=bucket)
    return True


def start_s3(workdir: Path, *, timeout: float = START_TIMEOUT,
             store_bytes: int = STORE_BYTES) -> tuple[S3Endpoint, Callable[[], None]]:
    """Start a one-node Ceph cluster with radosgw in ``workdir`` (created if missing; its
    contents are the cluster's config, stores and logs).

    Returns the S3 endpoint and ``stop``, which kills every daemon and waits for it (idempotent,
    also run at exit). Raises CephStartError, with the tails of the daemons' logs, if the
    cluster is not serving S3 within ``timeout`` seconds; nothing is left running then.
    ``store_bytes`` bounds what the OSD holds in memory.
    """
    why = available()
    if why:
        raise CephStartError(why)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    last_error: CephStartError | None = None
    # A second attempt only for a lost race on a free port (another process took it between our
    # probe and the daemon's bind), in a fresh directory.
    for attempt in range(2):
        cluster = _Cluster(workdir / f"cluster{attempt}")
        cluster.dir.mkdir(parents=True, exist_ok=True)
        cluster.logs.mkdir(exist_ok=True)
        atexit.register(cluster.stop)
        try:
            mon_v2, mon_v1, rgw_port = _free_ports(3)
            cluster.write_conf(mon_v2, mon_v1, rgw_port, store_bytes)
            cluster.start_monitor(deadline)
            cluster.start_osd(deadline)
            access_key, secret_key = cluster.make_user(deadline)
            cluster.start_gateway()
            endpoint = S3Endpoint(f"http://127.0.0.1:{rgw_port}", access_key, secret_key, REGION)
            cluster.wait_until("an S3 round trip through radosgw", lambda: _s3_works(endpoint), deadline)
        except (CephStartError, OSError, subprocess.SubprocessError) as exc:
            cluster.stop()
            last_error = CephStartError(f"{exc}\n{cluster.log_tails()}")
            if time.monotonic() >= deadline - 10 or not _port_race(cluster):
                break
            continue

        def stop(cluster: _Cluster = cluster) -> None:
            cluster.stop()
            for extra in cluster.extra_dirs:
                shutil.rmtree(extra, ignore_errors=True)

        return endpoint, stop
    assert last_error is not None
    raise last_error


def _port_race(cluster: _Cluster) -> bool:
    text = "\n".join(_tail(path, 40) for path in cluster.logs.glob("*"))
    return "Address already in use" in text or "EADDRINUSE" in text or "(98)" in text


def unavailable(why: str) -> None:
    """Skip the test (its first line of ``why``), or fail it with all of ``why`` under CI=true."""
    message = f"the test S3 server (one-node Ceph with radosgw) is not available: {why}"
    if CI:
        pytest.fail(message + "\nCI=true requires it", pytrace=False)
    pytest.skip(message.splitlines()[0])


def new_bucket(endpoint: S3Endpoint, prefix: str = "test") -> str:
    """Create a bucket with a fresh, valid, unique name on ``endpoint``; return the name."""
    name = f"{prefix}-{uuid.uuid4().hex[:16]}".lower()
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> S3Endpoint:
    """The S3 endpoint of a one-node Ceph cluster started once for the test run (lazily, when a
    test first asks). Skips when it cannot start; fails instead under CI=true."""
    why = available()
    if why is None:
        try:
            endpoint, stop = start_s3(tmp_path_factory.mktemp("ceph"))
        except CephStartError as exc:
            why = f"could not start: {exc}"
    if why is not None:
        unavailable(why)
    try:
        yield endpoint
    finally:
        stop()
