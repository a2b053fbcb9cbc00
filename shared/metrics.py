"""Prometheus metrics: every metric imagesvc exports is defined here, and only here.

Services observe through the small functions below, called at existing seams (the gateway's
request middleware, its command publish, the command consumer's outcome, the event consumer's
commit, the sweeper, the transfers); they never build metrics or labels themselves. Every label
value is bounded: routes are the route templates (never raw paths), commands and events are the
known types (else ``other``), HTTP methods the standard ones (else ``other``), codes are HTTP
status codes.

Exposition (``exposition``) is the Prometheus text format. A process answers with its own
metrics, except a gateway run with ``--workers N > 1``: its parent creates a fresh directory
(``multiprocess_directory``) named by ``PROMETHEUS_MULTIPROC_DIR`` before the workers start,
every worker writes its values there (prometheus_client's multiprocess mode), and whichever
worker answers a scrape sums them all. What is computed at scrape time from the database or the
broker (outbox lag, leases, dead-letter depths: ``SystemMetrics``) is computed by the answering
process alone and appended, never written to that directory, so it is never summed over workers.

``IMAGESVC_METRICS=off`` (``configure``) turns every observation into a no-op (``/metrics`` is
then not served).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile
import threading
import time
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from imagesvc.shared.contracts import COMMAND_TYPES, EVENT_TYPES
from imagesvc.shared.logging import get_logger

log = get_logger(__name__)

#: The environment variable prometheus_client's multiprocess mode reads (at import).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: How long a round of dead-letter queue depths is reused (each is a passive declare).
DEAD_LETTER_CACHE_SECONDS = 5.0
CONTENT_TYPE = CONTENT_TYPE_LATEST

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
#: The route label of a request no route matched (a 404 by path).
UNMATCHED = "unmatched"
OTHER = "other"

_enabled = True


def configure(*, enabled: bool) -> None:
    """Turn observations on or off for this process (``IMAGESVC_METRICS``)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled


# --- HTTP (gateway) ------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "imagesvc_http_requests", "HTTP requests answered by the gateway. Labels: route (the route template, "
    "e.g. /api/image/{name}, or 'unmatched'), method, status (the HTTP status sent; 499: the client hung up).",
    ["route", "method", "status"])
HTTP_DURATION = Histogram(
    "imagesvc_http_request_duration_seconds", "Time from a request's arrival at the gateway's application to "
    "its answer, in seconds (what request.handled logs as duration_ms). Labels: route, method.",
    ["route", "method"], buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 7.5, 10, 30))
HTTP_THROTTLED = Counter(
    "imagesvc_http_throttled", "Requests refused 429 by a throttle (IMAGESVC_THROTTLE, the login throttle, the "
    "password-hashing queue). Labels: route.", ["route"])
HTTP_IN_PROGRESS = Gauge(
    "imagesvc_http_requests_in_progress", "Requests being answered now (summed over the live gateway workers).",
    multiprocess_mode="livesum")

# --- commands ------------------------------------------------------------------------------------

COMMANDS_PUBLISHED = Counter(
    "imagesvc_commands_published", "Commands the gateway published and the broker confirmed. Labels: command "
    "(the command type, e.g. image.import).", ["command"])
COMMANDS_HANDLED = Counter(
    "imagesvc_commands_handled", "Commands that got their outcome from a consumer (or node agent) in this process. "
    "Labels: command; outcome: succeeded (code < 400), refused (4xx), failed (5xx, including the retries given up "
    "and the crash loops); code: the task's HTTP code.", ["command", "outcome", "code"])
COMMAND_SECONDS = Histogram(
    "imagesvc_command_handling_seconds", "Time one delivery of a command spent in its handler until its outcome, "
    "in seconds (an import includes its download). Labels: command, outcome.", ["command", "outcome"],
    buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))

# --- events, sweeper, transfers ---------------------------------------------------------------

PROJECTOR_LAG = Histogram(
    "imagesvc_projector_lag_seconds", "Time from an event's creation in its producing transaction (its envelope's "
    "time) to the commit that applied it to the read model, in seconds (inventory events: from their source's "
    "clock). Labels: event (the event type).", ["event"],
    buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300))
SWEEPER_ACTIONS = Counter(
    "imagesvc_sweeper_actions", "What the lease sweeper did to an expired lease. Labels: action: task_failed (the "
    "task ended 500 and its image undone), removal_finished (a deletion finished for its dead worker), "
    "stale_lock_removed (a lease nothing waited on removed).", ["action"])
IMPORTED_BYTES = Counter(
    "imagesvc_imported_bytes", "Bytes of image files downloaded into the image store by the importer (counted as "
    "they arrive, whether or not the import then succeeds).")
EXPORTED_BYTES = Counter(
    "imagesvc_exported_bytes", "Bytes of VM disk snapshots read and exported into the image store by the node "
    "agent (before compression; counted as they are read).")


# --- observing ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _template(path: str) -> str:
    """``/api/image/{name:imagename}/`` -> ``/api/image/{name}``: both forms of a route are one label."""
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path).rstrip("/") or "/"


def route_label(scope: Mapping) -> str:
    """The template of the route that matched the ASGI ``scope`` (set by Starlette's router),
    or ``unmatched``; never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return _template(path) if isinstance(path, str) else UNMATCHED


#: The labelled children of each (route, method, status) seen: ``labels()`` costs a lock and a
#: few tuples per call, a dict look-up does not (the keys are bounded).
_request_children: dict[tuple[str, str, int], tuple] = {}


def observe_request(route: str, method: str | None, status: int, seconds: float) -> None:
    if not _enabled:
        return
    key = (route, method if method in _METHODS else OTHER, status)
    children = _request_children.get(key)
    if children is None:
        children = _request_children[key] = (
            HTTP_REQUESTS.labels(key[0], key[1], str(status)), HTTP_DURATION.labels(key[0], key[1]),
            HTTP_THROTTLED.labels(route) if status == 429 else None)
    requests, duration, throttled = children
    requests.inc()
    duration.observe(seconds)
    if throttled is not None:
        throttled.inc()


def request_started() -> None:
    """A request entered the gateway's application (pair with ``request_finished``)."""
    if _enabled:
        HTTP_IN_PROGRESS.inc()


def request_finished(route: str, method: str | None, status: int, seconds: float) -> None:
    """The request ``request_started`` counted was answered (or its client left)."""
    if _enabled:
        HTTP_IN_PROGRESS.dec()
        observe_request(route, method, status, seconds)


def _command(command: str | None) -> str:
    return command if command in COMMAND_TYPES else OTHER


def outcome_of(http_code: int) -> str:
    return "succeeded" if http_code < 400 else "refused" if http_code < 500 else "failed"


def command_published(command: str) -> None:
    if _enabled:
        COMMANDS_PUBLISHED.labels(_command(command)).inc()


def command_outcome(command: str | None, http_code: int, seconds: float | None = None) -> None:
    """A command's task got its outcome here (``seconds``: its handler's time, when it ran)."""
    if not _enabled:
        return
    command, outcome = _command(command), outcome_of(http_code)
    COMMANDS_HANDLED.labels(command, outcome, str(http_code)).inc()
    if seconds is not None:
        COMMAND_SECONDS.labels(command, outcome).observe(seconds)


def _parse_time(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def events_applied(applied: Iterable[tuple[str, str]], *, now: datetime | None = None) -> None:
    """Events (type, envelope time) just committed to the read model."""
    if not _enabled:
        return
    now = now or datetime.now(timezone.utc)
    for event_type, at in applied:
        moment = _parse_time(at)
        if moment is not None:
            PROJECTOR_LAG.labels(event_type if event_type in EVENT_TYPES else OTHER).observe(
                max(0.0, (now - moment).total_seconds()))


def sweeper_action(action: str) -> None:
    if _enabled:
        SWEEPER_ACTIONS.labels(action).inc()


def bytes_imported(count: int) -> None:
    if _enabled:
        IMPORTED_BYTES.inc(count)


def bytes_exported(count: int) -> None:
    if _enabled:
        EXPORTED_BYTES.inc(count)


# --- scrape-time gauges ---------------------------------------------------------------------------


class DeadLetterDepths:
    """The depth of each dead-letter queue on RabbitMQ, by a passive ``queue_declare`` on one
    connection of its own, refreshed at most every ``cache_seconds``. ``names()`` says which
    queues; a queue that does not exist (a node whose agent never ran) is left out."""

    def __init__(self, connect: Callable, names: Callable[[], list[str]], *,
                 cache_seconds: float = DEAD_LETTER_CACHE_SECONDS, timeout: float = 5.0):
        self._connect = connect
        self._names = names
        self._cache_seconds = cache_seconds
        self._timeout = timeout
        self._lock = threading.Lock()
        self._connection = None
        self._channel = None
        self._at = float("-inf")
        self._last: dict[str, int] = {}

    def depths(self) -> dict[str, int]:
        with self._lock:
            if time.monotonic() - self._at < self._cache_seconds:
                return self._last
            try:
                self._last = self._probe()
            except Exception:
                self._last = {}  # no stale depths: the gauge is left out until the broker answers
                self._drop()
                raise
            finally:
                self._at = time.monotonic()  # a broker that is away is asked again only after the cache time
            return self._last

    def _probe(self) -> dict[str, int]:
        from amqp.exceptions import NotFound

        from imagesvc.shared.broker.connection import ensure_connected

        if self._connection is None:
            self._connection = self._connect()
            ensure_connected(self._connection, timeout=self._timeout)
            self._channel = self._connection.channel()
        found: dict[str, int] = {}
        for name in self._names():
            try:
                found[name] = self._channel.queue_declare(queue=name, passive=True).message_count
            except NotFound:
                self._channel = self._connection.channel()  # a failed passive declare closes the channel
        return found

    def _drop(self) -> None:
        from imagesvc.shared.broker.connection import discard

        connection, self._connection, self._channel = self._connection, None, None
        discard(connection)

    def close(self) -> None:
        with self._lock:
            self._drop()


class SystemMetrics:
    """The gauges computed at scrape time by the answering process (a prometheus_client
    collector in a registry of its own). Each source is optional; one that fails is left out of
    that scrape (and logged), the others still answer."""

    def __init__(self, *, engine=None, dead_letters: DeadLetterDepths | None = None):
        self._engine = engine
        self._dead_letters = dead_letters
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def collect(self):
        if self._engine is not None:
            yield from self._guarded("database", self._database)
        if self._dead_letters is not None:
            yield from self._guarded("dead_letters", self._dead_letter_depths)

    @staticmethod
    def _guarded(source: str, collect: Callable[[], list]) -> list:
        try:
            return collect()
        except Exception as exc:  # noqa: BLE001 - a scrape answers with what it could compute
            log.warning("metrics.source_failed", source=source, error=repr(exc))
            return []

    def _database(self) -> list:
        from imagesvc.shared.db import events, locks
        from imagesvc.shared.db.engine import read_transaction
        from imagesvc.shared.db.models import utcnow

        with read_transaction(self._engine) as conn:
            oldest = events.oldest_unpublished_at(conn)
            now = utcnow()
            held, expired = locks.count_by_state(conn, now=now)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=timezone.utc)
        lag = GaugeMetricFamily(
            "imagesvc_outbox_oldest_unpublished_age_seconds", "Age of the oldest event stored and not yet published "
            "by an outbox relay, in seconds (0: none waits). Computed at scrape time from the database.")
        lag.add_metric([], max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0)
        leases = GaugeMetricFamily(
            "imagesvc_leases", "Lease locks in the locks table. Labels: state: active (lease running) or expired "
            "(its holder stopped renewing it; the sweeper ends it). Computed at scrape time.", labels=["state"])
        leases.add_metric(["active"], held)
        leases.add_metric(["expired"], expired)
        return [lag, leases]

    def _dead_letter_depths(self) -> list:
        assert self._dead_letters is not None
        depth = GaugeMetricFamily(
            "imagesvc_dead_letter_queue_depth", "Messages in each dead-letter queue (RabbitMQ only; refreshed at most "
            f"every {DEAD_LETTER_CACHE_SECONDS:g} s). Labels: queue.", labels=["queue"])
        for name, count in sorted(self._dead_letters.depths().items()):
            depth.add_metric([name], count)
        return [depth]


# --- exposition and multiprocess mode ---------------------------------------------------------------


def exposition(system: SystemMetrics | None = None) -> bytes:
    """This process's metrics (all the gateway workers' in multiprocess mode) in the Prometheus
    text format, then ``system``'s scrape-time gauges."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
    else:
        registry = REGISTRY
    body = generate_latest(registry)
    if system is not None:
        body += generate_latest(system.registry)
    return body


@contextlib.contextmanager
def multiprocess_directory() -> Iterator[str]:
    """A fresh directory for prometheus_client's multiprocess mode, named in this process's
    environment (so worker processes started inside inherit it), removed at exit."""
    directory = tempfile.mkdtemp(prefix="imagesvc-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(directory, ignore_errors=True)


def forget_dead_processes() -> None:
    """In multiprocess mode: drop the live gauges of worker processes that died (a restarted
    worker's predecessor), which would otherwise be summed for ever. Their counters stay."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory or not os.path.isdir(directory):
        return
    pids = set()
    for name in os.listdir(directory):
        match = re.fullmatch(r"gauge_live\w*?_(\d+)\.db", name)
        if match:
            pids.add(int(match.group(1)))
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, directory)
        except PermissionError:
            pass
