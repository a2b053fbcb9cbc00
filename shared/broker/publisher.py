"""Confirmed publishing from any thread.

``Publisher.publish_many`` sends a batch of messages and returns only once the broker has
confirmed every one of them (persistent, and routed to at least one queue when ``mandatory``);
it raises ``Unroutable`` when one was returned and ``PublishFailed`` on a nack, a timeout or a
broken connection, within about ``timeout`` seconds. Within that time it sends again what was not
confirmed: the whole batch once on a new connection when the connection broke (on a cluster's URL
list, the next node's), and the nacked part after a short pause when the broker nacked (a quorum
queue between two leaders nacks, as a full queue does). The confirms of a batch are awaited
together (one round trip for all of them, instead of one per message as kombu's confirm mode
does). It never retries forever: a caller that promised nothing yet (the gateway) answers 503;
a caller holding the messages in its outbox (the relay) tries again later. After a failure some
messages of the batch may still have been delivered: consumers deduplicate by message id.

Connections are pooled, one batch per connection at a time (kombu connections are not
thread-safe). A connection that failed is discarded; idle connections are kept alive by a
ticker that reads the broker's heartbeats and sends ours. On ``memory://`` (no confirms exist)
messages are simply sent.
"""

from __future__ import annotations

import queue
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from amqp.exceptions import ChannelError as AmqpChannelError
from kombu import Connection

from imagesvc.shared.broker.connection import amqp_socket, discard, ensure_connected
from imagesvc.shared.errors import Nacked, PublishFailed, Unroutable
from imagesvc.shared.logging import get_logger

log = get_logger(__name__)

_NO_ROUTE = 312
#: Pauses before a nacked batch's unacknowledged messages are sent again (within the timeout).
NACK_RETRY_PAUSES = (0.25, 0.5, 1.0)


@dataclass(frozen=True)
class Outgoing:
    """One message to publish."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str | None = None
    message_type: str | None = None
    correlation_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    persistent: bool = True
    mandatory: bool = True
    #: The AMQP ``user_id`` property: RabbitMQ refuses it unless it is the connection's own user,
    #: which is what lets consumers trust it.
    user_id: str | None = None


class _Confirms:
    """Publisher-confirm bookkeeping of one channel (delivery tags count from 1 per channel)."""

    def __init__(self) -> None:
        self.sent = 0
        self.settled: dict[int, bool] = {}
        self.low = 1  # every tag below this one is settled
        self.returned: set[str | None] = set()

    def on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, True)

    def on_nack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, False)

    def on_return(self, _exc, _exchange, _routing_key, message) -> None:
        self.returned.add((message.properties or {}).get("message_id"))

    def _settle(self, tag: int, multiple: bool, ok: bool) -> None:
        if multiple:
            for pending in range(self.low, tag + 1):
                self.settled.setdefault(pending, ok)
            self.low = max(self.low, tag + 1)
        else:
            self.settled[tag] = ok

    def outcome(self, first: int, last: int) -> bool | None:
        """True: all of first..last acked; False: one was nacked; None: still waiting."""
        results = [self.settled.get(tag) for tag in range(first, last + 1)]
        if False in results:
            return False
        return None if None in results else True

    def forget(self, last: int) -> None:
        for tag in [t for t in self.settled if t <= last]:
            del self.settled[tag]
        self.returned.clear()


class _Slot:
    def __init__(self, connect: Callable[[], Connection], confirms: bool):
        self._connect = connect
        self._wants_confirms = confirms
        self.connection: Connection | None = None
        self.producer = None
        self.confirms: _Confirms | None = None
        #: Why the broker blocks this connection's publishes (a resource alarm), or None.
        self.blocked: str | None = None

    def ready(self, timeout: float):
        if self.connection is None:
            self.connection = self._connect()
        if not self.connection.connected or self.producer is None:
            ensure_connected(self.connection, timeout)
            self.producer = self.connection.Producer()
            self.confirms = None
            self.blocked = None
            amqp_connection = getattr(self.connection, "_connection", None)
            if amqp_connection is not None and hasattr(amqp_connection, "on_blocked"):
                amqp_connection.on_blocked = self._on_blocked
                amqp_connection.on_unblocked = self._on_unblocked
        return self.producer

    def _on_blocked(self, reason: str | None = None) -> None:
        self.blocked = reason or "connection blocked"

    def _on_unblocked(self) -> None:
        self.blocked = None

    def read_pending(self) -> bool:
        """Read frames that already arrived (connection.blocked/unblocked, heartbeats) without
        waiting; False when there is no open AMQP connection to read."""
        conn = self.connection
        if conn is None or not conn.connected or conn.transport_cls == "memory":
            return False
        sock = amqp_socket(conn)
        if sock is not None and not select.select([sock], [], [], 0)[0]:
            return True  # nothing arrived: no wait at all on the publish path
        try:
            # Something arrived (a heartbeat, connection.blocked, or the broker closing this
            # connection, which raises here so the caller reconnects before it publishes).
            conn.drain_events(timeout=0.01)
        except socket.timeout:
            pass
        return True

    @property
    def confirming(self) -> bool:
        return self._wants_confirms and self.connection is not None and self.connection.transport_cls != "memory"

    def confirm_channel(self):
        """The producer's channel in confirm mode, with our ack/nack/return bookkeeping."""
        channel = self.producer.channel
        if self.confirms is None:
            self.confirms = _Confirms()
            channel.events["basic_ack"].add(self.confirms.on_ack)
            channel.events["basic_nack"].add(self.confirms.on_nack)
            channel.events["basic_return"].add(self.confirms.on_return)
            if not channel._confirm_selected:
                channel.confirm_select()
                channel._confirm_selected = True
        return channel

    def reset(self) -> None:
        discard(self.connection)
        self.connection = None
        self.producer = None
        self.confirms = None

    def tick(self) -> None:
        """Keep an idle AMQP connection alive: read pending frames, send a heartbeat if due."""
        if self.read_pending():
            self.connection.heartbeat_check()  # type: ignore[union-attr]


class Publisher:
    """``confirms=False`` only for transient messages whose loss is harmless (notifications)."""

    def __init__(self, connect: Callable[[], Connection], *, size: int = 4, timeout: float = 5.0,
                 heartbeat: float = 0, confirms: bool = True):
        self._timeout = timeout
        self._slots: queue.LifoQueue[_Slot] = queue.LifoQueue()
        for _ in range(size):
            self._slots.put(_Slot(connect, confirms))
        self._size = size
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if heartbeat > 0:
            self._ticker = threading.Thread(target=self._tick_loop, args=(heartbeat / 3,), name="publisher-heartbeat",
                                            daemon=True)
            self._ticker.start()

    def publish(self, *, exchange: str, routing_key: str, body: bytes, message_id: str | None = None,
                message_type: str | None = None, correlation_id: str | None = None,
                headers: dict[str, Any] | None = None, persistent: bool = True, mandatory: bool = True,
                user_id: str | None = None, retry_nacks: bool = True) -> None:
        """Publish one message and wait for the broker's confirm (see ``publish_many``)."""
        self.publish_many([Outgoing(exchange, routing_key, body, message_id, message_type, correlation_id,
                                    headers or {}, persistent, mandatory, user_id)], retry_nacks=retry_nacks)

    def publish_many(self, messages: Sequence[Outgoing], *, retry_nacks: bool = True) -> None:
        """Publish messages in order and wait for all their confirms.

        Raises Unroutable if the broker returned one (no queue bound for its routing key) and
        PublishFailed on any other failure, both within about the configured timeout.
        ``retry_nacks=False``: a nack raises Nacked at once, for a caller with a retry policy of its
        own that must not wait here (a consumer's I/O thread).
        """
        if not messages:
            return
        deadline = time.monotonic() + self._timeout
        try:
            slot = self._slots.get(timeout=self._timeout)
        except queue.Empty:
            raise PublishFailed("no publisher connection became free in time") from None
        try:
            last_error: Exception | None = None
            pending = list(messages)
            nack_pauses = list(NACK_RETRY_PAUSES) if retry_nacks else []
            connections = 2  # a broken connection is replaced once (on a cluster: by the next node's)
            while connections and time.monotonic() < deadline:
                try:
                    self._send(slot, pending, deadline)
                    return
                except Unroutable:
                    slot.reset()
                    raise
                except Blocked as exc:
                    # Keep the connection: it hears the broker's connection.unblocked.
                    last_error = exc
                    break
                except Nacked as exc:
                    # A full queue nacks; so does a quorum queue whose leader's node died, to a
                    # channel that still knows the dead leader (measured: such a channel went on
                    # being nacked for seconds while new ones were taken after about 0.6 s). What was not
                    # acked goes again after a pause, on a new connection; a queue still full is
                    # refused after the last pause. A nack may hide a copy the queue kept:
                    # consumers deduplicate by message id.
                    slot.reset()
                    last_error = exc
                    pause = nack_pauses.pop(0) if nack_pauses else None
                    if pause is None or time.monotonic() + pause >= deadline:
                        break
                    pending = getattr(exc, "unconfirmed", None) or pending
                    time.sleep(pause)
                except PublishFailed as exc:
                    slot.reset()
                    last_error = exc
                    break  # timed out: the broker was reached, do not resend blindly
                except AmqpChannelError as exc:
                    slot.reset()
                    if _no_route(exc):
                        raise Unroutable(f"no queue bound for {messages[0].exchange}/{messages[0].routing_key}") from exc
                    last_error = exc
                    connections -= 1
                except Exception as exc:  # noqa: BLE001 - any other failure means "not confirmed"
                    # The connection broke (its node died, the network): nothing of the batch is
                    # promised, so all of it goes again on a new connection.
                    slot.reset()
                    last_error = exc
                    connections -= 1
                    pending = list(messages)
            failure = Nacked if isinstance(last_error, Nacked) else PublishFailed
            raise failure(f"publish of {len(messages)} message(s) not confirmed: {last_error!r}")
        finally:
            self._slots.put(slot)

    def _send(self, slot: _Slot, messages: Sequence[Outgoing], deadline: float) -> None:
        producer = slot.ready(max(deadline - time.monotonic(), 0.1))
        if not slot.confirming:
            for m in messages:
                producer.publish(m.body, exchange=m.exchange, routing_key=m.routing_key,
                                 content_type="application/json", content_encoding="utf-8",
                                 delivery_mode=2 if m.persistent else 1, message_id=m.message_id,
                                 correlation_id=m.correlation_id, type=m.message_type, headers=m.headers, retry=False,
                                 **({"user_id": m.user_id} if m.user_id else {}))
            return
        slot.read_pending()
        if slot.blocked:
            # A resource alarm: a publish now would be held unread by the broker, answered 503
            # after the timeout, and then routed once the alarm clears (a command run after we
            # said it was not accepted). Refuse before sending anything.
            raise Blocked(f"the broker blocks publishing ({slot.blocked})")
        channel = slot.confirm_channel()
        confirms = slot.confirms
        assert confirms is not None
        first = confirms.sent + 1
        for m in messages:
            properties = {"delivery_mode": 2 if m.persistent else 1}
            for key, value in (("message_id", m.message_id), ("correlation_id", m.correlation_id),
                               ("type", m.message_type), ("user_id", m.user_id)):
                if value is not None:
                    properties[key] = value
            message = channel.prepare_message(m.body, content_type="application/json", content_encoding="utf-8",
                                              headers=m.headers, properties=properties)
            channel._basic_publish(message, exchange=m.exchange, routing_key=m.routing_key, mandatory=m.mandatory)
            confirms.sent += 1
        last = confirms.sent
        connection = slot.connection
        assert connection is not None
        while (outcome := confirms.outcome(first, last)) is None:
            if slot.blocked:
                # RabbitMQ tells a connection it is blocked when it first publishes during an
                # alarm, and stops reading it: what we sent is held unread. Not Blocked (which
                # keeps the connection): the caller resets it, so the held bytes die with it
                # instead of being routed once the alarm clears, after we answered 503.
                raise PublishFailed(f"the broker blocked publishing before confirming ({slot.blocked})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PublishFailed(f"no confirm within {self._timeout} s")
            try:
                connection.drain_events(timeout=remaining)
            except socket.timeout:
                pass
        returned = {m.message_id for m in messages} & confirms.returned
        unconfirmed = [m for index, m in enumerate(messages) if confirms.settled.get(first + index) is not True]
        confirms.forget(last)
        if returned:
            raise Unroutable(f"returned by the broker (no queue bound): {sorted(map(str, returned))}")
        if outcome is False:
            nacked = Nacked("the broker nacked a message (a full queue refuses publishes, and a quorum queue "
                            "while it has no leader)")
            nacked.unconfirmed = unconfirmed  # type: ignore[attr-defined]
            raise nacked

    def _tick_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            # Take every idle slot first, then tick each once (putting one back at a time would
            # hand the same slot out again: the pool is last-in, first-out).
            idle = []
            while len(idle) < self._size:
                try:
                    idle.append(self._slots.get_nowait())
                except queue.Empty:
                    break
            for slot in idle:
                try:
                    slot.tick()
                except Exception as exc:  # noqa: BLE001
                    log.warning("publisher.connection_lost", error=repr(exc))
                    slot.reset()
                finally:
                    self._slots.put(slot)

    def close(self) -> None:
        self._stop.set()
        while True:
            try:
                self._slots.get_nowait().reset()
            except queue.Empty:
                break


class Blocked(PublishFailed):
    """The broker has told this connection it blocks publishers (a resource alarm)."""


def _no_route(exc: Exception) -> bool:
    return getattr(exc, "code", None) == _NO_ROUTE or getattr(exc, "reply_code", None) == _NO_ROUTE
