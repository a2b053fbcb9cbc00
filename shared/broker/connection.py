"""Broker connections with the settings kombu does not default to.

kombu's defaults switch heartbeats off and retry forever; here every AMQP connection has a
heartbeat, a connect timeout and bounded reconnect attempts (publisher confirms are the
publisher's business). ``memory://`` (the embedded mode) gets a short polling interval instead
of kombu's one second.

Failover: ``IMAGESVC_BROKER_URL`` may list the nodes of a RabbitMQ cluster (``;``-separated).
Every connection gets them all, with kombu's ``round-robin`` strategy: a connection that cannot
be opened on one URL tries the next (``ensure_connected`` tries each once), so a dead node costs
one refused or timed-out attempt and is never retried before the others (kombu's ``shuffle``
picks a random URL at each step: it may retry the dead node while a live one waits, and with a
bounded number of attempts give up though two nodes are up). A process's first connection
starts at the first URL (the operator's order: list the nodes in another order on another host
to spread the connections); afterwards a new connection starts at the URL that last worked in
this process, so reconnects after a node's death do not each wait for the dead node first (a
host that drops packets costs a whole connect timeout).
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import TYPE_CHECKING, Sequence

from kombu import Connection

from imagesvc.shared.config import Settings, broker_urls

if TYPE_CHECKING:
    from imagesvc.shared.broker.consumer import BrokerIdentity

#: The embedded broker's polling interval: latency of an in-process hop, in seconds.
MEMORY_POLLING_INTERVAL = 0.002


def connect(settings: Settings, purpose: str) -> Connection:
    """A new (not yet opened) connection named ``purpose`` in the broker's management UI.

    kombu's own confirm mode stays off: it waits for each message's confirm in turn, while
    ``shared.broker.publisher.Publisher`` awaits a batch's confirms together.
    """
    if settings.embedded_broker:
        return Connection(settings.broker_url, transport_options={"polling_interval": MEMORY_POLLING_INTERVAL})
    return Connection(
        _preference.ordered(broker_urls(settings.broker_url)),
        failover_strategy="round-robin",
        heartbeat=settings.heartbeat,
        connect_timeout=settings.publish_timeout,
        transport_options={
            "confirm_publish": False,
            "max_retries": 3,
            "interval_start": 0,
            "interval_step": 1,
            "interval_max": 2,
            "client_properties": {"connection_name": f"imagesvc-{purpose}"},
        },
    )


def ensure_connected(connection: Connection, timeout: float | None = None) -> None:
    """Open ``connection`` or raise, trying each of its URLs once in turn (one URL: twice), with
    no pause; kombu's default retries forever. ``timeout`` bounds all the attempts together."""
    urls = list(getattr(connection, "alt", None) or [None])
    connection.ensure_connection(max_retries=max(1, len(urls) - 1), interval_start=0, interval_step=0,
                                 interval_max=0, timeout=timeout)
    if len(urls) > 1:
        _preference.worked(urls, connection)


class _Preference:
    """Where this process's next connection to a list of URLs starts (see the module's doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: The URL list (sorted: any rotation of it is the same list) -> its URL to try first.
        self._first: dict[tuple[str, ...], str] = {}

    def ordered(self, urls: Sequence[str]) -> list[str]:
        """``urls`` rotated to start at the preferred one (at first the first one)."""
        urls = list(urls)
        with self._lock:
            first = self._first.setdefault(tuple(sorted(urls)), urls[0])
        start = urls.index(first)
        return urls[start:] + urls[:start]

    def worked(self, urls: Sequence[str], connection: Connection) -> None:
        """``connection``, made from ``urls``, is open: its URL comes first next time."""
        from kombu.utils.url import parse_url

        for url in urls:
            parts = parse_url(url)
            if (parts.get("hostname"), parts.get("port")) == (connection.hostname, connection.port):
                with self._lock:
                    self._first[tuple(sorted(urls))] = url
                return


_preference = _Preference()


def access_refused(exc: BaseException, connection: Connection | None) -> str | None:
    """A sentence for an operator when ``exc`` is the broker refusing this connection's user (a
    wrong user name or password, or no access to the virtual host), else None. Nothing the
    process can fix by itself: an operator must."""
    from amqp.exceptions import AccessRefused

    if not isinstance(exc, AccessRefused):
        return None
    where = connection.as_uri(include_password=False) if connection is not None else "the broker"
    return (f"the broker refused {where}: {exc.reply_text if hasattr(exc, 'reply_text') else exc} "
            "(check the user name, password and virtual host in IMAGESVC_BROKER_URL, and the user's "
            "permissions: docs/security.md)")


def discard(connection: Connection | None) -> None:
    """Drop a connection without talking to the broker.

    A graceful close waits for the broker's close-ok with no timeout, so on a stalled or
    half-dead connection it hangs; closing the socket is enough for the broker to requeue our
    unacknowledged deliveries.
    """
    if connection is None:
        return
    _abort(connection)
    try:
        connection.collect()
    except Exception:  # noqa: BLE001 - a broken connection may fail to close in any way
        pass


def amqp_transport(connection: Connection | None):
    """The py-amqp transport under ``connection``, or None (memory://, never opened, collected).

    Never opens anything: kombu's ``Connection.connection`` and py-amqp's ``Connection.transport``
    are properties that connect when there is no connection, which on a broker that is down
    raises out of code that only meant to look (a consumer tidying up after a lost connection
    died of it)."""
    amqp_connection = getattr(connection, "_connection", None)
    return getattr(amqp_connection, "_transport", None)


def amqp_socket(connection: Connection | None) -> socket.socket | None:
    """The socket of ``connection``'s transport, or None; never connects (see ``amqp_transport``)."""
    return getattr(amqp_transport(connection), "sock", None)


def _abort(connection: Connection) -> None:
    """Close the TCP socket with an RST first (SO_LINGER 0), so that ``collect`` cannot wait
    for a channel's close-ok, and so that bytes the broker has not read yet (a publish held back
    by a resource alarm) are dropped with the connection instead of being routed later: a
    command we answered 503 must not run anyway."""
    sock = amqp_socket(connection)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


def broker_identity(settings: Settings) -> BrokerIdentity | None:
    """This process's broker user, imagesvc's service users and the inventory publishers; None on
    ``memory://``, where the broker vouches for nobody (and nobody outside the process can publish)."""
    from imagesvc.shared.broker.consumer import BrokerIdentity

    if settings.embedded_broker:
        return None
    # Parsing only, no I/O; every URL of the list names the same user (Settings.validate).
    own = Connection(broker_urls(settings.broker_url)[0]).userid or "guest"
    return BrokerIdentity(own=own, services=frozenset(settings.service_users or (own,)),
                          inventory={"node": frozenset(settings.node_publishers),
                                     "vm": frozenset(settings.vm_publishers)})
