"""The raw pipeline baseline: the infrastructure work of one image update, and nothing else.

Per command::

    client --publish+confirm--> [commands queue] --> command consumer (separate process):
        ONE PostgreSQL transaction: upsert the image row + insert its outbox row, commit
        --publish+confirm--> [events queue] --> ack the command
    [events queue] --> event consumer (threads of the client process):
        upsert the read-model row, commit --> signal the waiting client (threading.Event) --> ack

No imagesvc code is used on the message path: plain kombu (publisher confirms, heartbeats on)
and plain psycopg 3, with a fresh database and tables made with plain SQL, and queues of its own
(deleted at the end). The queues are durable; by default they are quorum queues like imagesvc's
work queues (``queue_type="classic"`` gives classic durable queues).

It is meant to be efficient, not a straw man: the command consumer process runs several threads,
each owning its kombu connection (one channel, consuming and publishing, prefetch N) and its own
PostgreSQL connection; deliveries that arrive while a thread waits for a confirm are buffered and
handled in order by the same thread (no re-entrancy, no hand-off between threads).

Used by ``bench/pipeline.py``; ``python bench/raw_pipeline.py`` runs it alone, and
``python bench/raw_pipeline.py command-consumer ...`` is the consumer process it starts.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import orjson
import psycopg
from kombu import Connection, Consumer, Exchange, Producer, Queue

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HEARTBEAT = 15

SCHEMA = """
CREATE TABLE images (
    uuid text PRIMARY KEY,
    name text NOT NULL UNIQUE,
    "desc" text NOT NULL,
    version integer NOT NULL,
    changed timestamptz NOT NULL
);
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    message_id text NOT NULL UNIQUE,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE TABLE rm_images (
    uuid text PRIMARY KEY,
    name text NOT NULL,
    doc text NOT NULL,
    version integer NOT NULL
);
"""

UPSERT_IMAGE = """
INSERT INTO images (uuid, name, "desc", version, changed) VALUES (%s, %s, %s, 1, now())
ON CONFLICT (uuid) DO UPDATE SET "desc" = EXCLUDED."desc", version = images.version + 1, changed = now()
RETURNING version, changed
"""
INSERT_OUTBOX = "INSERT INTO outbox (message_id, body) VALUES (%s, %s) RETURNING id"
UPSERT_READ_MODEL = """
INSERT INTO rm_images (uuid, name, doc, version) VALUES (%s, %s, %s, %s)
ON CONFLICT (uuid) DO UPDATE SET name = EXCLUDED.name, doc = EXCLUDED.doc, version = EXCLUDED.version
WHERE rm_images.version < EXCLUDED.version
"""


def libpq_dsn(url: str) -> str:
    """A SQLAlchemy ``postgresql+psycopg://`` URL as a libpq connection string."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def broker_connection(broker_url: str, name: str) -> Connection:
    return Connection(broker_url, heartbeat=HEARTBEAT, connect_timeout=5,
                      transport_options={"confirm_publish": True,
                                         "client_properties": {"connection_name": f"bench-raw-{name}"}})


def queue(name: str, queue_type: str) -> Queue:
    arguments = {"x-queue-type": "quorum"} if queue_type == "quorum" else None
    return Queue(name, exchange=Exchange(""), routing_key=name, durable=True, queue_arguments=arguments)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(round(pct / 100.0 * len(ordered) + 0.5))))
    return ordered[rank - 1]


# --- a consuming thread: one kombu connection, one PostgreSQL connection ------------------------


class ConsumingThread(threading.Thread):
    """Consumes ``queue_name`` with its own broker and database connections.

    ``handle(message_body, conn, producer)`` does the work; the message is acked after it returns.
    """

    def __init__(self, *, name: str, broker_url: str, dsn: str, queue_name: str, prefetch: int,
                 handle: Callable[[dict, psycopg.Connection, Producer], None], stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self.broker_url = broker_url
        self.dsn = dsn
        self.queue_name = queue_name
        self.prefetch = prefetch
        self.handle = handle
        self.stop_event = stop
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.handled = 0

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the owner
            self.error = exc
            self.ready.set()

    def _run(self) -> None:
        pending: collections.deque = collections.deque()
        with psycopg.connect(self.dsn) as db, broker_connection(self.broker_url, self.name) as conn:
            conn.ensure_connection(max_retries=3)
            channel = conn.channel()
            producer = Producer(channel)
            consumer = Consumer(channel, queues=[Queue(self.queue_name, no_declare=True)],
                                on_message=pending.append, prefetch_count=self.prefetch, accept=["application/json"])
            consumer.consume()
            self.ready.set()
            while not self.stop_event.is_set():
                if not pending:
                    try:
                        conn.drain_events(timeout=0.25)
                    except socket.timeout:
                        pass
                # A publish below waits for its confirm; deliveries read meanwhile land in ``pending``.
                while pending:
                    message = pending.popleft()
                    self.handle(orjson.loads(message.body), db, producer)
                    message.ack()
                    self.handled += 1
                conn.heartbeat_check()
            try:
                consumer.cancel()
            except Exception:  # noqa: BLE001
                pass


def handle_command(events_queue: str) -> Callable[[dict, psycopg.Connection, Producer], None]:
    def handle(command: dict, db: psycopg.Connection, producer: Producer) -> None:
        event_id = str(uuid.uuid4())
        with db.transaction():
            version, changed = db.execute(UPSERT_IMAGE, (command["uuid"], command["name"], command["desc"])).fetchone()
            event = {
                "id": event_id, "type": "image.updated", "command_id": command["id"], "version": version,
                "image": {"uuid": command["uuid"], "name": command["name"], "desc": command["desc"],
                          "changed": changed.isoformat()},
            }
            body = orjson.dumps(event)
            db.execute(INSERT_OUTBOX, (event_id, body.decode()))
        producer.publish(body, exchange="", routing_key=events_queue, content_type="application/json",
                         content_encoding="utf-8", delivery_mode=2, message_id=event_id, retry=False)

    return handle


def handle_event(completed: Callable[[str], None]) -> Callable[[dict, psycopg.Connection, Producer], None]:
    def handle(event: dict, db: psycopg.Connection, _producer: Producer) -> None:
        image = event["image"]
        with db.transaction():
            db.execute(UPSERT_READ_MODEL, (image["uuid"], image["name"], orjson.dumps(image).decode(),
                                           event["version"]))
        completed(event["command_id"])

    return handle


def run_command_consumer(args: argparse.Namespace) -> int:
    """The command consumer process: ``--threads`` consuming threads until SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threads = [
        ConsumingThread(name=f"command-{i}", broker_url=args.broker_url, dsn=args.dsn, queue_name=args.commands,
                        prefetch=args.prefetch, handle=handle_command(args.events), stop=stop)
        for i in range(args.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.ready.wait(30)
    errors = [t.error for t in threads if t.error]
    if errors:
        print(f"error: {errors[0]!r}", flush=True)
        stop.set()
        return 1
    print("ready", flush=True)
    while not stop.is_set():
        stop.wait(0.5)
        dead = [t for t in threads if not t.is_alive()]
        if dead:
            print(f"error: thread {dead[0].name} died: {dead[0].error!r}", flush=True)
            stop.set()
            return 1
    for thread in threads:
        thread.join(5)
    return 0


# --- the baseline as a whole ---------------------------------------------------------------------


class RawPipeline:
    def __init__(self, broker_url: str, postgres_admin_url: str, *, queue_type: str = "quorum",
                 command_threads: int = 8, event_threads: int = 8, prefetch: int = 4):
        self.broker_url = broker_url
        self.admin_url = postgres_admin_url
        self.queue_type = queue_type
        self.command_threads = command_threads
        self.event_threads = event_threads
        self.prefetch = prefetch
        tag = uuid.uuid4().hex[:8]
        self.commands = f"bench.raw.{tag}.commands"
        self.events = f"bench.raw.{tag}.events"
        self.database_url: str | None = None
        self._process: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._threads: list[ConsumingThread] = []
        self._waiting: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    # lifecycle

    def start(self) -> None:
        from tests.support.services import create_database

        self.database_url = create_database(self.admin_url)
        dsn = libpq_dsn(self.database_url)
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute(SCHEMA)
        with broker_connection(self.broker_url, "setup") as conn:
            channel = conn.channel()
            for name in (self.commands, self.events):
                queue(name, self.queue_type)(channel).declare()
        self._process = subprocess.Popen(
            [sys.executable, str(HERE / "raw_pipeline.py"), "command-consumer", "--broker-url", self.broker_url,
             "--dsn", dsn, "--commands", self.commands, "--events", self.events, "--threads",
             str(self.command_threads), "--prefetch", str(self.prefetch)],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self._process.stdout.readline().strip()  # type: ignore[union-attr]
        if line != "ready":
            raise RuntimeError(f"raw command consumer did not start: {line!r}")
        self._threads = [
            ConsumingThread(name=f"event-{i}", broker_url=self.broker_url, dsn=dsn, queue_name=self.events,
                            prefetch=self.prefetch, handle=handle_event(self._completed), stop=self._stop)
            for i in range(self.event_threads)
        ]
        for thread in self._threads:
            thread.start()
        for thread in self._threads:
            thread.ready.wait(30)
            if thread.error:
                raise RuntimeError(f"raw event consumer failed: {thread.error!r}")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        if self._process is not None and self._process.poll() is None:
            try:
                os.killpg(self._process.pid, signal.SIGTERM)
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(5)
            except ProcessLookupError:
                pass
        try:
            with Connection(self.broker_url, connect_timeout=5) as conn:
                channel = conn.channel()
                for name in (self.commands, self.events):
                    try:
                        channel.queue_delete(name)
                    except Exception:  # noqa: BLE001
                        channel = conn.channel()
        finally:
            if self.database_url:
                from tests.support.services import drop_database

                drop_database(self.admin_url, self.database_url)
                self.database_url = None

    # completion signalling

    def _completed(self, command_id: str) -> None:
        with self._lock:
            event = self._waiting.get(command_id)
        if event is not None:
            event.set()

    def _check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            said = (self._process.stdout.read() if self._process.stdout else "").strip()[-500:]
            raise RuntimeError(f"raw command consumer process exited ({self._process.returncode}): {said}")
        dead = [t for t in self._threads if not t.is_alive()]
        if dead:
            raise RuntimeError(f"raw event consumer {dead[0].name} died: {dead[0].error!r}")

    # one client

    def _client(self, index: int, window: dict[str, float], start: threading.Barrier, latencies: list[float],
                errors: list[str], total: list[int]) -> None:
        # The same image per client in every round (like imagesvc's clients: updates, not inserts).
        image_uuid, name = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.commands}/{index}")), f"raw-{index}"
        with broker_connection(self.broker_url, f"client-{index}") as conn:
            conn.ensure_connection(max_retries=3)
            producer = Producer(conn.channel())
            start.wait()  # every client connected; the barrier's action fixed the window
            window_start, deadline = window["start"], window["end"]
            n = 0
            while time.monotonic() < deadline:
                n += 1
                command_id = str(uuid.uuid4())
                body = orjson.dumps({"id": command_id, "uuid": image_uuid, "name": name, "desc": f"d{index}-{n}"})
                done = threading.Event()
                with self._lock:
                    self._waiting[command_id] = done
                sent = time.monotonic()
                try:
                    producer.publish(body, exchange="", routing_key=self.commands, content_type="application/json",
                                     content_encoding="utf-8", delivery_mode=2, message_id=command_id, retry=False)
                    if not done.wait(10):
                        errors.append(f"command {command_id} not completed within 10 s")
                        continue
                finally:
                    with self._lock:
                        self._waiting.pop(command_id, None)
                finished = time.monotonic()
                total.append(1)
                if window_start <= finished <= deadline:
                    latencies.append(finished - sent)

    def throughput(self, *, clients: int = 32, duration: float = 15.0, warmup: float = 1.0,
                   on_start: Callable[[], None] = lambda: None) -> dict:
        """``clients`` threads publishing and waiting in a loop; completions counted after ``warmup``.

        ``on_start`` runs once every client is connected, just before they start (e.g. a CPU meter);
        ``completed_total`` counts the warm-up's completions too (for per-command CPU figures).
        """
        self._check_alive()
        latencies: list[float] = []
        errors: list[str] = []
        window: dict[str, float] = {}
        total: list[int] = []

        def fix_window() -> None:
            on_start()
            now = time.monotonic()
            window.update(start=now + warmup, end=now + warmup + duration)

        barrier = threading.Barrier(clients, action=fix_window)
        threads = [threading.Thread(target=self._client, args=(i, window, barrier, latencies, errors, total),
                                    name=f"raw-client-{i}", daemon=True) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(duration + warmup + 60)
        self._check_alive()
        return {"clients": clients, "duration_s": duration, "completed": len(latencies), "completed_total": len(total),
                "per_s": len(latencies) / duration, "p50_ms": percentile(latencies, 50) * 1000,
                "p95_ms": percentile(latencies, 95) * 1000, "errors": len(errors), "error_samples": errors[:5]}

    def round_trip(self, *, count: int = 200, warmup: int = 10) -> dict:
        """One client, sequential commands: the latency of one command through the whole pipeline."""
        self._check_alive()
        latencies: list[float] = []
        errors: list[str] = []
        image_uuid = str(uuid.uuid4())
        with broker_connection(self.broker_url, "client-single") as conn:
            conn.ensure_connection(max_retries=3)
            producer = Producer(conn.channel())
            for n in range(count + warmup):
                command_id = str(uuid.uuid4())
                body = orjson.dumps({"id": command_id, "uuid": image_uuid, "name": "raw-single", "desc": f"s{n}"})
                done = threading.Event()
                with self._lock:
                    self._waiting[command_id] = done
                sent = time.monotonic()
                producer.publish(body, exchange="", routing_key=self.commands, content_type="application/json",
                                 content_encoding="utf-8", delivery_mode=2, message_id=command_id, retry=False)
                ok = done.wait(10)
                finished = time.monotonic()
                with self._lock:
                    self._waiting.pop(command_id, None)
                if not ok:
                    errors.append(f"command {command_id} not completed within 10 s")
                elif n >= warmup:
                    latencies.append(finished - sent)
        return {"count": len(latencies), "p50_ms": percentile(latencies, 50) * 1000,
                "p95_ms": percentile(latencies, 95) * 1000, "errors": len(errors)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    consumer = commands.add_parser("command-consumer", help="(internal) the command consumer process")
    consumer.add_argument("--broker-url", required=True)
    consumer.add_argument("--dsn", required=True)
    consumer.add_argument("--commands", required=True)
    consumer.add_argument("--events", required=True)
    consumer.add_argument("--threads", type=int, default=8)
    consumer.add_argument("--prefetch", type=int, default=4)
    alone = commands.add_parser("run", help="run the baseline alone and print its figures")
    alone.add_argument("--broker-url", default="amqp://guest:guest@127.0.0.1:5672//")
    alone.add_argument("--postgres-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    alone.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    alone.add_argument("--duration", type=float, default=15.0)
    alone.add_argument("--clients", type=int, default=32)
    alone.add_argument("--event-threads", type=int, default=8)
    alone.add_argument("--command-threads", type=int, default=8)
    args = parser.parse_args(argv)
    if args.command == "command-consumer":
        return run_command_consumer(args)
    if args.command != "run":
        parser.print_help()
        return 2
    raw = RawPipeline(args.broker_url, args.postgres_admin_url, queue_type=args.queue_type,
                      command_threads=args.command_threads, event_threads=args.event_threads)
    raw.start()
    try:
        print("throughput", raw.throughput(clients=args.clients, duration=args.duration))
        print("round trip", raw.round_trip())
    finally:
        raw.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
