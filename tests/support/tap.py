"""An independent AMQP client (pika, not kombu) that records what imagesvc publishes.

``EventTap`` binds its own exclusive queue to an exchange and collects every message with its
AMQP properties, on a thread of its own (pika connections are not thread-safe, so publishing goes
through ``publish`` on a separate short-lived connection).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import pika


@dataclass(frozen=True)
class Tapped:
    routing_key: str
    properties: pika.BasicProperties
    body: bytes

    @property
    def envelope(self) -> dict[str, Any]:
        return orjson.loads(self.body)


def _parameters(url: str) -> pika.URLParameters:
    # kombu spells the default vhost "//", pika wants it percent-encoded.
    return pika.URLParameters(url.rstrip("/") + "/%2F") if url.endswith("//") else pika.URLParameters(url)


class EventTap:
    """``bindings``: one binding key or several (all on ``exchange``)."""

    def __init__(self, broker_url: str, exchange: str, binding: str | tuple[str, ...] = "#"):
        self._params = _parameters(broker_url)
        self._exchange = exchange
        self._bindings = (binding,) if isinstance(binding, str) else binding
        self._messages: list[Tapped] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("event tap did not start")

    def _run(self) -> None:
        connection = pika.BlockingConnection(self._params)
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        for binding in self._bindings:
            channel.queue_bind(queue, self._exchange, routing_key=binding)

        def on_message(ch, method, properties, body):
            with self._lock:
                self._messages.append(Tapped(method.routing_key, properties, body))
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(queue, on_message)
        self._ready.set()
        while not self._stop.is_set():
            connection.process_data_events(time_limit=0.2)
        connection.close()

    def messages(self) -> list[Tapped]:
        with self._lock:
            return list(self._messages)

    def envelopes(self, *, type: str | None = None, correlation_id: str | None = None) -> list[dict[str, Any]]:
        found = [m.envelope for m in self.messages()]
        return [e for e in found if (type is None or e["type"] == type)
                and (correlation_id is None or e["correlation_id"] == correlation_id)]

    def wait_for(self, *, type: str, correlation_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """The first recorded envelope of ``type`` for ``correlation_id``, waiting up to ``timeout``."""
        from tests.support.polling import eventually

        def found() -> dict[str, Any]:
            matches = self.envelopes(type=type, correlation_id=correlation_id)
            assert matches, f"no {type} event for {correlation_id} yet"
            return matches[0]

        return eventually(found, timeout=timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def publish(broker_url: str, exchange: str, routing_key: str, body: bytes, **properties: Any) -> None:
    """Publish with pika, waiting for the broker's confirm (raises if unroutable or nacked)."""
    connection = pika.BlockingConnection(_parameters(broker_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(exchange, routing_key, body, pika.BasicProperties(**properties), mandatory=True)
    finally:
        connection.close()


def take(broker_url: str, queue: str) -> Tapped | None:
    """Take (and ack) one message from an existing queue without redeclaring it."""
    connection = pika.BlockingConnection(_parameters(broker_url))
    try:
        channel = connection.channel()
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        return None if method is None else Tapped(method.routing_key, properties, body)
    finally:
        connection.close()


class CommandCounter:
    """Counts every command published to the commands exchange, from the broker's own queue depth
    (a queue of ours, bound to every command type, never consumed): a publisher confirm means the
    message is already in it, so the count is exact the moment a request has been answered."""

    def __init__(self, broker_url: str, exchange: str, routing_keys: list[str]):
        self._params = _parameters(broker_url)
        self.queue = f"test.command-counter.{uuid.uuid4().hex[:8]}"
        connection = pika.BlockingConnection(self._params)
        try:
            channel = connection.channel()
            channel.queue_declare(self.queue, durable=False, auto_delete=False)
            for key in routing_keys:
                channel.queue_bind(self.queue, exchange, routing_key=key)
        finally:
            connection.close()

    def count(self) -> int:
        connection = pika.BlockingConnection(self._params)
        try:
            return connection.channel().queue_declare(self.queue, passive=True).method.message_count
        finally:
            connection.close()

    def close(self) -> None:
        connection = pika.BlockingConnection(self._params)
        try:
            connection.channel().queue_delete(self.queue)
        finally:
            connection.close()
