"""imagesvc's public AMQP contract from Python: publish commands, subscribe to events.

The broker half of the SDK (docs/messages.md is the contract it implements)::

    from imagesvc.client.broker import Broker
    from imagesvc.shared.contracts import UpdateImage

    with Broker("amqp://ops:secret@rabbit.example.com:5672/imagesvc") as broker:
        outcome = broker.publish_and_wait(UpdateImage(name="centos-7", desc="patched"), dc="main")

Identity. RabbitMQ validates the AMQP ``user_id`` property against the connection's user, and
imagesvc believes a command's actor only when ``user_id`` names it (or names one of its service
users). So a program connects as its own broker user, named like its imagesvc user, and acts as
that user: ``Broker(user=...)`` defaults to the URL's user name and is written both into the
envelope's ``actor`` and into ``user_id`` (a different name is refused by the broker:
``IdentityRefused``). Events are believed only from imagesvc's service users (``user_id``, which
RabbitMQ vouches for): RabbitMQ checks topic permissions on the routing key only, not on ``CC``
headers, so anybody allowed to write to the events exchange could copy a forged event into a
subscriber's queue. Everything else is dropped before a caller sees it.

Envelopes are built and read by ``imagesvc.shared.contracts`` (``wrap``, ``encode``, ``decode``,
``parse``), the code the services themselves use, and the exchange names come from
``imagesvc.shared.broker.topology``: one definition of the contract. Neither drags in server
machinery (SQLAlchemy, Starlette, uvicorn, psycopg, alembic); only kombu (and its py-amqp) and
orjson are needed.

One AMQP connection per ``Broker``, with heartbeats: a daemon thread answers them while the
caller is busy elsewhere. Calls are serialised by a lock; use a subscription from one thread.
Only RabbitMQ (``amqp://``, ``amqps://``) is supported: the embedded mode's ``memory://`` broker
lives inside ``imagesvc serve`` and cannot be reached from another process.
"""

from __future__ import annotations

import logging
import re
import select
import socket
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal

from amqp.channel import Channel as AmqpChannel
from amqp.exceptions import ChannelError
from amqp.exceptions import ConnectionError as AmqpConnectionError
from kombu import Connection

from imagesvc.client.errors import ImagesvcError
from imagesvc.shared import contracts
from imagesvc.shared.broker.topology import NODE_COMMAND_TYPES, build_topology, node_routing_key
from imagesvc.shared.contracts import Actor, Command, Envelope, Event, TaskFailed, TaskSucceeded
from imagesvc.shared.contracts.events import node_hostname_problem
from imagesvc.shared.contracts.routing import INVENTORY_FAMILIES, scope
from imagesvc.shared.errors import PoisonMessage

__all__ = [
    "Broker", "Subscription", "Received", "OutgoingCommand", "binding_keys",
    "BrokerError", "ConnectionFailed", "PublishError", "Nacked", "Unroutable", "ConfirmTimeout",
    "PublishRefused", "IdentityRefused", "SubscriptionRefused", "TaskTimeout",
]

log = logging.getLogger(__name__)

#: Envelope ids a subscription remembers to skip duplicates (delivery is at least once).
DEDUPLICATION_MEMORY = 10_000
#: A task id a program chooses: docs/messages.md, "Task ids".
_TASK_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")
_AMQP_TRANSPORTS = frozenset({"amqp", "amqps", "pyamqp"})
#: Longest wait inside one read of the socket: heartbeats are checked in between.
_SLICE = 1.0
_PRECONDITION_FAILED = 406
#: A connection that failed (socket errors, the broker closing it). Not socket.timeout (an
#: OSError too): every read catches that itself.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (AmqpConnectionError, OSError, EOFError)


# --- errors ------------------------------------------------------------------------------------


class BrokerError(ImagesvcError):
    """Anything the broker side of the SDK could not do."""


class ConnectionFailed(BrokerError):
    """No connection to the broker, or it was lost. After a publish this means the outcome is
    unknown: publish again with the same ``message_id`` and ``task_id`` (consumers deduplicate)."""


class PublishError(BrokerError):
    """The broker did not accept a command. ``message_id`` and ``task_id`` name it."""

    def __init__(self, message: str, *, message_id: str, task_id: str):
        super().__init__(message)
        self.message_id = message_id
        self.task_id = task_id


class Nacked(PublishError):
    """The broker refused the command (``basic.nack``): a full work queue refuses publishes."""


class Unroutable(PublishError):
    """No queue is bound for the command's routing key (returned to us, ``mandatory``): imagesvc
    has not declared its topology (wrong prefix or virtual host?), or no agent ever ran on the node."""


class ConfirmTimeout(PublishError, TimeoutError):
    """No confirm within ``confirm_timeout``: the command may or may not have been accepted;
    publishing it again with the same ids is safe."""


class PublishRefused(PublishError):
    """The broker closed the channel over the publish: no write permission on the commands
    exchange (403), no such exchange (404), ... ``reply_code``, ``reply_text``: the broker's."""

    def __init__(self, message: str, *, message_id: str, task_id: str, reply_code: int | None,
                 reply_text: str):
        super().__init__(message, message_id=message_id, task_id=task_id)
        self.reply_code = reply_code
        self.reply_text = reply_text


class IdentityRefused(PublishRefused):
    """The AMQP ``user_id`` is not the connection's broker user: RabbitMQ refuses to let one
    user speak for another (docs/messages.md, "Publishing a command yourself")."""


class SubscriptionRefused(BrokerError):
    """The broker refused to declare or bind the subscription's queue (topic permissions that do
    not allow a binding key, a missing exchange, ...)."""

    def __init__(self, message: str, *, reply_code: int | None, reply_text: str):
        super().__init__(message)
        self.reply_code = reply_code
        self.reply_text = reply_text


class TaskTimeout(BrokerError, TimeoutError):
    """No terminal event of the task within the timeout. The task may still end: its state is at
    ``GET /api/task/<task_id>/status/``."""

    def __init__(self, message: str, *, task_id: str):
        super().__init__(message)
        self.task_id = task_id


# --- building commands (no I/O) --------------------------------------------------------------------


@dataclass(frozen=True)
class OutgoingCommand:
    """A command ready for the wire: where it goes, its body and its AMQP properties."""

    exchange: str
    routing_key: str
    envelope: Envelope
    body: bytes
    #: AMQP basic properties other than ``content_type`` and ``content_encoding``.
    properties: dict[str, Any]

    @property
    def task_id(self) -> str:
        return self.envelope.correlation_id

    @property
    def message_id(self) -> str:
        return self.envelope.id


def build_command(command: Command, *, user: str, commands_exchange: str, dc: str | None = None,
                  task_id: str | None = None, message_id: str | None = None,
                  node: str | None = None) -> OutgoingCommand:
    """The message that asks imagesvc to run ``command`` as imagesvc user ``user``.

    ``user`` goes both into the envelope's actor and into the AMQP ``user_id`` (the broker checks
    the latter against the connection's user, which is what makes the actor believable).
    ``task_id`` defaults to a new UUID, ``message_id`` to a new one too. Node commands
    (``image.snapshot``) need ``node``, the hostname of the compute node whose agent runs them.
    Raises TypeError for anything but a command, ValueError for ids or names the consumers would
    not read.
    """
    if not isinstance(command, Command):
        raise TypeError(f"expected a command from imagesvc.shared.contracts, not {type(command).__name__}")
    task_id = str(uuid.uuid4()) if task_id is None else task_id
    if not _TASK_ID.match(task_id):
        raise ValueError(f"task id {task_id[:140]!r} must be 1 to 128 characters of A-Z a-z 0-9 . _ : -")
    if command.TYPE in NODE_COMMAND_TYPES:
        if node is None:
            raise ValueError(f"{command.TYPE} goes to one compute node's agent: give node=<its hostname>")
        problem = node_hostname_problem(node)
        if problem:
            raise ValueError(f"node: {problem}")
        routing_key = node_routing_key(command.TYPE, node)
    elif node is not None:
        raise ValueError(f"{command.TYPE} is not a node command: node= does not apply")
    else:
        routing_key = command.TYPE
    envelope = contracts.wrap(command, correlation_id=task_id, actor=Actor(user=user, dc=dc), message_id=message_id)
    body = contracts.encode(envelope)
    try:
        # The consumers' own reader: what it refuses (an actor name over 150 characters, a
        # datacenter name over 16, ...) is refused here, before anything is sent.
        contracts.decode(body)
    except PoisonMessage as exc:
        raise ValueError(f"imagesvc would not read this command: {exc}") from None
    properties = {"delivery_mode": 2, "message_id": envelope.id, "correlation_id": task_id,
                  "type": command.TYPE, "user_id": user}
    return OutgoingCommand(commands_exchange, routing_key, envelope, body, properties)


def binding_keys(event_types: Iterable[str] | str, datacenters: Iterable[str] | None = None, *,
                 include_global: bool = True) -> tuple[str, ...]:
    """The binding keys on the events exchange for ``event_types`` x scopes, in order, without
    repeats.

    ``event_types``: event types or topic patterns over them (``task.succeeded``, ``image.#``,
    ``#``). ``datacenters``: None for every scope (``<type>.#``; a pattern already ending in ``#``
    is kept as is), else ``<type>.dc.<datacenter word>`` for each and, with ``include_global``,
    ``<type>.global``: the keys a subscriber whose topic permissions end in its scopes may bind.
    Raises ValueError for an empty pattern, an empty word, no scope at all, or node/vm events
    (those are on the inventory exchange).
    """
    patterns = [event_types] if isinstance(event_types, str) else list(event_types)
    if not patterns:
        raise ValueError("no event types to subscribe to")
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern or "" in pattern.split("."):
            raise ValueError(f"event type pattern {pattern!r} must be dot-separated non-empty words")
        if pattern.split(".", 1)[0] in INVENTORY_FAMILIES:
            raise ValueError(f"{pattern!r}: node and vm events are published on the inventory exchange, "
                             "not on imagesvc's events exchange")
    if datacenters is None:
        scopes = None
    else:
        names = [datacenters] if isinstance(datacenters, str) else list(datacenters)
        if any(not isinstance(name, str) or not name for name in names):
            raise ValueError("datacenter names must be non-empty strings")
        scopes = [scope(name) for name in names] + (["global"] if include_global else [])
        if not scopes:
            raise ValueError("no scope to subscribe to: give datacenters or include_global=True")
    keys: list[str] = []
    for pattern in patterns:
        if scopes is None:
            # Every event key is <type>.<scope>, so a pattern ending in # already covers every scope.
            wanted = [pattern if pattern == "#" or pattern.endswith(".#") else f"{pattern}.#"]
        else:
            wanted = [f"{pattern}.{where}" for where in scopes]
        for key in wanted:
            if len(key.encode()) > 255:
                raise ValueError(f"binding key {key[:60]!r}... is longer than 255 bytes")
            if key not in keys:
                keys.append(key)
    return tuple(keys)


# --- receiving events ---------------------------------------------------------------------------------


@dataclass(eq=False)
class Received:
    """One event, believed: published by one of imagesvc's service users, decoded, typed, not seen
    before on this subscription. Settle it with ``ack()`` (done with it) or ``reject()``: unsettled
    deliveries count against the subscription's ``prefetch``, after which no more arrive."""

    event: Event
    envelope: Envelope
    routing_key: str
    redelivered: bool
    #: The broker user that published it (the AMQP ``user_id``, one of the service users).
    publisher: str
    _settle: Callable[[Literal["ack", "reject", "requeue"]], None] = field(repr=False)
    _settled: bool = field(default=False, repr=False)

    @property
    def settled(self) -> bool:
        return self._settled

    def ack(self) -> None:
        """Done with this event: the broker forgets it."""
        self._once("ack")

    def reject(self, requeue: bool = False) -> None:
        """Refuse this event: dropped, or with ``requeue`` delivered again (then it is not taken for
        a duplicate)."""
        self._once("requeue" if requeue else "reject")

    def _once(self, how: Literal["ack", "reject", "requeue"]) -> None:
        if self._settled:
            # A second settlement of one delivery tag is a channel error that would close the
            # subscription: refuse it here instead.
            raise RuntimeError(f"event {self.envelope.id} was already acknowledged or rejected")
        self._settle(how)
        self._settled = True


@dataclass(frozen=True)
class Verdict:
    """What a subscription does with one delivery: hand it out (``deliver``), or settle it unseen
    (``ack``: harmless to drop; ``reject``: refused). ``reason`` says why it was not delivered."""

    action: Literal["deliver", "ack", "reject"]
    envelope: Envelope | None = None
    event: Event | None = None
    reason: str = ""


class Screen:
    """The checks every delivery passes before a caller sees it, in this order:

    1. its AMQP ``user_id`` (which RabbitMQ validated) is one of ``service_users``, else it is
       rejected: a forged event (RabbitMQ does not police ``CC`` headers);
    2. it decodes as an envelope (else acked and skipped with a warning);
    3. its envelope id was not handed out before (else acked: a duplicate; the memory holds the
       last ``memory`` ids);
    4. its type is an event type this version knows (else acked and skipped with a warning: a
       subscriber for version N keeps working when newer types appear).
    """

    def __init__(self, service_users: Iterable[str], memory: int = DEDUPLICATION_MEMORY):
        self.service_users = frozenset(service_users)
        if not self.service_users:
            raise ValueError("service_users is empty: no event could be believed")
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._memory = memory

    def judge(self, body: bytes | str, user_id: str | None) -> Verdict:
        if user_id not in self.service_users:
            who = f"broker user {user_id!r}" if user_id else "a publisher the broker did not name (no user_id)"
            return Verdict("reject", reason=f"{who} is not one of imagesvc's service users "
                                            f"({', '.join(sorted(self.service_users))})")
        try:
            envelope = contracts.decode(body)
        except PoisonMessage as exc:
            return Verdict("ack", reason=f"not an envelope this version reads: {exc}")
        if envelope.id in self._seen:
            self._seen.move_to_end(envelope.id)
            return Verdict("ack", envelope, reason="duplicate")
        try:
            message = contracts.parse(envelope)
        except PoisonMessage as exc:
            return Verdict("ack", envelope, reason=f"{exc}")
        if not isinstance(message, Event):
            return Verdict("ack", envelope, reason=f"{envelope.type} is not an event")
        self._remember(envelope.id)
        return Verdict("deliver", envelope, message)

    def forget(self, message_id: str) -> None:
        """Take a requeued event's id back, so that its next delivery is not a duplicate."""
        self._seen.pop(message_id, None)

    def _remember(self, message_id: str) -> None:
        self._seen[message_id] = None
        while len(self._seen) > self._memory:
            self._seen.popitem(last=False)


class Subscription:
    """A server-named, exclusive, auto-delete queue of this connection, bound to the events
    exchange, and the events that arrive on it (``get``, or iterate).

    The queue exists from ``Broker.subscribe`` until ``close`` (or the broker's): events published
    meanwhile wait in it, so subscribe before publishing what you want to hear about. Close it
    when done (or use ``with``): the queue and its unread events then go.
    """

    def __init__(self, owner: "Broker", channel: Any, queue: str, bindings: tuple[str, ...], screen: Screen,
                 timeout: float | None):
        self._owner = owner
        self._channel = channel
        self._generation = owner._generation
        self.queue = queue
        self.bindings = bindings
        self.timeout = timeout
        self._screen = screen
        self._arrived: deque[Any] = deque()
        self._closed = False
        #: The broker closed this subscription's channel (``Broker._route_channel_close``).
        self._broken: BaseException | None = None

    # Called by py-amqp while some caller reads the connection, under the owner's lock: only keep it.
    def _arrive(self, message: Any) -> None:
        self._arrived.append(message)

    def get(self, timeout: float | None = None) -> Received | None:
        """The next believable event, waiting up to ``timeout`` seconds (None: forever); None when
        none came in time. Deliveries that fail the checks (``Screen``) are settled and skipped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._owner._lock:
                self._check_open()
                while self._arrived:
                    try:
                        received = self._admit(self._arrived.popleft())
                    except _CONNECTION_ERRORS as exc:
                        raise self._owner._lost(exc) from exc
                    if received is not None:
                        return received
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._owner._pump(_SLICE if remaining is None else min(remaining, _SLICE))
            # (The lock is let go between slices, so the heartbeat thread and acks get their turn.)

    def __iter__(self) -> Iterator[Received]:
        """Events until ``timeout`` (the subscription's) seconds pass without one; forever if None."""
        while (received := self.get(self.timeout)) is not None:
            yield received

    def _admit(self, message: Any) -> Received | None:
        """Screen one delivery; settle it here unless it is handed out."""
        properties = message.properties or {}
        info = message.delivery_info
        tag = info["delivery_tag"]
        verdict = self._screen.judge(message.body, properties.get("user_id"))
        if verdict.action == "reject":
            log.warning("dropped a forged event on %s (message id %s): %s", info.get("routing_key"),
                        properties.get("message_id"), verdict.reason)
            self._channel.basic_reject(tag, requeue=False)
            return None
        if verdict.action == "ack":
            if verdict.reason != "duplicate":
                log.warning("skipped an event on %s (message id %s): %s", info.get("routing_key"),
                            properties.get("message_id"), verdict.reason)
            self._channel.basic_ack(tag)
            return None
        assert verdict.envelope is not None and verdict.event is not None
        envelope = verdict.envelope
        return Received(verdict.event, envelope, info.get("routing_key", ""), bool(info.get("redelivered")),
                        properties["user_id"], lambda how: self._settle(tag, envelope.id, how))

    def _settle(self, tag: int, message_id: str, how: Literal["ack", "reject", "requeue"]) -> None:
        with self._owner._lock:
            self._check_open()
            try:
                if how == "ack":
                    self._channel.basic_ack(tag)
                else:
                    if how == "requeue":
                        self._screen.forget(message_id)
                    self._channel.basic_reject(tag, requeue=how == "requeue")
            except _CONNECTION_ERRORS as exc:
                raise self._owner._lost(exc) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerError("this subscription is closed")
        if self._broken is not None:
            code, text = _reply(self._broken)
            raise SubscriptionRefused(f"the broker closed this subscription's channel: {text} (its consumer is gone: "
                                      "subscribe again)", reply_code=code, reply_text=text)
        if self._generation != self._owner._generation:
            raise ConnectionFailed("the connection this subscription lived on was lost, and its queue with it: "
                                   "subscribe again (events published meanwhile were not kept)")

    def close(self) -> None:
        """Delete the queue (closing its channel: unsettled events go with it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._arrived.clear()
        self._owner._forget(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# --- publisher confirms -----------------------------------------------------------------------------


class _Confirms:
    """Confirm bookkeeping of the publishing channel: one command in flight at a time."""

    def __init__(self) -> None:
        self.sent = 0  # delivery tags count from 1 per channel
        self.outcome: bool | None = None
        self.returned: set[str | None] = set()

    def begin(self) -> None:
        self.sent += 1
        self.outcome = None
        self.returned.clear()

    def on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, True)

    def on_nack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, False)

    def on_return(self, _exc: Exception, _exchange: str, _routing_key: str, message: Any) -> None:
        # RabbitMQ sends basic.return before the basic.ack of the same message.
        self.returned.add((message.properties or {}).get("message_id"))

    def _settle(self, tag: int, multiple: bool, ok: bool) -> None:
        if tag == self.sent or (multiple and tag >= self.sent):
            self.outcome = ok


# --- the connection ---------------------------------------------------------------------------------


class Broker:
    """A connection to imagesvc's RabbitMQ as one broker user. See the module docstring.

    ``url``: the broker user's AMQP URL, on imagesvc's virtual host; for a RabbitMQ cluster, one URL
    per node separated by ``;`` (the same scheme, user and virtual host in each): a connection
    goes to the first that answers, trying them in turn (kombu's round-robin failover). ``user``: the imagesvc user to
    act as, also the ``user_id`` (default: the URL's user name; the broker refuses any other).
    ``prefix``: imagesvc's ``IMAGESVC_TOPOLOGY_PREFIX`` (empty in production). ``service_users``:
    imagesvc's ``IMAGESVC_SERVICE_USERS``, the only publishers whose events are believed.
    ``confirm_timeout``: seconds a publish waits for the broker's confirm. ``heartbeat``: the AMQP
    heartbeat interval, seconds (0 switches heartbeats off; not advised). ``connect_timeout``:
    seconds to connect.

    Connects on ``open`` (``with`` does it) or on first use; ``close`` ends the connection and every
    subscription. A connection lost is made again by the next ``publish`` or ``subscribe``;
    subscriptions made before it are gone (their ``get`` raises ConnectionFailed).
    """

    def __init__(self, url: str, *, user: str | None = None, prefix: str = "",
                 service_users: Iterable[str] = ("imagesvc",), confirm_timeout: float = 10.0,
                 heartbeat: float = 15, connect_timeout: float = 10.0):
        urls = [part.strip() for part in url.split(";") if part.strip()]
        if not urls:
            raise ValueError("no broker URL")
        nodes = [Connection(part) for part in urls]  # parsing only: no I/O
        for parsed in nodes:
            if parsed.transport_cls not in _AMQP_TRANSPORTS:
                raise ValueError(f"{parsed.transport_cls}:// is not RabbitMQ: the SDK speaks AMQP 0-9-1 "
                                 "(amqp://, amqps://); "
                                 "the embedded mode's memory:// broker cannot be reached from another process")
        if len({(n.transport_cls, n.userid, n.virtual_host) for n in nodes}) > 1:
            raise ValueError("the broker URLs (one per node of a cluster, ';'-separated) must share their scheme, "
                             "user and virtual host")
        parsed = nodes[0]
        self.url = url
        #: The URLs of the cluster's nodes (one, for a single broker).
        self.urls = tuple(urls)
        #: The broker user of the URL (kombu's default, guest, when the URL names none).
        self.connection_user: str = parsed.userid or "guest"
        self.user = user or self.connection_user
        self.prefix = prefix
        self.service_users = frozenset(service_users)
        if not self.service_users:
            raise ValueError("service_users is empty: no event could be believed")
        self.confirm_timeout = confirm_timeout
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        topology = build_topology(prefix, quorum=False)  # names only
        self.commands_exchange = topology.commands.name
        self.events_exchange = topology.events.name
        self._lock = threading.RLock()
        self._connection: Connection | None = None
        self._generation = 0
        self._publishing: Any = None  # the confirm-mode channel
        self._confirms = _Confirms()
        self._subscriptions: set[Subscription] = set()
        self._failure: BaseException | None = None  # what killed the connection (the heartbeat thread saw it)
        self._closed = False
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # -- publishing -------------------------------------------------------------------------------

    def prepare(self, command: Command, *, dc: str | None = None, task_id: str | None = None,
                message_id: str | None = None, node: str | None = None) -> OutgoingCommand:
        """The message ``publish`` would send (no I/O): see ``build_command``."""
        return build_command(command, user=self.user, commands_exchange=self.commands_exchange, dc=dc,
                             task_id=task_id, message_id=message_id, node=node)

    def publish(self, command: Command, *, dc: str | None = None, task_id: str | None = None,
                message_id: str | None = None, node: str | None = None) -> str:
        """Publish ``command`` as this broker's user, acting in datacenter ``dc``; returns its task id
        once the broker has confirmed it (persistent, routed to imagesvc's queue).

        ``task_id``/``message_id``: choose them to make a retry safe (the same ids are the same
        command to imagesvc); new UUIDs by default. ``node``: the compute node's hostname, for node
        commands (``image.snapshot``). Raises Nacked, Unroutable, ConfirmTimeout, PublishRefused
        (IdentityRefused when ``user`` is not the connection's user), ConnectionFailed; ValueError
        or TypeError for a command imagesvc would not read. The task's outcome comes as an event:
        see ``publish_and_wait``.
        """
        outgoing = self.prepare(command, dc=dc, task_id=task_id, message_id=message_id, node=node)
        self._send(outgoing)
        return outgoing.task_id

    def publish_and_wait(self, command: Command, *, dc: str | None = None, task_id: str | None = None,
                         message_id: str | None = None, node: str | None = None, timeout: float = 60,
                         datacenters: Iterable[str] | None = None) -> TaskSucceeded | TaskFailed:
        """Publish ``command`` and return its task's terminal event (``TaskSucceeded`` or
        ``TaskFailed``: a refusal is an outcome, not an exception). The queue for the outcome is
        bound before the publish, so the outcome cannot be missed. ``datacenters``: as for
        ``subscribe``, for a broker user whose topic permissions allow only some scopes. Raises
        what ``publish`` raises, and TaskTimeout."""
        with self.subscribe(_TERMINAL_PATTERNS, datacenters) as subscription:
            task = self.publish(command, dc=dc, task_id=task_id, message_id=message_id, node=node)
            return self.wait_for_task(task, timeout=timeout, subscription=subscription)

    def _send(self, outgoing: OutgoingCommand) -> None:
        ids = {"message_id": outgoing.message_id, "task_id": outgoing.task_id}
        with self._lock:
            channel = self._publishing_channel()
            confirms = self._confirms
            confirms.begin()
            deadline = time.monotonic() + self.confirm_timeout
            try:
                message = channel.prepare_message(outgoing.body, content_type="application/json",
                                                  content_encoding="utf-8", properties=dict(outgoing.properties))
                channel.basic_publish(message, exchange=outgoing.exchange, routing_key=outgoing.routing_key,
                                      mandatory=True)
                while confirms.outcome is None and (remaining := deadline - time.monotonic()) > 0:
                    self._pump(min(remaining, _SLICE))
            except ChannelError as exc:
                # The broker closed the channel over this publish (py-amqp has reopened it, without
                # confirms): a fresh one next time.
                self._drop_publishing_channel()
                raise _refusal(exc, outgoing) from exc
            except _CONNECTION_ERRORS as exc:
                raise self._lost(exc) from exc
            if confirms.outcome is None:
                # A late confirm would arrive on a channel nobody listens to any more.
                self._drop_publishing_channel()
                raise ConfirmTimeout(f"no confirm of {outgoing.envelope.type} (message {outgoing.message_id}) "
                                     f"within {self.confirm_timeout} s", **ids)
        if outgoing.message_id in confirms.returned:
            raise Unroutable(f"no queue is bound to {outgoing.exchange!r} for {outgoing.routing_key!r} "
                             "(is the prefix or the virtual host right? has that node's agent ever run?)", **ids)
        if confirms.outcome is False:
            raise Nacked(f"the broker refused {outgoing.envelope.type} (message {outgoing.message_id}): "
                         "a full queue refuses publishes; try again later", **ids)

    def _publishing_channel(self) -> Any:
        self._ensure_open()
        if self._publishing is None:
            confirms = _Confirms()
            try:
                channel = self._connection.channel()  # type: ignore[union-attr]
                channel.events["basic_ack"].add(confirms.on_ack)
                channel.events["basic_nack"].add(confirms.on_nack)
                channel.events["basic_return"].add(confirms.on_return)
                channel.confirm_select()
            except _CONNECTION_ERRORS as exc:
                raise self._lost(exc) from exc
            self._publishing, self._confirms = channel, confirms
        return self._publishing

    def _drop_publishing_channel(self) -> None:
        channel, self._publishing = self._publishing, None
        _close_quietly(channel)

    # -- subscribing ------------------------------------------------------------------------------

    def subscribe(self, event_types: Iterable[str] | str = ("image.#", "task.#"),
                  datacenters: Iterable[str] | None = None, *, include_global: bool = True, prefetch: int = 32,
                  timeout: float | None = None) -> Subscription:
        """Bind a new server-named exclusive queue to the events exchange with ``binding_keys(event_types,
        datacenters, include_global=...)`` and consume it; returns the ``Subscription`` (iterate it,
        or ``get``), which holds the queue until closed. The queue exists when this returns: events
        published afterwards are kept for it.

        ``prefetch``: deliveries unsettled at once. ``timeout``: iteration stops after that many
        seconds without an event (None: never). Raises SubscriptionRefused (e.g. topic permissions
        that do not allow a key), ConnectionFailed, ValueError for patterns (``binding_keys``).
        """
        keys = binding_keys(event_types, datacenters, include_global=include_global)
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        with self._lock:
            self._ensure_open()
            channel = None
            try:
                channel = self._connection.channel()  # type: ignore[union-attr]
                channel.basic_qos(0, prefetch, False)
                queue = channel.queue_declare("", exclusive=True, auto_delete=True).queue
                for key in keys:
                    channel.queue_bind(queue, self.events_exchange, routing_key=key)
                subscription = Subscription(self, channel, queue, keys, Screen(self.service_users), timeout)
                channel.basic_consume(queue, callback=subscription._arrive, no_ack=False)
            except ChannelError as exc:
                _close_quietly(channel)
                code, text = _reply(exc)
                raise SubscriptionRefused(f"the broker refused the subscription to {self.events_exchange!r} with "
                                          f"{', '.join(keys)}: {text}", reply_code=code, reply_text=text) from exc
            except _CONNECTION_ERRORS as exc:
                raise self._lost(exc) from exc
            self._subscriptions.add(subscription)
            return subscription

    def wait_for_task(self, task_id: str, timeout: float = 60, *, subscription: Subscription | None = None,
                      datacenters: Iterable[str] | None = None) -> TaskSucceeded | TaskFailed:
        """The terminal event (``TaskSucceeded`` or ``TaskFailed``) of ``task_id``.

        Only events published after the queue was bound can arrive: pass a ``subscription`` made
        before the command was published (one bound to its ``task.succeeded``/``task.failed``), or
        use ``publish_and_wait``; without one, a task that ended before this call is never heard of
        here (read ``GET /api/task/<task_id>/status/`` instead). Other events read on the way are
        acknowledged. Raises TaskTimeout.
        """
        if subscription is None:
            with self.subscribe(_TERMINAL_PATTERNS, datacenters) as made:
                return self.wait_for_task(task_id, timeout, subscription=made)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            received = subscription.get(remaining)
            if received is None:
                break
            received.ack()
            if received.envelope.correlation_id == task_id and isinstance(received.event, (TaskSucceeded, TaskFailed)):
                return received.event
        raise TaskTimeout(f"no outcome of task {task_id} within {timeout} s", task_id=task_id)

    def _forget(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription not in self._subscriptions:
                return
            self._subscriptions.discard(subscription)
            if subscription._generation == self._generation and self._failure is None:
                # Closing the channel cancels its consumer: the auto-delete queue goes.
                _close_quietly(subscription._channel)

    # -- the connection ---------------------------------------------------------------------------

    def open(self) -> "Broker":
        """Connect now (otherwise the first publish or subscribe does). Raises ConnectionFailed."""
        with self._lock:
            self._ensure_open()
        return self

    def _ensure_open(self) -> None:
        if self._closed:
            raise BrokerError("this Broker is closed")
        if self._failure is not None:
            self._discard()
        if self._connection is not None:
            return
        connection = Connection(list(self.urls), failover_strategy="round-robin", heartbeat=self.heartbeat,
                                connect_timeout=self.connect_timeout, transport_options={
                                    # Confirms are awaited here, not by py-amqp (which waits without
                                    # telling a return from an ack).
                                    "confirm_publish": False,
                                    "client_properties": {"connection_name": f"imagesvc-client {self.user}"},
                                })
        try:
            # Each URL once in turn (one URL: twice): kombu's default retries forever.
            connection.ensure_connection(max_retries=max(1, len(self.urls) - 1), interval_start=0,
                                         interval_step=0, interval_max=0, timeout=self.connect_timeout)
        except Exception as exc:  # noqa: BLE001 - refused, unreachable, bad credentials: all "no connection"
            _discard(connection)
            where = " or ".join(Connection(url).as_uri() for url in self.urls)  # as_uri hides the password
            raise ConnectionFailed(f"cannot connect to {where}: {exc}") from exc
        self._connection = connection
        self._generation += 1
        self._failure = None
        if self.heartbeat and self._ticker is None:
            self._ticker = threading.Thread(target=self._keep_alive, name="imagesvc-broker-heartbeat", daemon=True)
            self._ticker.start()

    def _pump(self, timeout: float) -> None:
        """Read what arrives within ``timeout`` seconds and dispatch it (deliveries to their
        subscription, confirms to the bookkeeping), then send a heartbeat if one is due. Under the lock."""
        connection = self._connection
        if connection is None:
            raise ConnectionFailed(f"not connected ({self._failure!r})" if self._failure else "not connected")
        try:
            try:
                connection.drain_events(timeout=max(timeout, 0.01))
            except socket.timeout:
                pass
            connection.heartbeat_check()
        except ChannelError as exc:
            if not self._route_channel_close(exc):
                raise  # the publishing channel's: ``_send`` reports it as that publish's refusal
        except _CONNECTION_ERRORS as exc:
            raise self._lost(exc) from exc

    def _route_channel_close(self, exc: ChannelError) -> bool:
        """The broker closed one channel (py-amqp reopened it, without its consumer): if it was a
        subscription's, mark that subscription broken (its next ``get`` raises) and return True;
        False for any other channel (the publishing one). Whichever caller happened to read the
        connection, the error reaches the channel's owner, not the reader."""
        closed = _closed_channel(exc)
        for subscription in self._subscriptions:
            if closed is not None and subscription._channel is closed:
                subscription._broken = exc
                log.warning("the broker closed subscription %s's channel: %s", subscription.queue, exc)
                return True
        return False

    def _keep_alive(self) -> None:
        """The heartbeat thread: while nobody else reads the connection (the caller works on an
        event, or between calls), read what arrived and send heartbeats, so the broker does not
        take the connection for dead (RabbitMQ closes it after two missed heartbeats)."""
        interval = max(self.heartbeat / 4, 0.5)
        while not self._stop.wait(interval):
            if not self._lock.acquire(blocking=False):
                continue  # a caller is reading the connection: it does the heartbeat duty
            try:
                connection = self._connection
                if connection is None or self._failure is not None:
                    continue
                sock = _socket_of(connection)
                if sock is not None and select.select([sock], [], [], 0)[0]:
                    connection.drain_events(timeout=0.05)
                connection.heartbeat_check()
            except socket.timeout:
                pass
            except ChannelError as exc:
                # The broker closed one channel (py-amqp reopened it): the connection lives on.
                if not self._route_channel_close(exc):
                    # Not a subscription's: the publishing one, outside any publish (its owner,
                    # ``_send``, holds the lock while it publishes). A fresh one next time.
                    self._drop_publishing_channel()
                    log.warning("the broker closed the publishing channel: %s", exc)
            except Exception as exc:  # noqa: BLE001 - remembered; the next call reconnects or reports it
                log.warning("broker connection lost: %r", exc)
                self._failure = exc
            finally:
                self._lock.release()

    def _lost(self, exc: BaseException) -> ConnectionFailed:
        """Mark the connection dead (the next publish makes a new one) and describe it."""
        self._failure = exc
        return ConnectionFailed(f"the broker connection was lost: {exc!r}")

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        self._publishing = None
        self._subscriptions.clear()
        _discard(connection)

    def close(self) -> None:
        """Close every subscription and the connection. Idempotent."""
        self._stop.set()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            connection, self._connection = self._connection, None
            for subscription in self._subscriptions:
                subscription._closed = True
            self._subscriptions.clear()
            self._publishing = None
            if connection is None:
                return
            if self._failure is not None:
                _discard(connection)
                return
            sock = _socket_of(connection)
            try:
                if sock is not None:
                    sock.settimeout(5)  # a graceful close waits for close-ok: not forever
                connection.release()
            except Exception:  # noqa: BLE001 - it is going away either way
                _discard(connection)

    def __enter__(self) -> "Broker":
        return self.open()

    def __exit__(self, *_exc: object) -> None:
        self.close()


_TERMINAL_PATTERNS = (TaskSucceeded.TYPE, TaskFailed.TYPE)


def _reply(exc: BaseException) -> tuple[int | None, str]:
    code = getattr(exc, "reply_code", None) or getattr(exc, "code", None)
    return code, str(getattr(exc, "reply_text", None) or exc)


def _closed_channel(exc: BaseException) -> Any:
    """The py-amqp channel whose ``Channel.Close`` raised ``exc`` (its ``_on_close`` frame), or None."""
    traceback = exc.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code.co_name == "_on_close" and isinstance(frame.f_locals.get("self"), AmqpChannel):
            return frame.f_locals["self"]
        traceback = traceback.tb_next
    return None


def _refusal(exc: BaseException, outgoing: OutgoingCommand) -> PublishRefused:
    code, text = _reply(exc)
    ids = {"message_id": outgoing.message_id, "task_id": outgoing.task_id, "reply_code": code, "reply_text": text}
    if code == _PRECONDITION_FAILED and "user_id" in text:
        return IdentityRefused(f"the broker refused user_id {outgoing.properties['user_id']!r}: {text} "
                               "(a broker user may publish as itself only)", **ids)
    return PublishRefused(f"the broker refused the publish to {outgoing.exchange!r}: {text}", **ids)


def _socket_of(connection: Connection) -> socket.socket | None:
    # Never kombu's ``connection.connection`` or py-amqp's ``transport`` properties: they connect
    # when there is no connection.
    transport = getattr(getattr(connection, "_connection", None), "_transport", None)
    return getattr(transport, "sock", None)


def _close_quietly(channel: Any) -> None:
    if channel is None:
        return
    try:
        channel.close()
    except Exception:  # noqa: BLE001 - a channel the broker closed, or a dead connection
        pass


def _discard(connection: Connection | None) -> None:
    """Drop a connection without talking to the broker (a graceful close of a dead connection can
    wait forever for the broker's close-ok)."""
    if connection is None:
        return
    sock = _socket_of(connection)
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass
    try:
        connection.collect()
    except Exception:  # noqa: BLE001
        pass
