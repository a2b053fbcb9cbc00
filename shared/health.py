"""Liveness and readiness of a process, in the conventions of container orchestrators.

``/healthz`` answers 200 while the process can answer at all (alive: a restart would not help
otherwise). ``/readyz`` answers 200 only while the process can do its work now, 503 otherwise,
with one line per dependency: the database (reachable, and its schema at the migrations' head),
the broker, the image store, and for a consumer its consume loop. A check is a callable that
returns None when all is well or a sentence saying what is wrong; it may also raise, which counts
as failing with the exception's text. Results are cached for a second, so a probe storm costs one
round of checks per second, and each check runs with its own bounded timeout (the callables'
business: they are given the settings' timeouts).

The HTTP apps (gateway, image server) serve these paths themselves; a consumer or node agent,
which has no HTTP server, serves them on ``IMAGESVC_HEALTH_PORT`` with ``serve_in_thread``, and
its Prometheus metrics there too (``/metrics``).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Mapping

import orjson

from imagesvc.shared.logging import get_logger

log = get_logger(__name__)

Check = Callable[[], "str | None"]

#: How long a round of checks is reused.
CACHE_SECONDS = 1.0


class Readiness:
    """The named ``checks`` of one process; thread-safe."""

    def __init__(self, checks: Mapping[str, Check], *, cache_seconds: float = CACHE_SECONDS, details: bool = True):
        self._checks = dict(checks)
        # A public port (the gateway's, the image server's) says only which check fails: the
        # sentences may name hosts, users and paths; they go to the log.
        self._details = details
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._last: tuple[bool, dict] = (False, {})

    def report(self) -> tuple[bool, dict]:
        """(ready, body): the body is ``{"status": "ready"|"not ready", "checks": {name: "ok" |
        sentence}}`` (``"failing"`` instead of the sentence without ``details``)."""
        with self._lock:
            if time.monotonic() - self._at < self._cache_seconds:
                return self._last
            results = {}
            for name, check in self._checks.items():
                try:
                    problem = check()
                except Exception as exc:  # noqa: BLE001 - a failing dependency is an answer, not a crash
                    problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                results[name] = problem or "ok"
            ready = all(result == "ok" for result in results.values())
            shown = results if self._details else {name: "ok" if result == "ok" else "failing"
                                                  for name, result in results.items()}
            self._last = (ready, {"status": "ready" if ready else "not ready", "checks": shown})
            self._at = time.monotonic()
            if not ready:
                log.warning("health.not_ready", checks=results)
            return self._last


ALIVE = {"status": "alive"}


def database_check(engine, head: str) -> Check:
    """The database answers and its schema is at ``head`` (else: which revision it is at)."""
    from imagesvc.shared.db.migrate import schema_problem

    return lambda: schema_problem(engine, head)


def broker_check(connect: Callable, timeout: float) -> Check:
    """A new broker connection opens within ``timeout`` seconds (to any node of a cluster's URL
    list: the check passes while imagesvc can still fail over to one)."""
    from imagesvc.shared.broker.connection import discard, ensure_connected

    def check() -> str | None:
        connection = connect()
        try:
            ensure_connected(connection, timeout=timeout)
        finally:
            discard(connection)
        return None

    return check


def store_check(store) -> Check:
    """The image store can be read and written."""
    def check() -> str | None:
        store.check()
        return None

    return check


def flag_check(flag: threading.Event, what: str) -> Check:
    """``flag`` is set (e.g. a consume loop's ``ready``); else ``what`` is the problem."""
    return lambda: None if flag.is_set() else what


def serve_in_thread(readiness: Readiness, host: str, port: int, *,
                    metrics: Callable[[], tuple[bytes, str]] | None = None) -> ThreadingHTTPServer:
    """Serve ``/healthz`` and ``/readyz`` for ``readiness`` on ``host:port`` in a daemon thread,
    and ``/metrics`` when ``metrics`` is given (it returns the body and its content type);
    returns the server (``shutdown()`` stops it). Raises OSError when the port cannot be bound."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/healthz":
                self._answer(200, ALIVE)
            elif path == "/readyz":
                ready, body = readiness.report()
                self._answer(200 if ready else 503, body)
            elif path == "/metrics" and metrics is not None:
                text, content_type = metrics()
                self._send(200, text, content_type)
            else:
                self._answer(404, {"detail": "Not found."})

        def _answer(self, status: int, body: dict) -> None:
            self._send(status, orjson.dumps(body), "application/json")

        def _send(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args) -> None:  # probes every few seconds: not worth a line each
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    # A short poll: ``shutdown`` waits for the loop's next look (0.5 s by default) as a process stops.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="health", daemon=True).start()
    return server
