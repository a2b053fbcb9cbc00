"""Confirmed publishing from any thread.

``Publisher.publish`` returns only once the broker has confirmed the message (persistent and
routed to at least one queue when ``mandatory``), and raises ``PublishFailed`` (or
``Unroutable``) within about ``timeout`` seconds otherwise. It never retries forever: a caller
that promised nothing yet (the gateway) answers 503; a caller holding the message in its outbox
(the relay) tries again later.

Connections are pooled, one publish per connection at a time (kombu connections are not
thread-safe). A connection that failed is closed before it is reused; idle connections are
kept alive by a ticker that reads the broker's heartbeats and sends ours.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from typing import Any, Callable

from amqp.exceptions import ChannelError as AmqpChannelError
from kombu import Connection

from shared.broker.connection import discard
from shared.errors import PublishFailed, Unroutable
from shared.logging import get_logger

log = get_logger(__name__)

_NO_ROUTE = 312


class _Slot:
    def __init__(self, connect: Callable[[], Connection]):
        self._connect = connect
        self.connection: Connection | None = None
        self.producer = None

    def ready(self, timeout: float):
        if self.connection is None:
            self.connection = self._connect()
        if not self.connection.connected or self.producer is None:
            self.connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, interval_max=0,
                                              timeout=timeout)
            self.producer = self.connection.Producer()
        return self.producer

    def reset(self) -> None:
        discard(self.connection)
        self.connection = None
        self.producer = None

    def tick(self) -> None:
        """Keep an idle AMQP connection alive: read pending frames, send a heartbeat if due."""
        conn = self.connection
        if conn is None or not conn.connected or conn.transport_cls == "memory":
            return
        try:
            conn.drain_events(timeout=0.01)
        except socket.timeout:
            pass
        conn.heartbeat_check()


class Publisher:
    def __init__(self, connect: Callable[[], Connection], *, size: int = 4, timeout: float = 5.0,
                 heartbeat: float = 0):
        self._timeout = timeout
        self._slots: queue.LifoQueue[_Slot] = queue.LifoQueue()
        for _ in range(size):
            self._slots.put(_Slot(connect))
        self._size = size
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if heartbeat > 0:
            self._ticker = threading.Thread(target=self._tick_loop, args=(heartbeat / 3,), name="publisher-heartbeat",
                                            daemon=True)
            self._ticker.start()

    def publish(self, *, exchange: str, routing_key: str, body: bytes, message_id: str | None = None,
                message_type: str | None = None, correlation_id: str | None = None,
                headers: dict[str, Any] | None = None, persistent: bool = True, mandatory: bool = True) -> None:
        """Publish one message and wait for the broker's confirm.

        Raises Unroutable when no queue is bound for ``routing_key`` (``mandatory``), and
        PublishFailed on any other failure, both within about the configured timeout.
        """
        deadline = time.monotonic() + self._timeout
        try:
            slot = self._slots.get(timeout=self._timeout)
        except queue.Empty:
            raise PublishFailed("no publisher connection became free in time") from None
        try:
            last_error: Exception | None = None
            for _attempt in range(2):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    producer = slot.ready(remaining)
                    producer.publish(
                        body,
                        exchange=exchange,
                        routing_key=routing_key,
                        content_type="application/json",
                        content_encoding="utf-8",
                        delivery_mode=2 if persistent else 1,
                        mandatory=mandatory,
                        message_id=message_id,
                        correlation_id=correlation_id,
                        type=message_type,
                        headers=headers or {},
                        retry=False,
                        timeout=max(remaining, 0.1),
                        confirm_timeout=max(remaining, 0.1),
                    )
                    return
                except AmqpChannelError as exc:
                    slot.reset()
                    if getattr(exc, "code", None) == _NO_ROUTE or getattr(exc, "reply_code", None) == _NO_ROUTE:
                        raise Unroutable(f"no queue bound for {exchange}/{routing_key}") from exc
                    last_error = exc
                except Exception as exc:  # noqa: BLE001 - any failure means "not confirmed"
                    slot.reset()
                    last_error = exc
            raise PublishFailed(f"publish to {exchange}/{routing_key} not confirmed: {last_error!r}")
        finally:
            self._slots.put(slot)

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
