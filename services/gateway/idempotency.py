"""``Idempotency-Key`` on command requests (an addition to the original API).

A client that may send a command twice (a retry after a timeout, a lost answer, a gateway that
died) names it with an ``Idempotency-Key`` header. The command's message id and its task id's
random part are then derived from (user, method, path, key) instead of drawn at random, so:

- a repeat is answered by the task of the command published before under that message id, found
  before any check runs wherever it is already known (``Queries.command_task``): the event store
  (every event a consumer stores names the command's message id as its cause, and a consumer
  records nothing without one before its outcome, except an image-store refresh's lock) or the
  gateway's journal. It gets that task's outcome, or the answer rule's wait for it and then 201
  PENDING with the same task id: the first request's answer, not a 406 about the image it
  created, also when the gateway that published it died before journaling it;
- a repeat that finds nothing is run as a first request: nothing was published, or the first copy
  waits in its queue unhandled, and publishing the same message id again is harmless (the
  consumers' inbox lets exactly one copy act, the other is acked as a duplicate). Its checks see
  the world as the first request's did, since an unhandled command has changed nothing; a
  refusal can only come from what *other* commands did meanwhile, and the queued first copy,
  handled after them, meets the same refusal from its consumer. After a refusal the task is
  looked for again: a repeat that raced its first request past the first look-up is refused by
  what the first one did, and then gets the first one's task instead;
- two repeats racing each other both publish the same message id, and the inbox lets exactly
  one of them act: one task, one effect.

The body of a repeat is not compared with the first one's: a key names one operation, and reusing
it for another one gets the first one's answer. Keys never expire (the event store and the
journal keep them). The full task id cannot be derived before the checks (its owner and
datacenter parts come from them, and an update may change them), so the look-up goes by message
id; a task found under it whose random part is not the key's is not this request's.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from starlette.requests import Request

from imagesvc.services.gateway.http import ApiError

HEADER = "idempotency-key"
MAX_LENGTH = 255
INVALID = "Invalid Idempotency-Key header: 1 to 255 visible ASCII characters."


@dataclass(frozen=True)
class Identity:
    """The ids a keyed command is published under."""

    message_id: str
    #: The random part of the task id (``tasks.new_task_id(key=...)``).
    task_key: str


def requested_key(request: Request) -> str | None:
    """The request's ``Idempotency-Key``, None without one; ApiError(400) if malformed."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    if not 1 <= len(raw) <= MAX_LENGTH or not all("\x21" <= ch <= "\x7e" for ch in raw):
        raise ApiError(400, INVALID)
    return raw


def identity(*, user_id: int, method: str, path: str, key: str) -> Identity:
    """The message id and task key of the command ``user_id`` asked for with ``key``."""
    digest = hashlib.sha256("\0".join((str(user_id), method.upper(), path, key)).encode()).digest()
    message_id = str(uuid.UUID(bytes=digest[:16], version=4))
    task_key = "-".join(str(uuid.UUID(bytes=digest[16:], version=4)).split("-")[:4])
    return Identity(message_id, task_key)
