"""Broker connections with the settings kombu does not default to.

kombu's defaults switch heartbeats off and retry forever; here every AMQP connection has a
heartbeat, a connect timeout and bounded reconnect attempts (publisher confirms are the
publisher's business). ``memory://`` (the embedded mode) gets a short polling interval instead
of kombu's one second.
"""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING

from kombu import Connection

from imagesvc.shared.config import Settings

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
        settings.broker_url,
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
    """Open ``connection`` or raise, trying once (kombu's default retries forever)."""
    connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, interval_max=0, timeout=timeout)


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
    own = Connection(settings.broker_url).userid or "guest"  # parsing only: no I/O
    return BrokerIdentity(own=own, services=frozenset(settings.service_users or (own,)),
                          inventory={"node": frozenset(settings.node_publishers),
                                     "vm": frozenset(settings.vm_publishers)})
