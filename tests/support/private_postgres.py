"""A PostgreSQL cluster of a test's own, which the test may stop and start at will (a database
outage) without touching the shared server other test runs use.

``PrivatePostgres.create()`` runs ``initdb`` into a fresh temporary directory and starts the
server on a free loopback port (its socket in that directory too); ``stop_immediately()`` is
``pg_ctl stop -m immediate`` (no checkpoint, clients cut off: a crash as the clients see it),
``start()`` brings it back on the same port and data, ``remove()`` stops it and deletes the
directory. The binaries are taken from /usr/lib/postgresql/<newest>/bin (or PATH). PostgreSQL
refuses to run as root, so as root every command runs as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.services import free_port


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def available() -> str | None:
    """None if a private cluster can be made here, else why not."""
    if _bin_dir() is None:
        return "no initdb found"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server as"
    return None


@dataclass
class PrivatePostgres:
    directory: Path
    port: int
    _bin: Path

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        command = [str(self._bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done

    @classmethod
    def create(cls) -> "PrivatePostgres":
        bin_dir = _bin_dir()
        assert bin_dir is not None, "no PostgreSQL binaries"
        directory = Path(tempfile.mkdtemp(prefix="imagesvc-pg-"))
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(directory, user.pw_uid, user.pw_gid)
        cluster = cls(directory, free_port(), bin_dir)
        try:
            cluster._run("initdb", "-D", str(cluster.data), "-U", "postgres", "-A", "trust", "--no-sync",
                         "-E", "UTF8", timeout=120)
            cluster.start()
        except BaseException:
            cluster.remove()
            raise
        return cluster

    def start(self) -> None:
        # fsync off: the cluster is thrown away, and an immediate stop still loses nothing
        # committed (the WAL is written to the OS; only a machine crash could lose it).
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.directory / "server.log"),
                  "-w", "-t", "60", "start")

    def stop_immediately(self) -> None:
        """``pg_ctl stop -m immediate``: every client connection is cut at once."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def running(self) -> bool:
        command = [str(self._bin / "pg_ctl"), "-D", str(self.data), "status"]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0

    def remove(self) -> None:
        try:
            if self.data.exists() and self.running():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
