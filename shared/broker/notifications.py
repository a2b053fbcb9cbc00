"""Read-model notifications: "task X is now in state S in the read model".

The projector sends one after each commit that changed a task, to the listener that submitted the
task: every gateway process has its own address (``NotificationListener.address``), puts it in
its commands' ``reply_to``, and listens on an exclusive queue bound with that address to the
direct notifications exchange. A waiting request wakes as soon as the read model can answer it,
and no gateway handles another gateway's notifications.
Notifications are a latency optimisation, not a delivery guarantee: a gateway also re-reads
the read model periodically, so a lost notification only delays an answer.
"""

from __future__ import annotations

import socket
import threading
import uuid
from typing import Any, Callable

import orjson
from kombu import Connection, Consumer, Queue

from imagesvc.shared.broker.connection import discard, ensure_connected
from imagesvc.shared.broker.topology import Topology
from imagesvc.shared.logging import get_logger

log = get_logger(__name__)


class TaskNotifier:
    def __init__(self, publisher, topology: Topology, *, user_id: str | None = None):
        """``user_id``: this process's broker user (listeners believe only imagesvc's own)."""
        self._publisher = publisher
        self._exchange = topology.notifications.name
        self._user_id = user_id

    def __call__(self, address: str, notification: dict[str, Any]) -> None:
        """Send ``{"task_id", "status", ...}`` to the listener at ``address`` (dropped if it is gone)."""
        self._publisher.publish(
            exchange=self._exchange, routing_key=address, body=orjson.dumps(notification),
            message_type="task.projected", persistent=False, mandatory=False, user_id=self._user_id,
        )


class NotificationListener:
    """Background thread delivering each notification (a dict with at least ``task_id`` and
    ``status``) to ``on_task``."""

    def __init__(self, connect: Callable[[], Connection], topology: Topology,
                 on_task: Callable[[dict[str, Any]], None],
                 on_reconnect: Callable[[], None] = lambda: None, services: frozenset[str] | None = None):
        """``services``: imagesvc's service users, the only publishers whose notifications are
        believed (None where the broker vouches for nobody: memory://)."""
        self._services = services
        self._connect = connect
        self._topology = topology
        self._on_task = on_task
        self._on_reconnect = on_reconnect
        #: Where notifications for this listener are sent (commands carry it as ``reply_to``).
        self.address = f"{topology.prefix}gateway.{uuid.uuid4().hex[:12]}"
        self._queue = Queue(f"{self.address}.notifications", exchange=topology.notifications,
                            routing_key=self.address, exclusive=True, auto_delete=True, durable=False)
        self._stop = threading.Event()
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notification-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            connection = self._connect()
            try:
                ensure_connected(connection)
                channel = connection.channel()
                # Declaring everything here means commands are routable as soon as a gateway runs,
                # even before any consumer has started.
                self._topology.declare(channel)
                Consumer(channel, queues=[self._queue], on_message=self._deliver, no_ack=True).consume()
                self.ready.set()
                self._on_reconnect()
                delay = 0.5
                while not self._stop.is_set():
                    try:
                        # Short: ``stop`` (a gateway process ending) waits for this wait's end.
                        connection.drain_events(timeout=0.05)
                    except socket.timeout:
                        pass
                    connection.heartbeat_check()
            except Exception as exc:  # noqa: BLE001 - keep listening across broker restarts
                self.ready.clear()
                if self._stop.is_set():
                    break
                log.warning("notifications.connection_lost", error=repr(exc), retry_in=delay)
                discard(connection)
                self._stop.wait(delay)
                delay = min(delay * 2, 2.0)  # back within a couple of seconds of a broker restart
            else:
                discard(connection)  # the queue is exclusive: it goes with the connection
        self.ready.clear()

    def _deliver(self, message) -> None:
        publisher = (message.properties or {}).get("user_id")
        if self._services is not None and publisher not in self._services:
            # Somebody else's message in our queue would answer a waiting request with its outcome.
            log.warning("notifications.refused", publisher=publisher)
            return
        try:
            data = orjson.loads(message.body)
            if not isinstance(data, dict) or not isinstance(data.get("task_id"), str):
                raise ValueError("not a task notification")
            self._on_task(data)
        except Exception as exc:  # noqa: BLE001 - a malformed notification is only noise
            log.warning("notifications.bad_message", error=repr(exc))
