"""Every exchange and queue imagesvc uses, declared in one place.

Names (``<prefix>`` is empty in production, random in tests):

- ``<prefix>imagesvc.commands`` (direct, durable): commands, routing key = command type.
  Queues ``<prefix><service>.commands`` bound with the types that service owns.
- ``<prefix>imagesvc.events`` (topic, durable): events, routing key = event type.
  Queue ``<prefix>projector.events`` bound with ``#``; subscribers bind their own queues.
- ``<prefix>imagesvc.dlx`` (direct, durable): dead letters; each work queue has
  ``<queue>.dlq`` bound with routing key ``<queue>.dlq``.
- ``<prefix>imagesvc.task-notifications`` (direct): "the read model has caught up with task X",
  routed to the one gateway that submitted the task (routing key = the command's ``reply_to``),
  each gateway listening on an exclusive queue; transient.

On RabbitMQ the work queues are quorum queues with a delivery limit and at-least-once
dead-lettering (the broker's safety net for messages that crash their consumer); on the
in-memory transport the same names are declared without broker arguments. Redeclaring a
queue with different arguments fails (PRECONDITION_FAILED): change a queue's type by renaming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kombu import Exchange, Queue, binding

#: Which command types each consumer service owns.
COMMAND_ROUTES: dict[str, tuple[str, ...]] = {
    "importer": ("image.import", "imagestore.refresh"),
    "updater": ("image.update", "image.attach", "image.detach"),
    "deleter": ("image.delete",),
}

#: Broker-side delivery limit: a message that keeps crashing its consumer is dead-lettered.
#: (Our own retries republish a fresh copy, so this counts only deliveries that were never
#: settled: a consumer that died or lost its connection holding the message.)
BROKER_DELIVERY_LIMIT = 5


@dataclass(frozen=True)
class Topology:
    prefix: str
    quorum: bool
    commands: Exchange
    events: Exchange
    dlx: Exchange
    notifications: Exchange
    command_queues: dict[str, Queue] = field(default_factory=dict)
    projector_queue: Queue | None = None
    dead_letter_queues: dict[str, Queue] = field(default_factory=dict)

    def work_queue(self, service: str) -> Queue:
        """The queue a consumer service consumes (``projector`` or a command service)."""
        if service == "projector":
            assert self.projector_queue is not None
            return self.projector_queue
        return self.command_queues[service]

    def dead_letter_routing_key(self, queue_name: str) -> str:
        return f"{queue_name}.dlq"

    def all_queues(self) -> list[Queue]:
        return [*self.command_queues.values(), self.projector_queue, *self.dead_letter_queues.values()]  # type: ignore[list-item]

    def declare(self, channel) -> None:
        """Declare every exchange, queue and binding (idempotent; fails fast on a mismatch)."""
        for exchange in (self.commands, self.events, self.dlx, self.notifications):
            exchange(channel).declare()
        for queue in self.all_queues():
            queue(channel).declare()


def build_topology(prefix: str = "", *, quorum: bool = True) -> Topology:
    """Build the topology objects (no I/O). ``quorum`` is for RabbitMQ; off for ``memory://``."""
    commands = Exchange(f"{prefix}imagesvc.commands", type="direct", durable=True)
    events = Exchange(f"{prefix}imagesvc.events", type="topic", durable=True)
    dlx = Exchange(f"{prefix}imagesvc.dlx", type="direct", durable=True)
    # (Renamed from the fanout "imagesvc.notifications": an exchange cannot change type in place.)
    notifications = Exchange(f"{prefix}imagesvc.task-notifications", type="direct", durable=False, delivery_mode=1)

    def work_queue(name: str, bindings: list[binding]) -> Queue:
        arguments = None
        if quorum:
            arguments = {
                "x-queue-type": "quorum",
                "x-delivery-limit": BROKER_DELIVERY_LIMIT,
                "x-dead-letter-exchange": dlx.name,
                "x-dead-letter-routing-key": f"{name}.dlq",
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }
        return Queue(name, bindings=bindings, durable=True, queue_arguments=arguments)

    def dead_letter_queue(name: str) -> Queue:
        arguments = {"x-queue-type": "quorum"} if quorum else None
        return Queue(f"{name}.dlq", exchange=dlx, routing_key=f"{name}.dlq", durable=True, queue_arguments=arguments)

    command_queues = {
        service: work_queue(f"{prefix}{service}.commands", [binding(commands, routing_key=t) for t in types])
        for service, types in COMMAND_ROUTES.items()
    }
    projector_queue = work_queue(f"{prefix}projector.events", [binding(events, routing_key="#")])
    dead_letters = {q.name: dead_letter_queue(q.name) for q in [*command_queues.values(), projector_queue]}
    return Topology(
        prefix=prefix,
        quorum=quorum,
        commands=commands,
        events=events,
        dlx=dlx,
        notifications=notifications,
        command_queues=command_queues,
        projector_queue=projector_queue,
        dead_letter_queues=dead_letters,
    )
