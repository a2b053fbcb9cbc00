"""Task ids belong to the command that first used them, and one delivery at a time handles it.

A task id travels in a command's ``correlation_id``, and anybody who subscribes to events sees
it. So before a command's handler runs, its handling **claims** the task (``claim``): the first
claim binds the task id to the command's message id, and a different command claiming the same
id later is refused (``TaskTaken``): it cannot act on the task, end it, or take its lease over.
(Paths that record a failure without running a handler bind the id too: ``bind``.)

The claim also names the delivery now handling the command (a random token) until it expires.
The same message can be delivered more than once at the same time (a publisher that retried, a
redelivery while the first delivery still runs): a copy that finds a live claim of another
delivery is told so (``Claim.HELD``) and must not run the handler (the caller defers it until
the first has its outcome, then acks it as a duplicate). A claim lives while its holder renews it
(``ClaimKeeper``); a holder that died stops renewing, and once the claim has expired the next
delivery takes it over (``Claim.AGAIN``). A holder that ends without an outcome (a retry, a
deferral) releases its claim at once (``release``).
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Connection, and_, bindparam, case, or_, select, update

from imagesvc.shared.db.dialect import insert_ignore, prepared
from imagesvc.shared.db.models import TaskOwner, utcnow
from imagesvc.shared.logging import get_logger

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = get_logger(__name__)

#: How long a claim lives unless renewed (``IMAGESVC_CLAIM_SECONDS``): how soon a command whose
#: handler's process died is taken over by its next delivery.
CLAIM_SECONDS = 3.0
#: A claim is renewed this many times within its life (so it survives a few missed renewals).
RENEWALS_PER_LIFE = 5

_owners = TaskOwner.__table__
_OWNER = select(_owners.c.message_id, _owners.c.actor, _owners.c.lapses).where(
    _owners.c.task_id == bindparam("task_id"))
_RELEASE = (update(_owners).where(_owners.c.task_id == bindparam("t"), _owners.c.claim == bindparam("token"))
            .values(claim=None, claim_expires_at=None))


class TaskTaken(Exception):
    """The task id belongs to another command; this one must change nothing under it."""

    def __init__(self, task_id: str, actor: str | None):
        super().__init__(f"task {task_id} belongs to another command")
        self.task_id = task_id
        self.actor = actor


class Claim(enum.Enum):
    #: The first delivery to handle the command: the task id is now bound to it.
    FIRST = "first"
    #: A later delivery (an earlier one's claim expired or was released): it may have ended.
    AGAIN = "again"
    #: Another delivery of the same command holds a live claim: do not handle it now.
    HELD = "held"


@dataclass(frozen=True)
class Claimed:
    state: Claim
    #: How many earlier claims this command's deliveries took over after they had lapsed
    #: unreleased: runs of its handler that ended with their process (a delivery releases its
    #: claim when it ends without an outcome, and needs none once there is one). A crash loop
    #: counted by what ran, not by the broker's redeliveries, which also count copies that sat
    #: unseen in a dying process.
    lapsed: int


def bind(conn: Connection, *, task_id: str, message_id: str, actor: str | None, command: str) -> None:
    """Bind ``task_id`` to ``message_id`` unless it is bound already; raises TaskTaken when it is
    bound to another message. Concurrent first binds of one id: one wins, the others wait for its
    transaction and then see its row."""
    if insert_ignore(conn, _owners, {"task_id": task_id, "message_id": message_id, "actor": actor,
                                     "command": command, "bound_at": utcnow(), "claims": 0, "lapses": 0}):
        return
    _check_owner(conn, task_id, message_id)


def _claiming(insert):
    return insert.on_conflict_do_update(
        index_elements=[_owners.c.task_id],
        set_={"claim": insert.excluded.claim, "claim_expires_at": insert.excluded.claim_expires_at,
              "claims": _owners.c.claims + 1,
              # Where the upsert may update, a claim still set is one that lapsed unreleased.
              "lapses": _owners.c.lapses + case((_owners.c.claim.is_not(None), 1), else_=0)},
        # Only the same command, and only if nobody holds it now (never claimed, released, expired).
        where=and_(_owners.c.message_id == insert.excluded.message_id,
                   or_(_owners.c.claim.is_(None), _owners.c.claim_expires_at < insert.excluded.bound_at)),
    ).returning(_owners.c.claims, _owners.c.lapses)


def claim(conn: Connection, *, task_id: str, message_id: str, actor: str | None, command: str, token: str,
          seconds: float) -> Claimed:
    """Claim the handling of ``message_id``'s task for the delivery ``token`` for ``seconds``
    (one statement; a second one only when the claim is refused). Raises TaskTaken when the task
    id belongs to another message. Concurrent claims of one task: exactly one wins. Each statement
    is atomic on its own, so ``conn`` may be in autocommit (``single_statement``): the claim is
    then committed, and visible to other deliveries, in one round trip."""
    now = utcnow()
    row = conn.execute(prepared(conn, _owners, "claim", _claiming), {
        "task_id": task_id, "message_id": message_id, "actor": actor, "command": command, "bound_at": now,
        "claim": token, "claim_expires_at": now + timedelta(seconds=seconds), "claims": 1, "lapses": 0,
    }).first()
    if row is not None:
        return Claimed(Claim.FIRST if row.claims == 1 else Claim.AGAIN, row.lapses)
    owner = _check_owner(conn, task_id, message_id)
    return Claimed(Claim.HELD, owner.lapses if owner is not None else 0)


def _check_owner(conn: Connection, task_id: str, message_id: str):
    """The task's row; raises TaskTaken if it is another message's."""
    row = conn.execute(_OWNER, {"task_id": task_id}).first()
    if row is not None and row.message_id != message_id:
        raise TaskTaken(task_id, row.actor)
    return row


def release(conn: Connection, task_id: str, token: str) -> None:
    """Give up the claim ``token`` holds (a no-op if it holds none), so that the next delivery of
    the command may handle it at once."""
    conn.execute(_RELEASE, {"t": task_id, "token": token})


def release_all(conn: Connection) -> int:
    """Release every claim. Only for a process that knows no other can be handling anything
    (``imagesvc serve`` starting up: its broker and every handler live in it)."""
    return conn.execute(update(_owners).where(_owners.c.claim.is_not(None))
                        .values(claim=None, claim_expires_at=None)).rowcount


def renew(conn: Connection, tokens: list[str], seconds: float) -> None:
    conn.execute(update(_owners).where(_owners.c.claim.in_(tokens))
                 .values(claim_expires_at=utcnow() + timedelta(seconds=seconds)))


class ClaimKeeper:
    """Keeps the claims of the deliveries a process is handling alive: renews them all in one
    statement ``RENEWALS_PER_LIFE`` times per ``seconds`` on a thread of its own, which runs only
    while it holds some. A claim it fails to renew (the database away) may expire: another delivery may then
    take the command over, and the lease tokens and the inbox still give the task one outcome."""

    def __init__(self, engine: Engine, seconds: float):
        self._engine = engine
        self.seconds = seconds
        self._tokens: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, token: str) -> None:
        with self._lock:
            self._tokens.add(token)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="claim-keeper", daemon=True)
                self._thread.start()

    def drop(self, token: str) -> None:
        with self._lock:
            self._tokens.discard(token)

    def _run(self) -> None:
        from imagesvc.shared.db.engine import write_transaction

        while True:
            time.sleep(self.seconds / RENEWALS_PER_LIFE)
            with self._lock:
                tokens = sorted(self._tokens)
                if not tokens:
                    self._thread = None
                    return
            try:
                with write_transaction(self._engine) as conn:
                    renew(conn, tokens, self.seconds)
            except Exception as exc:  # noqa: BLE001 - the next period tries again
                log.warning("claims.renew_failed", error=repr(exc), claims=len(tokens))
