"""``imagesvc serve``'s start-up recovery: no task that an earlier ``serve`` process accepted stays
PENDING after that process died (``kill -9``, a crash, a power cut).

``serve`` runs every service as threads over kombu's in-memory broker, so a command waiting in a
queue, being handled or waiting for its retry dies with the process, and nothing would ever end
its task. What survives is the database: the gateway's command journal (every command answered
201 or sent with an ``Idempotency-Key``, with the envelope and routing key it was published with),
the event store (which tasks have their outcome) and the leases (a long-running task's image).

Recovery runs once, as ``serve`` starts, before any consumer thread runs and before the gateway
answers. Then nothing but this process can hold a lease of its database or a message of its
broker: the broker lives in the process, and ``serve`` holds a lock on its database so that no
second ``serve`` runs on it. That is what makes it safe to decide at once, without waiting for
leases to run out, and why it is done only for the in-memory broker: on RabbitMQ the commands
survive (they are redelivered), and other processes may be alive and holding leases.

1. **Resumed**: every journaled command whose task has no outcome is published again unchanged,
   under its original message id (only its ``reply_to`` is dropped: the gateway that waited is
   gone), provided this process consumes its routing key and no sweep of its task had begun.
   Handlers are written for redelivery: the inbox makes it a no-op if it had ended after all,
   and a creation re-takes its image's lease (``domain.creation.take_over``) and starts its file
   over. These tasks' leases are renewed, so that no sweep takes them before their command runs.
2. **Failed**: every other lease has run out at once, and the lease sweeper ends its task as it
   ends a dead worker's (a created image removed with its data, a changed one OK again, the
   task's locks freed), with code ``interrupted`` (500); so are the tasks that were published but
   never answered, if their handler had begun (a lease). A journaled task that holds no lease and
   cannot be resumed (a row journaled before the journal kept commands, or a command for a node
   whose agent this process does not run) fails ``interrupted`` at once.
3. The store's temporaries (partial files, manifest temporaries, half-done removals) go, once the
   sweep of step 2 has moved back what it undoes (no writer is running), and every delivery's
   claim on its command is released (no delivery is running).

A command published but never answered whose handler had recorded nothing yet is not journaled
and left nothing anywhere: the client, which got no answer, knows no task id, and nothing changed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Collection

from imagesvc.services.sweeper.leases import INTERRUPTED, SWEPT_PREFIX, LeaseSweeper, stopped_failure
from imagesvc.shared import contracts
from imagesvc.shared.contracts import Actor, TaskFailed
from imagesvc.shared.db import events as store
from imagesvc.shared.db import journal, locks, task_owners
from imagesvc.shared.db.engine import read_transaction, write_transaction
from imagesvc.shared.errors import PoisonMessage, PublishFailed
from imagesvc.shared.logging import get_logger
from imagesvc.shared.store import ImageStore

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = get_logger(__name__)


@dataclass(frozen=True)
class Recovered:
    """What a start-up recovery did, by task id."""

    resumed: list[str]
    #: Ended by the sweeper (their image's lease) or at once (journaled, no lease).
    failed: list[str]


class StartupRecovery:
    """``run()`` once, before the consumers start. ``publisher`` publishes to the in-memory
    broker whose queues are declared already; ``consumed``: the routing keys on ``exchange`` that
    this process's consumers take; ``lease_seconds``: how long a resumed task's leases are
    renewed for (its command takes them over as soon as it runs)."""

    def __init__(self, engine: Engine, relay, sweeper: LeaseSweeper, store_: ImageStore | None, publisher, *,
                 exchange: str, consumed: Collection[str], lease_seconds: float):
        self._engine = engine
        self._relay = relay
        self._sweeper = sweeper
        self._store = store_
        self._publisher = publisher
        self._exchange = exchange
        self._consumed = frozenset(consumed)
        self._lease_seconds = lease_seconds

    def run(self) -> Recovered:
        with read_transaction(self._engine) as conn:
            accepted = journal.unfinished(conn)
            being_swept = {owner.removeprefix(SWEPT_PREFIX) for owner in locks.owners(conn)
                           if owner.startswith(SWEPT_PREFIX)}
        resumed = [command for command in accepted
                   if command.task_id not in being_swept and self._republished(command)]
        resumed_ids = {command.task_id for command in resumed}
        with write_transaction(self._engine) as conn:
            locks.restart_leases(conn, resumed_ids, self._lease_seconds)
            # The dead process's deliveries held their commands' claims: the resumed ones must not
            # wait for those to lapse.
            task_owners.release_all(conn)
        failed = [swept.task_id for swept in self._sweeper.sweep_once(code=INTERRUPTED, every=True)]
        failed += [command.task_id for command in accepted
                   if command.task_id not in resumed_ids and self._failed(command)]
        if self._store is not None:
            # After the sweep, which moves an interrupted removal back from .trash; no consumer
            # runs yet, and a resumed task starts its store work over.
            leftovers = self._store.discard_leftovers()
            if leftovers:
                log.info("recovery.store_leftovers_removed", count=leftovers)
        log.info("recovery.done", resumed=len(resumed), failed=len(failed))
        return Recovered(resumed=[command.task_id for command in resumed], failed=failed)

    def _republished(self, command: journal.JournaledCommand) -> bool:
        if command.body is None or command.routing_key not in self._consumed:
            return False
        try:
            envelope = dataclasses.replace(contracts.decode(command.body), reply_to=None)
            self._publisher.publish(exchange=self._exchange, routing_key=command.routing_key,
                                    body=contracts.encode(envelope), message_id=envelope.id,
                                    message_type=envelope.type, correlation_id=envelope.correlation_id)
        except (PoisonMessage, PublishFailed) as exc:
            log.error("recovery.not_resumed", task_id=command.task_id, type=command.type, error=str(exc))
            return False
        log.info("recovery.resumed", task_id=command.task_id, type=command.type, message_id=command.message_id)
        return True

    def _failed(self, command: journal.JournaledCommand) -> bool:
        """End a journaled task that holds no lease the sweeper could end it by (its locks, all run
        out, are free to take). False if it has its outcome already (the sweeper gave it one)."""
        failure = TaskFailed(task_id=command.task_id, command=command.type, object_name=command.object_name,
                             user=command.user, owner=command.owner, dc=command.dc, http_code=500,
                             result=stopped_failure(command.type, INTERRUPTED), code=INTERRUPTED)
        wrapped = contracts.wrap(failure, correlation_id=command.task_id, causation_id=command.message_id,
                                 actor=Actor(user=command.user, dc=command.dc))
        try:
            with write_transaction(self._engine) as conn:
                rows = store.append(conn, [(wrapped, None)])
        except (store.AlreadyHandled, store.TaskAlreadyEnded):
            return False
        self._relay.publish(rows)
        log.warning("recovery.task_failed", task_id=command.task_id, type=command.type, code=INTERRUPTED)
        return True
