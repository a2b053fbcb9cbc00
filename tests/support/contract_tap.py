"""The contract tap: what imagesvc puts on a distributed test system's broker must match its
published message contract (docs/messages.md; the JSON Schemas generated from the payload classes).

``start_distributed`` starts one per system (``System.contract_tap``) and ``System.stop`` calls
``check``, which fails the run with the offending messages listed. The tap binds a server-named,
exclusive queue of its own and collects what arrives on a thread of its own (pika, like
``tests.support.tap``). For each message it checks the envelope and payload against
``envelope_schema`` of the message's type, the AMQP properties against the message's ``headers``
in the AsyncAPI document (and that they repeat the envelope's ids and type), and the exchange and
routing key against the ones the contract gives the type (``problem``).

*What it listens to.* The tap must not change what the broker routes, so it binds only keys the
system's own queues are bound to: on the events and inventory exchanges (topic) the projector's
patterns, on the commands exchange (direct: ``#`` would match only the literal key ``#``) the
command types the services' queues are bound to. Node commands (``<type>@<hostname>``) are not
tapped: binding a node's key would make a command for a node without an agent routable, which the
contract says it is not. A test that unbinds a service's queue to make its commands unroutable
unbinds the tap too (``unbound(system.contract_tap, exchange, key)``).

*Whose messages it checks.* Those whose AMQP ``user_id`` is one of the system's service users
(``IMAGESVC_SERVICE_USERS``, by default the broker URL's user; RabbitMQ vouches for ``user_id``):
what imagesvc publishes, and what tests publish in its name. The messages that tests put on the
broker on purpose to be refused (forged actors, other users' commands, unreadable envelopes) are
published as other broker users or without ``user_id``, and imagesvc refuses them by that same
rule, so they need no opt-out here; the malformed bodies of the poison-message tests go straight
to a queue (the default exchange), where the tap is not bound. ``IMAGESVC_TEST_CONTRACT_TAP=off``
turns the tap off for a run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import urlsplit

import orjson
import pika
from jsonschema import Draft202012Validator

from imagesvc.services.gateway import asyncapi
from imagesvc.shared.broker.topology import COMMAND_ROUTES, build_topology
from imagesvc.shared.contracts import COMMAND_TYPES, MESSAGE_TYPES
from imagesvc.shared.contracts.routing import is_inventory, route
from imagesvc.shared.contracts.schema import envelope_schema
from tests.support.tap import _parameters

#: How long ``check`` waits at most for messages still on their way once the system stopped.
DRAIN_SECONDS = 3.0
#: Longest body excerpt shown in a report.
EXCERPT = 300


@dataclass(frozen=True)
class Received:
    """One message as the tap received it."""

    exchange: str
    routing_key: str
    properties: pika.BasicProperties
    body: bytes


class ContractTap:
    """Collects what the system's service users publish on its exchanges, and checks it on ``check``.

    ``broker_url``: the system's broker (the tap connects as that user); ``prefix``: its topology
    prefix; ``services``: the broker users whose messages are checked."""

    def __init__(self, broker_url: str, prefix: str, services: frozenset[str]):
        self._params = _parameters(broker_url)
        self._params.connection_attempts, self._params.socket_timeout = 1, 5
        self._services = services
        topology = build_topology(prefix)
        self.exchanges = {"commands": topology.commands.name, "events": topology.events.name,
                          "inventory": topology.inventory.name}
        projector = topology.projector_queue
        assert projector is not None
        self._wanted = frozenset(
            {(topology.commands.name, key) for types in COMMAND_ROUTES.values() for key in types}
            | {(b.exchange.name, b.routing_key) for b in projector.bindings})
        self._lock = threading.Lock()
        self._paused: set[tuple[str, str]] = set()
        self._bound: frozenset[tuple[str, str]] = frozenset()
        self._received: list[Received] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._checked = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="contract-tap", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            self._stop.set()
            raise RuntimeError("the contract tap could not bind its queue within 15 s")

    @classmethod
    def for_system(cls, broker_url: str, prefix: str, env: dict[str, str]) -> "ContractTap | None":
        """The tap of a system started with ``env`` on ``broker_url``; None when turned off."""
        if os.environ.get("IMAGESVC_TEST_CONTRACT_TAP", "on").strip().lower() in ("off", "0", "no", "false"):
            return None
        configured = [u.strip() for u in env.get("IMAGESVC_SERVICE_USERS", "").split(",") if u.strip()]
        return cls(broker_url, prefix, frozenset(configured or [urlsplit(broker_url).username or "guest"]))

    # --- collecting (the tap's thread) ----------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._consume()
                return
            except (pika.exceptions.AMQPError, OSError):
                # The broker went away (a fault test restarts or cuts it): bind a new queue once it
                # is back. What was published meanwhile is not seen, and not judged.
                self._bound = frozenset()
                self._stop.wait(0.5)
            except BaseException as exc:  # a bug of the tap's own: check() reports it
                self._failure = exc
                return

    def _consume(self) -> None:
        connection = pika.BlockingConnection(self._params)
        try:
            channel = connection.channel()
            queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            self._bound = frozenset()
            channel.basic_consume(queue, self._on_message, auto_ack=True)
            self._sync(channel, queue)
            self._ready.set()
            drained_by: float | None = None
            while True:
                self._sync(channel, queue)
                before = len(self._received)
                connection.process_data_events(time_limit=0.1)
                if self._stop.is_set():
                    drained_by = drained_by or time.monotonic() + DRAIN_SECONDS
                    if len(self._received) == before or time.monotonic() > drained_by:
                        return  # a whole pass brought nothing: what was published is in
        finally:
            with contextlib.suppress(Exception):
                connection.close()

    def _on_message(self, channel, method, properties, body: bytes) -> None:
        with self._lock:
            self._received.append(Received(method.exchange, method.routing_key, properties, body))

    def _sync(self, channel, queue: str) -> None:
        """Bind and unbind the tap's queue until its bindings are the wanted ones but the paused."""
        with self._lock:
            target = self._wanted - self._paused
        for exchange, key in sorted(target - self._bound):
            channel.queue_bind(queue, exchange, routing_key=key)
        for exchange, key in sorted(self._bound - target):
            channel.queue_unbind(queue, exchange, routing_key=key)
        self._bound = target

    # --- the tests' side ------------------------------------------------------------------------

    @contextlib.contextmanager
    def unbound(self, exchange: str, routing_key: str) -> Iterator[None]:
        """Inside the block the tap is not bound to ``routing_key`` on ``exchange`` (so that a test
        can make that key unroutable); the messages it would have received are not checked."""
        self._pause((exchange, routing_key), True)
        try:
            yield
        finally:
            self._pause((exchange, routing_key), False)

    def _pause(self, binding: tuple[str, str], paused: bool) -> None:
        with self._lock:
            (self._paused.add if paused else self._paused.discard)(binding)
            target = self._wanted - self._paused
        deadline = time.monotonic() + 10
        while self._bound != target:  # the tap's thread applies it within a pass (0.1 s)
            assert time.monotonic() < deadline, f"the contract tap did not {'un' * paused}bind {binding} in 10 s"
            time.sleep(0.02)

    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def check(self) -> None:
        """Stop collecting (once the messages still on their way arrived) and raise AssertionError
        listing each checked message that breaks the contract. Only the first call checks."""
        if self._checked:
            return
        self._checked = True
        self._stop.set()
        self._thread.join(timeout=DRAIN_SECONDS + 10)
        if self._failure is not None:
            raise AssertionError(f"the contract tap failed: {self._failure!r}") from self._failure
        problems = self.problems()
        assert not problems, (f"{len(problems)} message(s) on the broker break the message contract "
                              "(docs/asyncapi.md):\n  " + "\n  ".join(problems))

    def problems(self) -> list[str]:
        """One line per message of a service user that breaks the contract (each distinct one once)."""
        found, seen = [], set()
        for message in self.messages():
            if message.properties.user_id not in self._services or (message.routing_key, message.body) in seen:
                continue
            seen.add((message.routing_key, message.body))
            why = problem(message, self.exchanges)
            if why:
                found.append(f"{message.exchange} {message.routing_key!r}: {why}; body {message.body[:EXCERPT]!r}")
        return found


def unbound(tap: ContractTap | None, exchange: str, routing_key: str) -> contextlib.AbstractContextManager:
    """``tap.unbound(exchange, routing_key)``, or nothing to do for a system without a tap."""
    return tap.unbound(exchange, routing_key) if tap is not None else contextlib.nullcontext()


def problem(message: Received, exchanges: dict[str, str]) -> str | None:
    """Why ``message`` breaks the contract, or None. ``exchanges``: the names of the system's
    ``commands``, ``events`` and ``inventory`` exchanges."""
    try:
        data = orjson.loads(message.body)
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(data, dict) or data.get("type") not in MESSAGE_TYPES:
        return "not an envelope of a message type of the contract"
    name = data["type"]
    errors = _errors(_body_validator(name), data) + _errors(_properties_validator(name), _properties(message))
    if errors:
        return "; ".join(errors)
    props = message.properties
    if (props.message_id, props.correlation_id, props.type) != (data["id"], data["correlation_id"], name):
        return "the AMQP message_id, correlation_id and type are not the envelope's id, correlation_id and type"
    channel = "commands" if name in COMMAND_TYPES else "inventory" if is_inventory(name) else "events"
    if message.exchange != exchanges[channel]:
        return f"published to {message.exchange}, not {exchanges[channel]}"
    if channel == "events":
        routing = route(name, data["payload"])
        if message.routing_key not in (routing.key, *routing.cc):
            return f"routing key is not {routing.key!r}"
    elif message.routing_key != name:
        return f"routing key is not {name!r}"
    return None


def _properties(message: Received) -> dict[str, Any]:
    props = message.properties
    values = {"content_type": props.content_type, "delivery_mode": props.delivery_mode,
              "message_id": props.message_id, "correlation_id": props.correlation_id, "type": props.type,
              "user_id": props.user_id, "headers": props.headers}
    return {key: value for key, value in values.items() if value is not None}


def _errors(validator: Draft202012Validator, instance: Any) -> list[str]:
    return [f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message[:200]}"
            for error in validator.iter_errors(instance)]


@functools.cache
def _body_validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(envelope_schema(MESSAGE_TYPES[name]))


@functools.cache
def _properties_validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(asyncapi.document()["components"]["messages"][name]["headers"])
