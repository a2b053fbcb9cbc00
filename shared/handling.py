"""Message handling protocol between the consumer runner and the services' handlers.

``CommandConsumer`` gives every command exactly one terminal task event:

1. decode the envelope (a poison message is dead-lettered, with a ``task.failed`` when its task
   id can be read);
2. skip a message already handled (its events are republished if still pending);
3. call the handler, which opens its own transactions through ``CommandContext`` and ends the
   successful path with ``Transaction.finish(...)``: effect and outbox events commit together,
   and the terminal event is the inbox record (``shared.db.events``: a second handling of the
   same message cannot commit);
4. a ``CommandFailed`` raised by the handler becomes a ``task.failed`` committed on its own;
5. publish the new outbox rows (confirmed), then let the runner ack.

A long-running command whose user is at the consumer's cap (``UserSlots``) is deferred where
its handler's long part would begin (``CommandContext.begin_long_work``), having changed nothing.

``EventConsumer`` applies events to the read model: the change in one transaction (several
events at once under load), then the notifications, then the acks. It accepts an event only if
it arrived with the routing key its type and payload define and from a broker user allowed to
publish its family (``shared.contracts.routing``); anything else is dead-lettered, never applied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import structlog

from imagesvc.shared import contracts, metrics
from imagesvc.shared.broker.consumer import Delivery, Disposition
from imagesvc.shared.contracts import Actor, Command, Envelope, Event, TaskFailed, TaskSucceeded
from imagesvc.shared.contracts.routing import Publishers, route
from imagesvc.shared.crash import crash_point
from imagesvc.shared.db import events as store
from imagesvc.shared.db import task_owners
from imagesvc.shared.db.task_owners import Claim, TaskTaken
from imagesvc.shared.db.catalogue import SqlCatalogue
from imagesvc.shared.db.engine import read_transaction, single_statement, write_transaction
from imagesvc.shared.errors import CommandFailed, OutOfOrder, PoisonMessage, Refused, Superseded
from imagesvc.shared.logging import get_logger
from imagesvc.shared.user_slots import UserAtCap, UserSlots

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

log = get_logger(__name__)
#: What a command gets whose publisher may not act as its actor: the original's answer to
#: somebody without the right to act (the same body as the entry permission's refusal).
NOT_TRUSTED = "Permission denied"


def object_name(envelope: Envelope) -> str:
    """The command's target name as a task records it: a string, storable, at most 64 characters."""
    return str(envelope.payload.get("name", "")).replace("\x00", "")[:64]


#: The message was handled before (its terminal event exists).
Duplicate = store.AlreadyHandled
#: A copy of a command that another delivery is handling waits this long, doubling each time.
HELD_DELAY = 0.25
HELD_DELAY_MAX = 2.0


class Transaction:
    """A handler's write transaction: catalogue access, stream versions, and ``finish``."""

    def __init__(self, ctx: "CommandContext", conn: Connection):
        self._ctx = ctx
        self.conn = conn
        self.catalogue = SqlCatalogue(conn)

    def stream_head(self, stream_id: str) -> int:
        """The stored head of a stream whose head is not on a row this transaction holds (a new image)."""
        return store.stream_head(self.conn, stream_id)

    def emit(self, events: list[Event]) -> None:
        """Store events that do not end the task (a long-running command's ``task.started``, its
        progress, an intermediate image state); ``CommandContext.publish_pending`` sends them
        once this transaction has committed."""
        ctx = self._ctx
        ctx.outbox = ctx.outbox + store.append(self.conn, [(ctx.wrap(e), e.stream_position()) for e in events])

    def finish(self, events: list[Event], *, result: Any, owner: str | None, dc: str | None,
               http_code: int = 200) -> None:
        """End the task in success: store the events and ``task.succeeded`` (which marks the command
        handled).

        Raises Duplicate (rolling the transaction back) if another delivery of the same command
        got here first.
        """
        ctx = self._ctx
        position = next((e.stream_position() for e in reversed(events) if e.stream_position()), None)
        terminal = TaskSucceeded(
            **ctx.task_fields(owner=owner, dc=dc),
            result=result,
            http_code=http_code,
            stream=position[0] if position else None,
            stream_version=position[1] if position else None,
        )
        self.emit([*events, terminal])
        ctx.finished = True
        ctx.http_code = http_code

    def fail(self, events: list[Event], failure: CommandFailed, *, owner: str | None, dc: str | None) -> None:
        """End the task in failure together with the events that undo its effects (an import's
        row removed): both commit or neither does. Raises Duplicate as ``finish`` does."""
        ctx = self._ctx
        position = next((e.stream_position() for e in reversed(events) if e.stream_position()), None)
        terminal = TaskFailed(
            **ctx.task_fields(owner=owner, dc=dc),
            http_code=failure.http_code,
            result=failure.result,
            code=failure.code,
            stream=position[0] if position else None,
            stream_version=position[1] if position else None,
        )
        self.emit([*events, terminal])
        ctx.finished = True
        ctx.http_code = failure.http_code


class CommandContext:
    """What a command handler knows of its message, and how it opens transactions."""

    def __init__(self, engine: Engine, consumer: str, envelope: Envelope, delivery: Delivery, relay=None,
                 slots: UserSlots | None = None):
        self.engine = engine
        self.consumer = consumer
        self.envelope = envelope
        self.delivery = delivery
        self._relay = relay
        self._slots = slots
        self._holds_slot = False
        self.finished = False
        #: The HTTP code of the outcome ``finish`` or ``fail`` stored (for the metrics).
        self.http_code: int | None = None
        #: The events committed for this message and not yet published.
        self.outbox: list[store.OutboxRow] = []

    def task_fields(self, *, owner: str | None, dc: str | None) -> dict[str, Any]:
        """The fields every task event of this command carries."""
        return {"task_id": self.task_id, "command": self.envelope.type, "object_name": self.object_name,
                "user": self.actor.user if self.actor else None, "owner": owner, "dc": dc}

    def publish_pending(self) -> None:
        """Publish what committed transactions stored (``Transaction.emit``) now, before the
        command ends: a long-running command's ``task.started`` lets the gateway answer 201. A
        failed publish leaves the rows to the relay's sweeper."""
        if self._relay is not None and self.outbox:
            self._relay.publish(self.outbox)
        self.outbox = []

    def begin_long_work(self) -> None:
        """Mark where the handler's long-running part begins (fetching, downloading, exporting),
        after its quick checks and refusals. Raises ``UserAtCap`` when the actor already runs as
        many long-running commands in this consumer as it allows: the handler must have changed
        nothing yet (raising inside a transaction rolls it back), and the command is deferred."""
        if self._slots is None or self._holds_slot:
            return
        user = self.actor.user if self.actor else None
        if not self._slots.claim(self.envelope.type, user):
            raise UserAtCap(user, self._slots.per_user, self._slots.defer_seconds)
        self._holds_slot = True

    def end_long_work(self) -> None:
        """Give back the slot ``begin_long_work`` took, if it took one (the consumer calls this
        however the handler ended)."""
        if self._holds_slot:
            assert self._slots is not None
            self._slots.release(self.envelope.type, self.actor.user if self.actor else None)
            self._holds_slot = False

    @property
    def task_id(self) -> str:
        return self.envelope.correlation_id

    @property
    def actor(self) -> Actor | None:
        return self.envelope.actor

    @property
    def object_name(self) -> str:
        return object_name(self.envelope)

    def wrap(self, event: Event) -> Envelope:
        return contracts.wrap(event, correlation_id=self.task_id, causation_id=self.envelope.id, actor=self.actor,
                              reply_to=self.envelope.reply_to)

    @contextlib.contextmanager
    def reading(self) -> Iterator[SqlCatalogue]:
        with read_transaction(self.engine) as conn:
            yield SqlCatalogue(conn)

    @contextlib.contextmanager
    def writing(self) -> Iterator[Transaction]:
        with write_transaction(self.engine) as conn:
            yield Transaction(self, conn)


def bind_task(conn: Connection, envelope: Envelope) -> None:
    """Bind the envelope's task id to it (``shared.db.task_owners``), where a failure is recorded
    without a claim (the message is poison or nobody vouched for its actor); raises TaskTaken."""
    task_owners.bind(conn, task_id=envelope.correlation_id, message_id=envelope.id,
                     actor=envelope.actor.user if envelope.actor else None, command=envelope.type)


CommandHandler = Callable[[Command, CommandContext], None]
#: Undoes what a command's handler left half done when the command is given up (an import's
#: pending row and partial data) and ends its task with the given failure (``Transaction.fail``).
Compensation = Callable[[Command, CommandContext, CommandFailed], None]


class CommandConsumer:
    """``check_first``: look the message up in the inbox before calling the handler, for handlers
    whose work before their final transaction is expensive (the importer fetches URLs). Others
    rely on their final transaction alone (it cannot commit twice), saving a round trip.
    ``slots``: the cap on each user's long-running commands running at once here (none: no cap).
    ``claim_seconds``: how long a delivery's claim on its task lives unless renewed (a copy of the
    command delivered meanwhile waits; see ``shared.db.task_owners``); ``max_runs``: how many runs
    of its handler that died without an outcome a command gets (the runner's ``max_attempts``)."""

    def __init__(self, *, name: str, engine: Engine, relay, routes: Mapping[str, CommandHandler],
                 check_first: bool = False, trusted_publishers: frozenset[str] | None = None,
                 compensations: Mapping[str, Compensation] | None = None, max_message_bytes: int | None = None,
                 slots: UserSlots | None = None, claim_seconds: float = task_owners.CLAIM_SECONDS,
                 max_runs: int = 5):
        self.name = name
        self._max_runs = max_runs
        self._max_bytes = max_message_bytes
        self._slots = slots
        self._claims = task_owners.ClaimKeeper(engine, claim_seconds)
        self._compensations = dict(compensations or {})
        self._trusted = trusted_publishers
        self._engine = engine
        self._relay = relay
        self._routes = dict(routes)
        self._check_first = check_first

    def __call__(self, delivery: Delivery) -> Disposition:
        try:
            envelope = contracts.decode(delivery.body, max_bytes=self._max_bytes)
            handler = self._routes.get(envelope.type)
            if handler is None:
                raise PoisonMessage(f"{self.name} does not handle {envelope.type!r}", message_id=envelope.id,
                                    correlation_id=envelope.correlation_id, message_type=envelope.type)
            command = contracts.parse(envelope)
        except PoisonMessage as poison:
            self._fail_poison(poison, delivery)
            return Disposition.dead_letter(poison.reason)
        structlog.contextvars.bind_contextvars(task_id=envelope.correlation_id, message_id=envelope.id,
                                               type=envelope.type)
        if not self._may_act(delivery, envelope):
            log.warning("command.actor_not_trusted", publisher=delivery.publisher,
                        actor=envelope.actor.user if envelope.actor else None)
            failure = Refused(403, NOT_TRUSTED, code="actor_not_trusted")
            # Recorded without the claimed actor (nobody vouched for it) and told to nobody.
            unvouched = dataclasses.replace(envelope, actor=None, reply_to=None)
            try:
                self._relay.publish(self._record_failure(unvouched, failure))
            except (Duplicate, store.TaskAlreadyEnded):
                return self._not_twice(envelope)
            except TaskTaken as taken:
                return self._taken(taken)
            metrics.command_outcome(envelope.type, failure.http_code)
            return Disposition.ack("actor not trusted")
        if self._check_first and self._handled(envelope):
            return self._duplicate(envelope)
        token = contracts.new_message_id()
        try:
            # One statement on its own (autocommit on PostgreSQL: one round trip, still durable):
            # the claim must be committed, visible to other deliveries, before the handler runs.
            with single_statement(self._engine, write=True) as conn:
                claimed = task_owners.claim(conn, task_id=envelope.correlation_id, message_id=envelope.id,
                                            actor=envelope.actor.user if envelope.actor else None,
                                            command=envelope.type, token=token, seconds=self._claims.seconds)
        except TaskTaken as taken:
            return self._taken(taken)
        if claimed.state is Claim.HELD:
            return self._held(envelope, delivery)
        if claimed.state is Claim.AGAIN:
            if not self._check_first and self._handled(envelope):
                return self._duplicate(envelope)  # an earlier delivery ended it and died before its ack
            if claimed.lapsed >= self._max_runs:
                # Its handler ran that many times and each run's process died with it (a crash
                # loop): give it up rather than run it into another crash.
                reason = f"gave up after {claimed.lapsed} runs that ended without an outcome (crash loop)"
                self.on_give_up(delivery, reason)
                return Disposition.dead_letter(reason)
        self._claims.hold(token)
        ctx = CommandContext(self._engine, self.name, envelope, delivery, self._relay, self._slots)
        settled = False  # the task has its outcome (or the message needs no more handling)
        started = time.perf_counter()
        try:
            handler(command, ctx)
            if not ctx.finished:
                raise RuntimeError(f"handler for {envelope.type} returned without finishing its task")
            settled = True
            metrics.command_outcome(envelope.type, ctx.http_code or 200, time.perf_counter() - started)
        except (Duplicate, store.TaskAlreadyEnded):
            settled = True
            return self._not_twice(envelope)
        except Superseded:
            # Another delivery of the command took its work over (this one's claim had lapsed):
            # this copy is done, like a duplicate.
            log.warning("command.superseded")
            settled = True
            return Disposition.ack("superseded")
        except UserAtCap as capped:
            log.info("command.deferred", user=capped.user, cap=capped.cap, delay=capped.delay)
            return Disposition.defer(str(capped), capped.delay)
        except CommandFailed as failure:
            try:
                ctx.outbox = self._record_failure(envelope, failure, bind=False)
            except (Duplicate, store.TaskAlreadyEnded):
                settled = True
                return self._not_twice(envelope)
            settled = True
            metrics.command_outcome(envelope.type, failure.http_code, time.perf_counter() - started)
            log.info("task.failed", http_code=failure.http_code, code=failure.code)
        finally:
            ctx.end_long_work()
            self._claims.drop(token)
            if not settled:
                self._release(envelope, token)
        self._relay.publish(ctx.outbox)
        crash_point("after_commit_before_ack")
        return Disposition.ack()

    def _held(self, envelope: Envelope, delivery: Delivery) -> Disposition:
        """Another delivery of this very command is handling it: this copy waits until that one
        has the outcome (then it is a duplicate), or until its claim lapses (it died: then this
        copy takes the command over). Deferred, so it waits at the back of the queue, not in a
        worker; the wait doubles each time up to ``HELD_DELAY_MAX``."""
        if self._handled(envelope):
            return self._duplicate(envelope)
        delay = min(HELD_DELAY * 2 ** delivery.deferrals, HELD_DELAY_MAX)
        log.info("command.held_by_another_delivery", delay=delay)
        return Disposition.defer("another delivery of this command is handling it", delay)

    def _handled(self, envelope: Envelope) -> bool:
        with single_statement(self._engine) as conn:
            return store.was_handled(conn, envelope.id)

    def _release(self, envelope: Envelope, token: str) -> None:
        """The delivery ends without an outcome (it is retried or deferred): let the next one
        handle the command at once. If this fails, the claim lapses by itself."""
        try:
            with write_transaction(self._engine) as conn:
                task_owners.release(conn, envelope.correlation_id, token)
        except Exception as exc:  # noqa: BLE001 - the claim then expires unrenewed
            log.warning("command.claim_release_failed", error=repr(exc))

    def _may_act(self, delivery: Delivery, envelope: Envelope) -> bool:
        """A command acts for its envelope's actor only if the broker vouches that imagesvc itself
        (a gateway, or a consumer's retry) published it, or the actor's own broker user did."""
        if self._trusted is None:  # the broker vouches for nobody (memory://): nobody else can publish
            return True
        publisher = delivery.publisher
        return publisher in self._trusted or (envelope.actor is not None and publisher == envelope.actor.user)

    def _not_twice(self, envelope: Envelope) -> Disposition:
        """The message's task already has its outcome: from this very message (a duplicate: ack,
        republishing what is pending), or from another message reusing its task id (dead-letter:
        a task ends once, and this command can be given no outcome of its own)."""
        if self._handled(envelope):
            return self._duplicate(envelope)
        log.error("command.task_id_taken", task_id=envelope.correlation_id)
        return Disposition.dead_letter(f"task {envelope.correlation_id} already ended (its id was reused)")

    @staticmethod
    def _taken(taken: TaskTaken) -> Disposition:
        """The command claims a task id that belongs to another command (anybody who subscribes
        to events sees task ids): it gets no outcome, since the only place for one is that task."""
        log.warning("command.task_taken", task_id=taken.task_id, owner=taken.actor)
        return Disposition.dead_letter(f"task id {taken.task_id} belongs to another command")

    def _duplicate(self, envelope: Envelope) -> Disposition:
        with single_statement(self._engine) as conn:
            pending = store.unpublished_for_message(conn, envelope.id)
        self._relay.publish(pending)
        return Disposition.ack("duplicate")

    def _record_failure(self, envelope: Envelope, failure: CommandFailed, *, bind: bool = True
                        ) -> list[store.OutboxRow]:
        """Store the command's ``task.failed``; ``bind``: bind the task id first (where no claim
        did: the message never reached a handler). Raises TaskTaken, Duplicate, TaskAlreadyEnded."""
        terminal = TaskFailed(
            task_id=envelope.correlation_id,
            command=envelope.type,
            object_name=object_name(envelope),
            user=envelope.actor.user if envelope.actor else None,
            owner=None,  # a failed command's image (and so its owner) may not exist
            dc=envelope.actor.dc if envelope.actor else None,
            http_code=failure.http_code,
            result=failure.result,
            code=failure.code,
        )
        wrapped = contracts.wrap(terminal, correlation_id=envelope.correlation_id, causation_id=envelope.id,
                                 actor=envelope.actor, reply_to=envelope.reply_to)
        with write_transaction(self._engine) as conn:
            if bind:
                bind_task(conn, envelope)
            return store.append(conn, [(wrapped, None)])

    def _fail_poison(self, poison: PoisonMessage, delivery: Delivery) -> None:
        """A poison command still ends its task, when its task id (correlation id) is readable."""
        task_id = poison.correlation_id or delivery.correlation_id
        message_id = poison.message_id or delivery.message_id
        log.error("message.poison", reason=poison.reason, task_id=task_id, message_id=message_id)
        if not task_id or not message_id:
            return
        envelope = Envelope(id=message_id, type=poison.message_type or delivery.message_type or "unknown",
                            correlation_id=task_id, payload={})
        failure = CommandFailed({"detail": f"Invalid command message: {poison.reason}"}, http_code=400,
                                code="invalid_message")
        try:
            rows = self._record_failure(envelope, failure)
        except (Duplicate, store.TaskAlreadyEnded, TaskTaken):
            return  # its task is another command's, or has its outcome: nothing to record
        metrics.command_outcome(envelope.type, failure.http_code)
        self._relay.publish(rows)

    def on_exhausted(self, delivery: Delivery, reason: str) -> Disposition:
        """The message comes back after ``max_attempts`` deliveries that ended with their process
        (shared.broker.consumer). The broker counts every such delivery, also those that sat
        unseen in a dying process's prefetch or waited there for another delivery's claim: they
        ran nothing. The runs of the handler that died are counted by the command's claims, so
        the delivery is handled as any other: a duplicate if one of them committed its outcome,
        deferred while another delivery holds the command, given up once its handler ran
        ``max_runs`` times without an outcome."""
        return self(delivery)

    def on_give_up(self, delivery: Delivery, reason: str) -> None:
        """Retries exhausted: end the task in failure (500), so no accepted command hangs forever."""
        try:
            envelope = contracts.decode(delivery.body, max_bytes=self._max_bytes)
        except PoisonMessage:
            return
        failure = CommandFailed({"detail": "Internal error: the command could not be processed"}, http_code=500,
                                code="retries_exhausted")
        compensate = self._compensations.get(envelope.type)
        if compensate is not None:
            ctx = CommandContext(self._engine, self.name, envelope, delivery, self._relay)
            try:
                compensate(contracts.parse(envelope), ctx, failure)  # type: ignore[arg-type]
                if ctx.finished:
                    metrics.command_outcome(envelope.type, ctx.http_code or failure.http_code)
                    self._relay.publish(ctx.outbox)
                    return
            except (Duplicate, store.TaskAlreadyEnded, TaskTaken):
                return
            except Exception as exc:  # noqa: BLE001 - the task must still end
                log.error("command.compensation_failed", error=repr(exc))
        try:
            rows = self._record_failure(envelope, failure)
        except (Duplicate, store.TaskAlreadyEnded, TaskTaken):
            return
        metrics.command_outcome(envelope.type, failure.http_code)
        self._relay.publish(rows)


# --- events -> read model ----------------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    """Sent after a read-model commit to the listener that submitted the task (``reply_to``): the
    task's state as just committed, so the gateway can answer without reading it back."""

    task_id: str
    status: str
    http_code: int
    result: Any = None
    reply_to: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "status": self.status, "http_code": self.http_code, "result": self.result}


#: ``apply(conn, envelope, event, scratch)``: ``scratch`` is a dict that lives for one transaction
#: (one batch), for what the applier wants to remember between the events of a batch.
EventApplier = Callable[["Connection", Envelope, Event, dict], "Notification | None"]


class EventConsumer:
    """Applies events with an idempotent applier (redelivery must be a no-op: the projector's
    stream versions and final task states make it so), then sends its notifications.

    Deliveries that queued up are applied in one transaction (``handle_batch``); if anything in
    a batch fails, it is rolled back and each delivery is handled on its own.
    """

    batch_size = 64

    def __init__(self, *, name: str, engine: Engine, apply: EventApplier, notify: Callable[[Notification], None],
                 publishers: Publishers | None = None, max_message_bytes: int | None = None):
        """``publishers``: who may publish which events; None where the broker vouches for nobody
        (memory://: nobody outside the process can publish, and only the routing key is checked)."""
        self.name = name
        self._engine = engine
        self._apply = apply
        self._notify = notify
        self._publishers = publishers
        self._max_bytes = max_message_bytes

    def _refusal(self, delivery: Delivery, envelope: Envelope) -> str | None:
        """Why this delivery of an event must not be applied, or None. An event is believed for
        what the broker vouches for (who published it, under which routing key), not for what
        its body says about itself."""
        expected = route(envelope.type, envelope.payload).key
        if delivery.routing_key != expected:
            return f"{envelope.type} arrived with routing key {delivery.routing_key!r}, not {expected!r}"
        if self._publishers is not None:
            return self._publishers.refusal(envelope.type, delivery.publisher)
        return None

    def __call__(self, delivery: Delivery) -> Disposition:
        return self.handle_batch([delivery])[0]

    def handle_batch(self, deliveries: list[Delivery]) -> list[Disposition]:
        verdicts: list[Disposition | None] = [None] * len(deliveries)
        decoded: list[tuple[int, Envelope, Event]] = []
        for index, delivery in enumerate(deliveries):
            try:
                envelope = contracts.decode(delivery.body, max_bytes=self._max_bytes)
                if envelope.type not in contracts.EVENT_TYPES:
                    raise PoisonMessage(f"{envelope.type!r} is not an event", message_id=envelope.id)
                refusal = self._refusal(delivery, envelope)
                if refusal is not None:
                    log.warning("event.refused", reason=refusal, message_id=envelope.id, type=envelope.type,
                                routing_key=delivery.routing_key, publisher=delivery.publisher)
                    verdicts[index] = Disposition.dead_letter(
                        f"event refused: {refusal} (published by {delivery.publisher or 'nobody the broker named'})")
                    continue
                event = contracts.parse(envelope)
                decoded.append((index, envelope, event))
            except PoisonMessage as poison:
                log.error("message.poison", reason=poison.reason, message_id=poison.message_id)
                verdicts[index] = Disposition.dead_letter(poison.reason)
        notes: list[Notification] = []
        try:
            with write_transaction(self._engine) as conn:
                scratch: dict = {}
                for index, envelope, event in decoded:
                    note = self._apply(conn, envelope, event, scratch)
                    if note is not None:
                        notes.append(note)
                    verdicts[index] = Disposition.ack()
        except OutOfOrder as gap:
            if len(decoded) > 1:
                return [self.handle_batch([delivery])[0] for delivery in deliveries]
            return [v or Disposition.retry(f"out of order: {gap}", delay=0.2) for v in verdicts]
        except Exception:
            if len(decoded) > 1:
                return [self.handle_batch([delivery])[0] for delivery in deliveries]
            raise
        metrics.events_applied((envelope.type, envelope.time) for _, envelope, _ in decoded)
        for note in notes:
            try:
                self._notify(note)
            except Exception as exc:  # noqa: BLE001 - gateways also poll; a lost notification only delays
                log.warning("projector.notify_failed", error=repr(exc))
        return [v or Disposition.ack() for v in verdicts]

    def on_give_up(self, delivery: Delivery, reason: str) -> None:
        log.error("projector.gave_up", reason=reason, message_id=delivery.message_id)
