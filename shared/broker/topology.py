"""Every exchange and queue imagesvc uses, declared in one place.

Names (``<prefix>`` is empty in production, random in tests):

- ``<prefix>imagesvc.commands`` (direct, durable): commands, routing key = command type.
  Queues ``<prefix><service>.commands`` bound with the types that service owns.
- Node agents: queue ``<prefix>node.<hostname>.commands`` per compute node, on the same commands
  exchange, bound with ``node_routing_key(type, hostname)`` = ``<type>@<hostname>`` for each type
  in ``NODE_COMMAND_TYPES`` (``@`` can be in neither a command type nor a hostname, so no key
  addresses two nodes). A command published with that key reaches that node's agent only; an
  unknown node (no queue yet) makes the publish unroutable. Node queues are not part of
  ``all_queues()``: each agent declares its own (``Topology.for_node``), as may a publisher that
  wants commands to wait for an agent that has not started yet.
- ``<prefix>imagesvc.events`` (topic, durable): imagesvc's own events (image, task), routing key
  = ``<type>.dc.<datacenter word>`` or ``<type>.global`` (``shared.contracts.routing``); only
  imagesvc's service users may write to it. Subscribers bind their own queues.
- ``<prefix>imagesvc.inventory`` (topic, durable): other systems' facts (``node.*``, ``vm.*``),
  routing key = event type; their publishers write here and nowhere else. (A separate exchange
  because RabbitMQ checks topic permissions on the routing key only, not on ``CC``/``BCC``
  headers: a publisher allowed ``node.*`` on the events exchange could copy its messages into any
  subscriber's queue.)
  Queue ``<prefix>projector.events`` is bound to both (``#``; ``node.#`` and ``vm.#``).
- ``<prefix>imagesvc.dlx`` (direct, durable): dead letters; each work queue has
  ``<queue>.dlq`` bound with routing key ``<queue>.dlq``.
- ``<prefix>imagesvc.task-notifications`` (direct): "the read model has caught up with task X",
  routed to the one gateway that submitted the task (routing key = the command's ``reply_to``),
  each gateway listening on an exclusive queue; transient.

On RabbitMQ the work queues are quorum queues with a delivery limit and at-least-once
dead-lettering (the broker's safety net for messages that crash their consumer), and every queue
has a length limit with ``reject-publish`` overflow: a publish into a full queue is nacked (the
gateway answers 503, the relay keeps the event in its outbox), never dropped after a confirm. On
the in-memory transport the same names are declared without broker arguments. Redeclaring a
queue with different arguments fails (PRECONDITION_FAILED): change a queue's type by renaming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from kombu import Exchange, Queue, binding

from imagesvc.shared.contracts.events import node_hostname_problem
from imagesvc.shared.contracts.routing import INVENTORY_FAMILIES

#: Which command types each consumer service owns.
COMMAND_ROUTES: dict[str, tuple[str, ...]] = {
    "importer": ("image.import", "imagestore.refresh"),
    "updater": ("image.update", "image.attach", "image.detach"),
    "deleter": ("image.delete",),
}

#: Command types a node agent handles, each routed to one node (``node_routing_key``).
NODE_COMMAND_TYPES: tuple[str, ...] = ("image.snapshot",)

#: RabbitMQ's limit on a queue name, in bytes.
_QUEUE_NAME_MAX = 255

#: Broker-side delivery limit: a message that keeps crashing its consumer is dead-lettered.
#: (Our own retries republish a fresh copy, so this counts only deliveries that were never
#: settled: a consumer that died or lost its connection holding the message.) A net behind the
#: runner's own count, which decides a delivery with more than ``max_attempts`` (5) returns
#: behind it, with a terminal event: kept well above it, because a message also counts the
#: returns it spent unseen in the prefetch of processes that crashed (a crash loop of ten lives
#: dead-lettered a command that had already succeeded when this was 5).
BROKER_DELIVERY_LIMIT = 20

#: Default length limits (``IMAGESVC_QUEUE_MAX_LENGTH``, ``IMAGESVC_DEAD_LETTER_MAX_LENGTH``): messages.
QUEUE_MAX_LENGTH = 100_000
DEAD_LETTER_MAX_LENGTH = 10_000
#: Byte limits beside them (a command is a few KiB; messages are at most IMAGESVC_MAX_MESSAGE_BYTES).
QUEUE_MAX_BYTES = 512 * 1024 * 1024
DEAD_LETTER_MAX_BYTES = 128 * 1024 * 1024


@dataclass(frozen=True)
class QueueLimits:
    """Length limits of the work queues and of the dead-letter queues (RabbitMQ only)."""

    queue: int = QUEUE_MAX_LENGTH
    dead_letters: int = DEAD_LETTER_MAX_LENGTH


@dataclass(frozen=True)
class Topology:
    prefix: str
    quorum: bool
    commands: Exchange
    events: Exchange
    inventory: Exchange
    dlx: Exchange
    notifications: Exchange
    limits: QueueLimits = QueueLimits()
    command_queues: dict[str, Queue] = field(default_factory=dict)
    projector_queue: Queue | None = None
    dead_letter_queues: dict[str, Queue] = field(default_factory=dict)
    #: Node agents' queues this process declares (``for_node``), by hostname.
    node_queues: dict[str, Queue] = field(default_factory=dict)

    def work_queue(self, service: str) -> Queue:
        """The queue a consumer service consumes (``projector`` or a command service)."""
        if service == "projector":
            assert self.projector_queue is not None
            return self.projector_queue
        return self.command_queues[service]

    def dead_letter_routing_key(self, queue_name: str) -> str:
        return f"{queue_name}.dlq"

    def all_queues(self) -> list[Queue]:
        return [*self.command_queues.values(), self.projector_queue, *self.node_queues.values(),  # type: ignore[list-item]
                *self.dead_letter_queues.values()]

    def node_queue(self, hostname: str, command_types: tuple[str, ...] = NODE_COMMAND_TYPES) -> Queue:
        """The work queue of the node agent of ``hostname``, bound with ``node_routing_key(t, hostname)``
        for each of ``command_types``. Raises ValueError for a hostname that cannot name a node."""
        name = node_queue_name(hostname, self.prefix)
        return _work_queue(name, [binding(self.commands, routing_key=node_routing_key(t, hostname))
                                  for t in command_types], self.dlx, self.quorum, self.limits)

    def for_node(self, hostname: str, command_types: tuple[str, ...] = NODE_COMMAND_TYPES) -> "Topology":
        """This topology plus the queue of ``hostname``'s node agent and its dead-letter queue
        (what that agent declares, and consumes from ``node_queues[hostname]``)."""
        queue = self.node_queue(hostname, command_types)
        return replace(self, node_queues={**self.node_queues, hostname: queue},
                       dead_letter_queues={**self.dead_letter_queues,
                                           queue.name: _dead_letter_queue(queue.name, self.dlx, self.quorum,
                                                                          self.limits)})

    def declare(self, channel) -> None:
        """Declare every exchange, queue and binding (idempotent; fails fast on a mismatch)."""
        for exchange in (self.commands, self.events, self.inventory, self.dlx, self.notifications):
            exchange(channel).declare()
        for queue in self.all_queues():
            queue(channel).declare()


def node_routing_key(command_type: str, hostname: str) -> str:
    """The routing key that delivers a command of ``command_type`` to the node agent of
    ``hostname`` (publish it on the commands exchange)."""
    return f"{command_type}@{hostname}"


def node_queue_name(hostname: str, prefix: str = "") -> str:
    """``<prefix>node.<hostname>.commands``; raises ValueError for a hostname that cannot name a
    node or would make the queue's name (or its ``.dlq``) longer than RabbitMQ allows."""
    problem = node_hostname_problem(hostname)
    if problem:
        raise ValueError(problem)
    name = f"{prefix}node.{hostname}.commands"
    if len(f"{name}.dlq".encode()) > _QUEUE_NAME_MAX:
        raise ValueError(f"hostname is too long for a queue name ({len(hostname)} characters)")
    return name


def _work_queue(name: str, bindings: list[binding], dlx: Exchange, quorum: bool, limits: QueueLimits) -> Queue:
    arguments = None
    if quorum:
        arguments = {
            "x-queue-type": "quorum",
            "x-delivery-limit": BROKER_DELIVERY_LIMIT,
            "x-dead-letter-exchange": dlx.name,
            "x-dead-letter-routing-key": f"{name}.dlq",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-max-length": limits.queue,
            "x-max-length-bytes": QUEUE_MAX_BYTES,
        }
    return Queue(name, bindings=bindings, durable=True, queue_arguments=arguments)


def _dead_letter_queue(name: str, dlx: Exchange, quorum: bool, limits: QueueLimits) -> Queue:
    # A full dead-letter queue nacks: the runner logs what it could not keep (shared.broker.consumer).
    arguments = {"x-queue-type": "quorum", "x-overflow": "reject-publish", "x-max-length": limits.dead_letters,
                 "x-max-length-bytes": DEAD_LETTER_MAX_BYTES} if quorum else None
    return Queue(f"{name}.dlq", exchange=dlx, routing_key=f"{name}.dlq", durable=True, queue_arguments=arguments)


def build_topology(prefix: str = "", *, quorum: bool = True, limits: QueueLimits = QueueLimits()) -> Topology:
    """Build the topology objects (no I/O). ``quorum`` is for RabbitMQ; off for ``memory://``."""
    commands = Exchange(f"{prefix}imagesvc.commands", type="direct", durable=True)
    events = Exchange(f"{prefix}imagesvc.events", type="topic", durable=True)
    inventory = Exchange(f"{prefix}imagesvc.inventory", type="topic", durable=True)
    dlx = Exchange(f"{prefix}imagesvc.dlx", type="direct", durable=True)
    # (Renamed from the fanout "imagesvc.notifications": an exchange cannot change type in place.)
    notifications = Exchange(f"{prefix}imagesvc.task-notifications", type="direct", durable=False, delivery_mode=1)

    command_queues = {
        service: _work_queue(f"{prefix}{service}.commands", [binding(commands, routing_key=t) for t in types], dlx,
                             quorum, limits)
        for service, types in COMMAND_ROUTES.items()
    }
    projector_queue = _work_queue(
        f"{prefix}projector.events",
        [binding(events, routing_key="#"),
         *[binding(inventory, routing_key=f"{kind}.#") for kind in sorted(INVENTORY_FAMILIES)]],
        dlx, quorum, limits)
    dead_letters = {q.name: _dead_letter_queue(q.name, dlx, quorum, limits)
                    for q in [*command_queues.values(), projector_queue]}
    return Topology(
        prefix=prefix,
        quorum=quorum,
        commands=commands,
        events=events,
        inventory=inventory,
        dlx=dlx,
        notifications=notifications,
        command_queues=command_queues,
        projector_queue=projector_queue,
        dead_letter_queues=dead_letters,
        limits=limits,
    )
