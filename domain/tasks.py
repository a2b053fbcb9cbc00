"""Task ids and task states as the original API shows them (reference §6, §7.1, §7.6).

A task id reads ``<user id><type><owner id><group><dc id>-<8 hex>-<4 hex>-<4 hex>-<4 hex>``.
Image commands use type ``e`` (execute) and group ``u`` (DC-unbound); synchronous reads answer
with a *dummy* id (type ``d``) that names no task.
"""

from __future__ import annotations

import functools
import hashlib
import re
import uuid

PENDING, STARTED, SUCCESS, FAILURE = "PENDING", "STARTED", "SUCCESS", "FAILURE"
TERMINAL = frozenset({SUCCESS, FAILURE})

TASK_NOT_FOUND = "Task does not exist (anymore)"


# The original checks the groups' lengths only, not that they are hex; control characters (a NUL
# cannot even be stored) and slashes are refused all the same.
_GROUP = r"[^-\x00-\x1f\x7f/]"
_TASK_ID = re.compile(rf"^(\d{{1,18}})([deamif])(\d{{1,18}})([du])(\d{{1,18}})-({_GROUP}{{8}})-({_GROUP}{{4}})-({_GROUP}{{4}})-({_GROUP}{{4}})\Z")


def _random_groups() -> list[str]:
    return str(uuid.uuid4()).split("-")[:4]


def new_task_key() -> str:
    """The random part of a task id (``8hex-4hex-4hex-4hex``), unique on its own."""
    return "-".join(_random_groups())


def task_key(task_id: str) -> str:
    """The random part of a task id."""
    return task_id.split("-", 1)[-1]


def new_task_id(*, user_id: int, owner_id: int, dc_id: int, key: str | None = None) -> str:
    """A task id for an image command (type ``e``, group ``u``); ``key`` is its random part
    (reserved earlier with ``new_task_key``), fresh when not given."""
    return f"{user_id}e{owner_id}u{dc_id}-" + (key or new_task_key())


def dummy_task_id(*, user_id: int, dc_id: int) -> str:
    """The id a synchronous answer carries: first group = last 8 hex digits of md5(user id)."""
    groups = _random_groups()
    groups[0] = _user_hash(user_id)
    return f"{user_id}d{user_id}u{dc_id}-" + "-".join(groups)


@functools.lru_cache(maxsize=4096)
def _user_hash(user_id: int) -> str:
    return hashlib.md5(str(user_id).encode()).hexdigest()[-8:]


def parse_task_id(task_id: str) -> dict[str, object] | None:
    """The parts of a well-formed task id, or None."""
    match = _TASK_ID.match(task_id)
    if not match:
        return None
    user_id, kind, owner_id, group, dc_id = match.group(1, 2, 3, 4, 5)
    return {"user_id": int(user_id), "type": kind, "owner_id": int(owner_id), "group": group, "dc_id": int(dc_id)}


def is_dummy(task_id: str) -> bool:
    parts = parse_task_id(task_id)
    return parts is not None and parts["type"] == "d"
