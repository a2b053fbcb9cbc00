"""The consumer runner: the one place that decides ack, retry and dead-letter.

Threads: one I/O thread owns the broker connection (consume, ack, heartbeats, reconnects);
handlers run on a pool of worker threads, so a slow handler never starves heartbeats
(celery/kombu#806). Workers hand their verdict back to the I/O thread, which alone touches the
channel (kombu connections are not thread-safe), and wake it through a pipe that it watches
together with the broker socket, so an ack never waits for a read timeout. A handler that
offers ``handle_batch`` gets the deliveries that queued up while its workers were busy in one
call (the projector commits them in one transaction).

Policy, for each delivery, by what the handler returns or raises:

==========================  ===============================================================
``Disposition.ack()``        ack.
``Disposition.dead_letter``  publish the message to ``<queue>.dlq`` (confirmed), then ack.
``Disposition.retry``        after a delay (``outage_backoff`` for ``Transient``: the
/ any exception              database is unreachable), republish a copy to the same queue with
                             ``x-imagesvc-attempt`` + 1 (confirmed), then ack; once
                             ``max_attempts`` is reached, dead-letter instead and tell the
                             handler (``on_give_up``) so the task still ends.
``Disposition.defer``        not handled now (its user is at a cap): after its delay, republish
                             a copy to the back of the same queue with the same attempt count
                             (confirmed), then ack; never given up for it.
==========================  ===============================================================

A delivery that arrives with more than ``max_attempts`` deliveries behind it (the broker's
``x-delivery-count``: earlier handlers died with it, e.g. a crash loop) is not handled again:
the handler's ``on_exhausted`` acks it if it was handled already, else it is given up as above.

Never ``requeue=True`` (a hot loop) and never ack a failure silently. Retries and dead letters
are done by this code, not by broker features, so the in-memory transport (which has neither
TTL nor dead-lettering) runs exactly the same path; on RabbitMQ the quorum queues' delivery
limit is a second net for messages whose handler kills the process.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import os
from queue import Empty, SimpleQueue
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import structlog
from kombu import Connection, Consumer
from kombu import Queue as KombuQueue

from imagesvc.shared.broker.connection import access_refused, amqp_transport, discard, ensure_connected
from imagesvc.shared.broker.topology import Topology
from imagesvc.shared.contracts.routing import Publishers
from imagesvc.shared.errors import Nacked, PublishFailed, Transient
from imagesvc.shared.logging import get_logger

log = get_logger(__name__)

ATTEMPT_HEADER = "x-imagesvc-attempt"
#: Longest pause between two attempts to reach the broker again.
RECONNECT_DELAY_MAX = 2.0
#: The longest wait between attempts while the broker refuses the user (it will not change by itself).
ACCESS_REFUSED_DELAY_MAX = 30.0
#: Without a socket to watch (memory://, TLS): the read timeout while handlers run.
BUSY_POLL_SECONDS = 0.002
DEATH_REASON_HEADER = "x-imagesvc-death-reason"
ORIGINAL_QUEUE_HEADER = "x-imagesvc-original-queue"
#: On a copy that imagesvc republished (a retry, a dead letter): who published the original.
PUBLISHED_BY_HEADER = "x-imagesvc-published-by"
#: On such a copy: the routing key the original was published with.
ROUTING_KEY_HEADER = "x-imagesvc-routing-key"
#: On a deferred copy: how many times the message was deferred so far.
DEFERRALS_HEADER = "x-imagesvc-deferrals"
#: How much of a dead letter that its full queue refused is logged.
DROPPED_BODY_LOGGED = 2048


@dataclass(frozen=True)
class BrokerIdentity:
    """Who publishes what, as RabbitMQ vouches for it: it refuses a message whose ``user_id``
    property is not the publishing connection's own user.

    ``own``: the broker user this process connects as (its republished copies carry it);
    ``services``: the broker users of imagesvc's own processes; ``inventory``: per inventory event
    family (``node``, ``vm``), the other broker users who may publish it. A copy published by a
    service carries the original publisher in ``PUBLISHED_BY_HEADER`` and the original routing key
    in ``ROUTING_KEY_HEADER``, which are believed only then.
    """

    own: str
    services: frozenset[str]
    inventory: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def publisher(self, user_id: str | None, headers: dict[str, Any]) -> str | None:
        """Who published the original message. A service's copy always names it (an empty name:
        nobody vouched for the original), so a copy never makes an untrusted original trusted."""
        if user_id in self.services and PUBLISHED_BY_HEADER in headers:
            return str(headers[PUBLISHED_BY_HEADER]) or None
        return user_id

    def publishers(self) -> Publishers:
        """Who may publish which events (``shared.contracts.routing``)."""
        return Publishers(self.services, self.inventory)


def original_routing_key(identity: BrokerIdentity | None, user_id: str | None, headers: dict[str, Any],
                         routing_key: str | None) -> str | None:
    """The routing key the original message was published with: a copy we republished (a retry, a
    replayed dead letter) reaches its queue by the queue's name and names the original key in a
    header, believed only from a service user (or where the broker vouches for nobody, memory://)."""
    if ROUTING_KEY_HEADER in headers and (identity is None or user_id in identity.services):
        return str(headers[ROUTING_KEY_HEADER])
    return routing_key


class Outcome(enum.Enum):
    ACK = "ack"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"
    DEFER = "defer"


@dataclass(frozen=True)
class Disposition:
    outcome: Outcome
    reason: str = ""
    #: For RETRY and DEFER: seconds to wait before the copy is republished (None: the runner's
    #: backoff).
    delay: float | None = None

    @classmethod
    def ack(cls, reason: str = "handled") -> "Disposition":
        return cls(Outcome.ACK, reason)

    @classmethod
    def retry(cls, reason: str, delay: float | None = None) -> "Disposition":
        return cls(Outcome.RETRY, reason, delay)

    @classmethod
    def defer(cls, reason: str, delay: float) -> "Disposition":
        """Not handled: handle it later, as if it had not been delivered yet (no attempt used)."""
        return cls(Outcome.DEFER, reason, delay)

    @classmethod
    def dead_letter(cls, reason: str) -> "Disposition":
        return cls(Outcome.DEAD_LETTER, reason)


@dataclass(frozen=True)
class Delivery:
    """What a handler gets of a delivery: the raw body and the AMQP metadata it may need."""

    body: bytes
    queue: str
    headers: dict[str, Any]
    message_id: str | None
    correlation_id: str | None
    message_type: str | None
    user_id: str | None
    redelivered: bool
    #: 1 for the first delivery; counts our retries and the broker's redeliveries.
    attempt: int
    #: The broker user that published the original message (``BrokerIdentity.publisher``), or
    #: None where the broker vouches for nobody (``memory://``).
    publisher: str | None = None
    #: The routing key the original message was published with (``original_routing_key``);
    #: None where unknown.
    routing_key: str | None = None
    #: How many times it was deferred before (``Disposition.defer``).
    deferrals: int = 0


class Handler(Protocol):
    def __call__(self, delivery: Delivery) -> Disposition: ...

    # Optional: ``handle_batch(deliveries) -> list[Disposition]`` (one verdict per delivery, same
    # order) and ``batch_size``; the runner then passes several ready deliveries at once.

    def on_give_up(self, delivery: Delivery, reason: str) -> None:
        """Called once a message is dead-lettered after its last attempt."""


@dataclass(order=True)
class _Scheduled:
    due: float
    seq: int
    epoch: int = field(compare=False)
    message: Any = field(compare=False)
    delivery: Delivery = field(compare=False)
    disposition: Disposition = field(compare=False)


class ConsumerRunner:
    """Consume one queue until ``stop()``; reconnect with backoff when the broker goes away."""

    def __init__(self, *, name: str, connect: Callable[[], Connection], queue: KombuQueue, topology: Topology,
                 handler: Handler, publisher, prefetch: int = 8, threads: int = 4, max_attempts: int = 5,
                 backoff: Sequence[float] = (0.5, 2.0, 5.0, 10.0), idle_timeout: float = 0.2,
                 drain_seconds: float = 10.0, identity: BrokerIdentity | None = None,
                 outage_backoff: Sequence[float] | None = None):
        self.name = name
        self._identity = identity
        self._connect = connect
        self._queue = queue
        self._topology = topology
        self._handler = handler
        self._publisher = publisher
        self._prefetch = prefetch
        self._max_attempts = max_attempts
        self._backoff = tuple(backoff)
        #: For ``Transient`` failures (the database unreachable): None means ``backoff``.
        self._outage_backoff = tuple(outage_backoff) if outage_backoff else None
        self._idle_timeout = idle_timeout
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"{name}-worker")
        self._threads = threads
        self._batch_size = max(1, int(getattr(handler, "batch_size", 1))) if hasattr(handler, "handle_batch") else 1
        self._waiting: list[tuple[Any, Delivery]] = []  # received, not yet given to a worker
        self._busy = 0  # worker calls in progress
        self._done: SimpleQueue[tuple[int, Any, Delivery, Disposition]] = SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._scheduled: list[_Scheduled] = []
        self._seq = itertools.count()
        self._epoch = 0
        self._stop = threading.Event()
        self._in_flight = 0
        self._drain_seconds = drain_seconds
        self.ready = threading.Event()
        self.handled = 0

    # --- lifecycle -----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Blocking consume loop; returns after ``stop()``. On stop, deliveries in progress get a
        bounded time to finish and be acked; anything left is requeued by the broker when the
        connection closes, so stopping never loses a message."""
        reconnect_delay = 0.5
        while not self._stop.is_set():
            connection = self._connect()
            try:
                ensure_connected(connection)
                self._consume(connection)
                reconnect_delay = 0.5
            except Exception as exc:  # noqa: BLE001 - the loop's job is to survive the broker
                if self._stop.is_set():
                    break
                self._epoch += 1  # results for the dead channel's deliveries are now void
                self._scheduled.clear()
                self._waiting.clear()
                self._in_flight = 0
                self.ready.clear()
                refused = access_refused(exc, connection)
                if refused:
                    # An operator must fix the credentials or permissions: say so plainly and
                    # knock again now and then, so the worker starts as soon as they are fixed.
                    reconnect_delay = max(reconnect_delay, RECONNECT_DELAY_MAX)
                    log.error("consumer.access_refused", consumer=self.name, problem=refused, retry_in=reconnect_delay)
                else:
                    log.warning("consumer.connection_lost", consumer=self.name, error=repr(exc),
                                retry_in=reconnect_delay)
                discard(connection)
                self._stop.wait(reconnect_delay)
                # Capped low: after a broker restart, work resumes within a couple of seconds.
                reconnect_delay = min(reconnect_delay * 2, ACCESS_REFUSED_DELAY_MAX if refused else RECONNECT_DELAY_MAX)
            else:
                discard(connection)
        self.ready.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _consume(self, connection: Connection) -> None:
        channel = connection.channel()
        self._topology.declare(channel)
        consumer = Consumer(channel, queues=[self._queue], on_message=self._on_message, prefetch_count=self._prefetch,
                            accept=["application/json"])
        consumer.consume()
        self.ready.set()
        log.info("consumer.ready", consumer=self.name, queue=self._queue.name)
        while not self._stop.is_set():
            self._turn(connection, channel)
        # Graceful stop on a healthy connection: no new deliveries, let the running ones finish.
        self.ready.clear()
        consumer.cancel()
        deadline = time.monotonic() + self._drain_seconds
        while self._in_flight > 0 and time.monotonic() < deadline:
            self._turn(connection, channel)

    def _turn(self, connection: Connection, channel) -> None:
        sock = _plain_socket(connection)
        if sock is None:
            # No socket to watch (memory://, TLS): nap briefly while verdicts may be pending.
            try:
                connection.drain_events(timeout=BUSY_POLL_SECONDS if self._in_flight else self._idle_wait())
            except socket.timeout:
                pass
        else:
            ready, _, _ = select.select([sock, self._wake_r], [], [], self._idle_wait())
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            while sock in ready:
                try:
                    connection.drain_events(timeout=0.05)
                except socket.timeout:
                    break
                ready, _, _ = select.select([sock], [], [], 0)
        # Raises once the broker's heartbeats stop coming: the connection is then replaced.
        connection.heartbeat_check()
        self._dispatch()
        self._settle(channel)

    # --- I/O thread ----------------------------------------------------------------------------

    def _idle_wait(self) -> float:
        """How long the I/O thread may wait for the broker: until the next due retry, at most
        the idle timeout (heartbeats are checked between waits)."""
        if self._scheduled:
            return max(0.001, min(self._idle_timeout, self._scheduled[0].due - time.monotonic()))
        return self._idle_timeout

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (the I/O thread is awake anyway) or closed (stopping)

    def _on_message(self, message) -> None:
        props = message.properties or {}
        headers = dict(message.headers or {})
        info = message.delivery_info or {}
        ours = _as_int(headers.get(ATTEMPT_HEADER), 1)
        broker = _as_int(headers.get("x-delivery-count"), 0)
        redelivered = bool(info.get("redelivered"))
        delivery = Delivery(
            body=message.body if isinstance(message.body, bytes) else str(message.body).encode(),
            queue=self._queue.name,
            headers=headers,
            message_id=props.get("message_id"),
            correlation_id=props.get("correlation_id"),
            message_type=props.get("type"),
            user_id=props.get("user_id"),
            publisher=self._identity.publisher(props.get("user_id"), headers) if self._identity else None,
            routing_key=original_routing_key(self._identity, props.get("user_id"), headers, info.get("routing_key")),
            redelivered=redelivered,
            attempt=ours + max(broker, 1 if redelivered and broker == 0 else 0),
            deferrals=_as_int(headers.get(DEFERRALS_HEADER), 0),
        )
        self._in_flight += 1
        self._waiting.append((message, delivery))

    def _dispatch(self) -> None:
        """Give waiting deliveries to free workers, in batches when the handler takes them."""
        while self._waiting and self._busy < self._threads:
            batch, self._waiting = self._waiting[: self._batch_size], self._waiting[self._batch_size:]
            self._busy += 1
            if len(batch) == 1:
                self._pool.submit(self._work, self._epoch, *batch[0])
            else:
                self._pool.submit(self._work_batch, self._epoch, batch)

    def _work_batch(self, epoch: int, batch: list[tuple[Any, Delivery]]) -> None:
        started = time.perf_counter()
        try:
            dispositions = self._handler.handle_batch([delivery for _, delivery in batch])  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - a failed batch is retried message by message
            log.exception("message.batch_error", error=repr(exc), size=len(batch))
            dispositions = [Disposition.retry(f"error: {exc!r}")] * len(batch)
        elapsed = round((time.perf_counter() - started) * 1000, 2)
        for (message, delivery), disposition in zip(batch, dispositions):
            self._bind_log_fields(delivery)
            self._finish(epoch, message, delivery, disposition, elapsed)
        self._worker_done()

    def _worker_done(self) -> None:
        self._done.put(None)  # type: ignore[arg-type]  - frees a worker slot (see _settle)
        self._wake()

    def _bind_log_fields(self, delivery: Delivery) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            consumer=self.name, message_id=delivery.message_id, type=delivery.message_type,
            correlation_id=delivery.correlation_id, task_id=delivery.correlation_id, attempt=delivery.attempt,
            redelivered=delivery.redelivered,
        )

    def _work(self, epoch: int, message, delivery: Delivery) -> None:
        self._bind_log_fields(delivery)
        started = time.perf_counter()
        if delivery.attempt > self._max_attempts:
            # The earlier deliveries got no verdict: the process died with them (a crash loop,
            # or crashes while they waited in its prefetch). The broker counted them and would
            # dead-letter the next return without a terminal event; decide now instead.
            self._finish(epoch, message, delivery, self._exhausted(delivery), 0.0)
            self._worker_done()
            return
        try:
            disposition = self._handler(delivery)
        except Transient as exc:
            delay = None
            if self._outage_backoff:
                delay = self._outage_backoff[min(delivery.attempt - 1, len(self._outage_backoff) - 1)]
            disposition = Disposition.retry(f"transient: {exc}", delay=delay)
        except Exception as exc:  # noqa: BLE001 - unexpected errors are retried, then dead-lettered
            log.exception("message.handler_error", error=repr(exc))
            disposition = Disposition.retry(f"error: {exc!r}")
        self._finish(epoch, message, delivery, disposition, round((time.perf_counter() - started) * 1000, 2))
        self._worker_done()

    def _finish(self, epoch: int, message, delivery: Delivery, disposition: Disposition, duration_ms: float) -> None:
        """Worker side of a verdict (the delivery's log fields bound): give up after the last
        attempt, log one line, hand it over."""
        if disposition.outcome is Outcome.RETRY and delivery.attempt >= self._max_attempts:
            disposition = Disposition.dead_letter(f"gave up after {delivery.attempt} attempts: {disposition.reason}")
            self._give_up(delivery, disposition.reason)
        log.info("message.handled", outcome=disposition.outcome.value, reason=disposition.reason,
                 duration_ms=duration_ms)
        structlog.contextvars.clear_contextvars()
        self._done.put((epoch, message, delivery, disposition))

    def _exhausted(self, delivery: Delivery) -> Disposition:
        """A delivery beyond ``max_attempts`` whose predecessors got no verdict: the handler's
        ``on_exhausted`` decides (a copy of a message already handled is a duplicate to ack),
        else it is given up and dead-lettered."""
        reason = f"gave up after {delivery.attempt - 1} deliveries without a verdict (crash loop)"
        decide = getattr(self._handler, "on_exhausted", None)
        if decide is not None:
            try:
                return decide(delivery, reason)
            except Exception as exc:  # noqa: BLE001 - then give up as for any last attempt
                log.error("message.exhausted_check_failed", error=repr(exc))
        self._give_up(delivery, reason)
        return Disposition.dead_letter(reason)

    def _give_up(self, delivery: Delivery, reason: str) -> None:
        try:
            self._handler.on_give_up(delivery, reason)
        except Exception as exc:  # noqa: BLE001 - the dead letter still goes out
            log.error("message.give_up_failed", error=repr(exc))

    def _settle(self, channel) -> None:
        """Apply verdicts and due retries; only this (I/O) thread touches the channel."""
        while True:
            try:
                item = self._done.get_nowait()
            except Empty:
                break
            if item is None:
                self._busy -= 1
                continue
            epoch, message, delivery, disposition = item
            if epoch != self._epoch:
                continue  # delivered on a channel that died; the broker has requeued it
            self._in_flight -= 1
            if disposition.outcome is Outcome.ACK:
                message.ack()
                self.handled += 1
            elif disposition.outcome is Outcome.DEAD_LETTER:
                self._schedule(0.0, message, delivery, disposition)
            else:
                delay = disposition.delay
                if delay is None:
                    delay = self._backoff[min(delivery.attempt - 1, len(self._backoff) - 1)]
                self._schedule(delay, message, delivery, disposition)
        now = time.monotonic()
        while self._scheduled and self._scheduled[0].due <= now:
            item = heapq.heappop(self._scheduled)
            if item.epoch != self._epoch:
                continue
            try:
                self._forward(item.delivery, item.disposition)
            except PublishFailed as exc:
                if not (isinstance(exc, Nacked) and item.disposition.outcome is Outcome.DEAD_LETTER):
                    # Not confirmed (a retry's copy into a full work queue, or the broker away):
                    # the original stays unacked, and the copy is tried again.
                    log.warning("message.forward_failed", error=repr(exc), message_id=item.delivery.message_id)
                    item.due = now + 1.0
                    heapq.heappush(self._scheduled, item)
                    break
                # Its dead-letter queue is full (bounded, so junk cannot grow it without end). The
                # message's task has its outcome already; what the queue could not keep is logged.
                self._log_dropped(item.delivery, item.disposition)
            item.message.ack()
            self.handled += 1

    @staticmethod
    def _log_dropped(delivery: Delivery, disposition: Disposition) -> None:
        log.error("message.dead_letter_dropped", message_id=delivery.message_id, type=delivery.message_type,
                  task_id=delivery.correlation_id, queue=delivery.queue, publisher=delivery.publisher,
                  reason=disposition.reason, size=len(delivery.body),
                  body=delivery.body[:DROPPED_BODY_LOGGED].decode("utf-8", "replace"))

    def _schedule(self, delay: float, message, delivery: Delivery, disposition: Disposition) -> None:
        heapq.heappush(
            self._scheduled,
            _Scheduled(time.monotonic() + delay, next(self._seq), self._epoch, message, delivery, disposition),
        )

    def _forward(self, delivery: Delivery, disposition: Disposition) -> None:
        """Republish a retry or deferred copy, or the dead letter, with confirms (before the
        original is acked)."""
        headers = {k: v for k, v in delivery.headers.items() if not k.startswith("x-delivery-count")}
        if disposition.outcome is Outcome.DEAD_LETTER:
            headers.update({
                DEATH_REASON_HEADER: disposition.reason[:1000],
                ORIGINAL_QUEUE_HEADER: delivery.queue,
                ATTEMPT_HEADER: delivery.attempt,
            })
            exchange, routing_key = self._topology.dlx.name, self._topology.dead_letter_routing_key(delivery.queue)
            log.error("message.dead_lettered", message_id=delivery.message_id, reason=disposition.reason)
        else:
            if disposition.outcome is Outcome.RETRY:
                headers[ATTEMPT_HEADER] = delivery.attempt + 1
            else:
                # A deferred message was not attempted: its copy keeps our count of attempts but
                # not the broker's redeliveries, which count deaths of processes it sat in unseen
                # (a handler's runs that died are counted by its claims: shared.db.task_owners).
                headers[ATTEMPT_HEADER] = _as_int(delivery.headers.get(ATTEMPT_HEADER), 1)
                headers[DEFERRALS_HEADER] = delivery.deferrals + 1
            # The default exchange routes by queue name: the copy reaches this queue only.
            exchange, routing_key = "", delivery.queue
        user_id = None
        headers.pop(PUBLISHED_BY_HEADER, None)
        headers.pop(ROUTING_KEY_HEADER, None)  # as received: believed from nobody
        if delivery.routing_key is not None:
            headers[ROUTING_KEY_HEADER] = delivery.routing_key
        if self._identity is not None:
            # The copy is ours; who published the original goes with it ("" for nobody).
            user_id = self._identity.own
            headers[PUBLISHED_BY_HEADER] = delivery.publisher or ""
        # retry_nacks=False: this runs on the I/O thread, which must not sleep between resends;
        # ``_settle`` tries a nacked retry copy again a second later by itself.
        self._publisher.publish(
            exchange=exchange, routing_key=routing_key, body=delivery.body, message_id=delivery.message_id,
            message_type=delivery.message_type, correlation_id=delivery.correlation_id, headers=headers,
            user_id=user_id, retry_nacks=False,
        )


def _plain_socket(connection: Connection):
    """The TCP socket of a py-amqp connection, or None (memory://, or TLS, which buffers reads)."""
    transport = amqp_transport(connection)
    if transport is None or type(transport).__name__ != "TCPTransport":
        return None
    return transport.sock


def _as_int(value: object, default: int) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
