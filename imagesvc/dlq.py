"""``imagesvc dlq ...``: list, replay and purge the dead-letter queues on RabbitMQ.

Every work queue ``<q>`` has ``<q>.dlq`` (``shared.broker.topology``). A message gets there two
ways: the consumer runner gave up on it (it carries ``x-imagesvc-death-reason`` and
``x-imagesvc-original-queue``), or the broker's delivery limit dead-lettered it after the
message crashed its consumer repeatedly (it carries the broker's ``x-death``).

Browsing takes the messages with ``basic.get`` and manual acks, never acking any it only looks
at, and hands them back at the end (``basic.reject`` with requeue, in the order taken): nothing
is lost (a crash of this command returns them just the same, when its connection closes), and
the queue's order is kept (a quorum queue delivers returned messages first, in the order they
came back). A browse takes at most the messages the queue held when it started. Each look
counts as a delivery in the message's ``x-delivery-count`` (quorum queues); the dead-letter
queues have no delivery limit, and a replay drops that header.

A replay republishes the message, body and properties unchanged (its message id above all, so a
command that was handled after all is a duplicate to its consumer's inbox and a no-op), to the
queue it died in, by name through the default exchange: a dead-letter queue belongs to one work
queue, and the original exchange (a topic, for events) could reach other queues too. Its attempt
count starts afresh. Only once the broker confirmed the copy is the dead letter acked.

In the embedded mode (``memory://``) the dead-letter queues live inside the ``imagesvc serve``
process, out of this command's reach: it says so and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator

from imagesvc.shared.config import Settings

#: Headers that describe a death, dropped from a replayed copy.
_DEATH_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
                  "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", "x-delivery-count")
REPLAYED_HEADER = "x-imagesvc-replayed"
PREVIEW_BYTES = 80


def register(commands: argparse._SubParsersAction) -> None:
    dlq = commands.add_parser("dlq", help="dead-letter queues (RabbitMQ): list, replay, purge")
    verbs = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = verbs.add_parser("list", help="every dead-letter queue and its depth, or the messages of one")
    listing.add_argument("queue", nargs="?", help="a work queue (importer.commands), its .dlq, or a service name")
    listing.add_argument("--limit", type=int, default=1000, help="most messages to show (default 1000)")
    listing.set_defaults(func=_list)
    replay = verbs.add_parser("replay", help="send dead letters back to the queue they died in")
    replay.add_argument("queue")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", dest="message_id", help="the message id of the one to replay")
    which.add_argument("--all", action="store_true", help="replay every message in the queue")
    replay.set_defaults(func=_replay)
    purge = verbs.add_parser("purge", help="delete every message of a dead-letter queue")
    purge.add_argument("queue")
    purge.add_argument("--yes", action="store_true", help="really delete them")
    purge.set_defaults(func=_purge)


class DlqError(Exception):
    """A refusal of this command, said in one sentence (exit code 2)."""


@dataclass(frozen=True)
class DeadLetter:
    delivery_tag: int
    body: bytes
    properties: dict[str, Any]
    headers: dict[str, Any]

    @property
    def message_id(self) -> str | None:
        return self.properties.get("message_id")

    def original_routing_key(self) -> str | None:
        """The routing key the message was first published with, as the broker recorded it when
        it dead-lettered the message itself (``x-death``); None for our own dead letters."""
        deaths = self.headers.get("x-death") or []
        keys = deaths[0].get("routing-keys") if deaths else None
        return _text(keys[0]) if keys else None

    def origin(self, dead_letter_queue: str) -> str:
        """The queue the message died in."""
        from imagesvc.shared.broker.consumer import ORIGINAL_QUEUE_HEADER

        if self.headers.get(ORIGINAL_QUEUE_HEADER):
            return str(self.headers[ORIGINAL_QUEUE_HEADER])
        deaths = self.headers.get("x-death") or []
        if deaths and deaths[0].get("queue"):
            return str(deaths[0]["queue"])
        return dead_letter_queue.removesuffix(".dlq")

    def describe(self, dead_letter_queue: str) -> dict[str, Any]:
        from imagesvc.shared.broker.consumer import ATTEMPT_HEADER, DEATH_REASON_HEADER

        deaths = self.headers.get("x-death") or []
        reason = self.headers.get(DEATH_REASON_HEADER)
        if reason is None and deaths:
            reason = f"broker: {deaths[0].get('reason')}"
        return {
            "message_id": self.message_id,
            "type": self.properties.get("type"),
            "task_id": self.properties.get("correlation_id"),
            "reason": _text(reason),
            "attempts": self.headers.get(ATTEMPT_HEADER),
            "deaths": sum(int(d.get("count", 1)) for d in deaths) if deaths else None,
            "queue": self.origin(dead_letter_queue),
            "body": self.body[:PREVIEW_BYTES].decode("utf-8", "replace"),
        }


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


_EMBEDDED = ("the embedded mode's dead-letter queues (memory://) live inside the `imagesvc serve` process "
             "and cannot be reached from here; this command works on RabbitMQ (IMAGESVC_BROKER_URL)")


def _settings() -> Settings:
    settings = Settings.from_env(os.environ)
    if settings.embedded_broker:
        raise DlqError(_EMBEDDED)
    if "IMAGESVC_BROKER_URL" not in os.environ:
        # Not configured: beside a running `serve` the default RabbitMQ address is not its broker.
        from imagesvc import serve_lock

        if serve_lock.held(Settings.from_env(os.environ, embedded=True)):
            raise DlqError(f"an imagesvc serve runs on this directory's database: {_EMBEDDED}")
    return settings


def _run(func):
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args, _settings())
        except DlqError as exc:
            print(f"imagesvc dlq: {exc}", file=sys.stderr)
            return 2
    return wrapper


def dead_letter_queues(settings: Settings) -> list[str]:
    """Every imagesvc dead-letter queue: the consumer services' and those of the compute nodes the
    database knows (if it can be read)."""
    from imagesvc.shared.broker.topology import build_topology, node_queue_name

    names = sorted(build_topology(settings.topology_prefix).dead_letter_queues)
    try:
        from imagesvc.shared.db import nodes
        from imagesvc.shared.db.engine import make_engine, read_transaction

        engine = make_engine(settings.database_url, pool_size=1)
        try:
            with read_transaction(engine) as conn:
                hosts = [node.hostname for node in nodes.list_all(conn)]
        finally:
            engine.dispose()
        names += sorted(node_queue_name(host, settings.topology_prefix) for host in hosts)
    except Exception as exc:  # noqa: BLE001 - the services' queues are listed without the database
        print(f"imagesvc dlq: compute nodes' queues not listed (database: {exc.__class__.__name__})", file=sys.stderr)
    return [f"{name}.dlq" for name in names]


def resolve(settings: Settings, queue: str) -> str:
    """The dead-letter queue named by ``queue``: a service (``importer``), a work queue
    (``importer.commands``) or a dead-letter queue, with or without the topology prefix."""
    from imagesvc.shared.broker.topology import COMMAND_ROUTES

    prefix = settings.topology_prefix
    name = queue
    if name in COMMAND_ROUTES:
        name = f"{name}.commands"
    elif name == "projector":
        name = "projector.events"
    if prefix and not name.startswith(prefix):
        name = prefix + name
    return name if name.endswith(".dlq") else f"{name}.dlq"


class _Broker:
    def __init__(self, settings: Settings):
        from imagesvc.shared.broker.connection import connect, ensure_connected

        self.connection = connect(settings, "dlq")
        try:
            ensure_connected(self.connection)
        except Exception as exc:  # noqa: BLE001
            raise DlqError(f"RabbitMQ is unreachable: {exc}") from None
        self.channel = self.connection.channel()

    def depth(self, queue: str) -> int | None:
        """Messages ready in ``queue``; None if there is no such queue."""
        from amqp.exceptions import NotFound

        try:
            return self.channel.queue_declare(queue=queue, passive=True).message_count
        except NotFound:
            self.channel = self.connection.channel()  # a failed passive declare closes the channel
            return None

    def browse(self, queue: str, limit: int) -> Iterator[DeadLetter]:
        """Take up to ``limit`` messages (at most those in the queue now), unacked."""
        depth = self.depth(queue)
        if depth is None:
            raise DlqError(f"there is no queue {queue!r} (see `imagesvc dlq list`)")
        for _ in range(min(depth, limit)):
            message = self.channel.basic_get(queue=queue, no_ack=False)
            if message is None:
                return
            properties = dict(message.properties or {})
            headers = dict(properties.pop("application_headers", None) or {})
            yield DeadLetter(message.delivery_tag, bytes(message.body) if not isinstance(message.body, str)
                             else message.body.encode(), properties, headers)

    def give_back(self, tags: list[int]) -> None:
        """Return the messages taken and not acked, in the order taken."""
        for tag in tags:
            self.channel.basic_reject(delivery_tag=tag, requeue=True)

    def close(self) -> None:
        from imagesvc.shared.broker.connection import discard

        try:
            self.channel.close()
            self.connection.release()
        except Exception:  # noqa: BLE001 - closing returns what was not acked anyway
            discard(self.connection)


def _list(args: argparse.Namespace) -> int:
    return _run(_list_in)(args)


def _list_in(args: argparse.Namespace, settings: Settings) -> int:
    broker = _Broker(settings)
    try:
        if args.queue is None:
            for queue in dead_letter_queues(settings):
                print(json.dumps({"queue": queue, "messages": broker.depth(queue)}))
            return 0
        queue = resolve(settings, args.queue)
        taken: list[int] = []
        try:
            for letter in broker.browse(queue, args.limit):
                taken.append(letter.delivery_tag)
                print(json.dumps(letter.describe(queue), default=str))
        finally:
            broker.give_back(taken)
        return 0
    finally:
        broker.close()


def _replay(args: argparse.Namespace) -> int:
    return _run(_replay_in)(args)


def _replay_in(args: argparse.Namespace, settings: Settings) -> int:
    from imagesvc.shared.broker.connection import broker_identity, connect
    from imagesvc.shared.broker.consumer import (ATTEMPT_HEADER, DEATH_REASON_HEADER, ORIGINAL_QUEUE_HEADER,
                                        PUBLISHED_BY_HEADER, ROUTING_KEY_HEADER, original_routing_key)
    from imagesvc.shared.broker.publisher import Publisher
    from imagesvc.shared.errors import PublishFailed

    queue = resolve(settings, args.queue)
    identity = broker_identity(settings)
    publisher = Publisher(lambda: connect(settings, "dlq-replay"), size=1, timeout=settings.publish_timeout)
    broker = _Broker(settings)
    replayed, kept = 0, []
    try:
        for letter in broker.browse(queue, sys.maxsize):
            if not args.all and letter.message_id != args.message_id:
                kept.append(letter.delivery_tag)
                continue
            headers = {k: v for k, v in letter.headers.items()
                       if k not in _DEATH_HEADERS and k not in (DEATH_REASON_HEADER, ORIGINAL_QUEUE_HEADER)}
            headers[ATTEMPT_HEADER] = 1
            headers[REPLAYED_HEADER] = int(letter.headers.get(REPLAYED_HEADER) or 0) + 1
            # The replay goes through the default exchange: the original routing key goes with it,
            # as our own copy's header says or as the broker recorded it (never as received).
            routing_key = original_routing_key(identity, letter.properties.get("user_id"), letter.headers,
                                               letter.original_routing_key())
            headers.pop(ROUTING_KEY_HEADER, None)
            if routing_key is not None:
                headers[ROUTING_KEY_HEADER] = routing_key
            user_id = None
            if identity is not None:
                # Like the runner's own copies: this copy is ours, the original publisher goes with it.
                publisher_of_original = identity.publisher(letter.properties.get("user_id"), letter.headers)
                headers[PUBLISHED_BY_HEADER] = publisher_of_original or ""
                user_id = identity.own
            target = letter.origin(queue)
            try:
                publisher.publish(exchange="", routing_key=target, body=letter.body, message_id=letter.message_id,
                                  message_type=letter.properties.get("type"),
                                  correlation_id=letter.properties.get("correlation_id"), headers=headers,
                                  user_id=user_id)
            except PublishFailed as exc:
                kept.append(letter.delivery_tag)
                print(f"imagesvc dlq: {letter.message_id} not replayed (kept in {queue}): {exc}", file=sys.stderr)
                return 1
            broker.channel.basic_ack(delivery_tag=letter.delivery_tag)
            replayed += 1
            print(json.dumps({"replayed": letter.message_id, "type": letter.properties.get("type"), "to": target}))
            if not args.all:
                break
    finally:
        try:
            broker.give_back(kept)
        finally:
            broker.close()
            publisher.close()
    if not args.all and replayed == 0:
        print(f"imagesvc dlq: no message {args.message_id!r} in {queue}", file=sys.stderr)
        return 1
    print(f"replayed {replayed} message(s) from {queue}", file=sys.stderr)
    return 0


def _purge(args: argparse.Namespace) -> int:
    return _run(_purge_in)(args)


def _purge_in(args: argparse.Namespace, settings: Settings) -> int:
    queue = resolve(settings, args.queue)
    if not args.yes:
        raise DlqError(f"purging deletes every message of {queue} for good: add --yes")
    broker = _Broker(settings)
    try:
        if broker.depth(queue) is None:
            raise DlqError(f"there is no queue {queue!r} (see `imagesvc dlq list`)")
        purged = broker.channel.queue_purge(queue=queue)
    finally:
        broker.close()
    print(json.dumps({"queue": queue, "purged": purged}))
    return 0
