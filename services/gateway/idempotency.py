"""``Idempotency-Key`` on command requests (an addition to the original API).

A client that may send a command twice (a retry after a timeout, a lost answer) names it with an
``Idempotency-Key`` header. The command's message id and its task id's random part are then
derived from (user, method, path, key) instead of drawn at random, so:

- a repeat of a request whose command the gateway already journaled is answered with that task's
  state (its outcome, or 201 PENDING with the same task id), before any check runs: the first
  request's answer, not a 406 about the image it created;
- two repeats racing each other both publish the same message id, and the consumers' inbox lets
  exactly one of them act (the other is acked as a duplicate): one task, one effect.

The body of a repeat is not compared with the first one's: a key names one operation, and reusing
it for another one gets the first one's answer. Keys never expire (the journal keeps them).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from starlette.requests import Request

from services.gateway.http import ApiError

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
