"""How many long-running commands one user may have running at once in one consumer.

A consumer has a few worker threads, and a long-running command (an import downloading its file,
a snapshot image being exported) holds one for as long as its origin or its disk makes it last.
Without a cap one user's commands can take every thread while everybody else's wait behind them.
A handler claims a slot where its long part begins, after its quick checks and refusals
(``CommandContext.begin_long_work``), and ``CommandConsumer`` releases it however the command
ends; a command whose user is at the cap is deferred there (put back at the end of its queue, not
counted as an attempt) rather than run. A command refused by its checks is refused at once, as
it would have been: the cap never turns a "busy now" refusal into a later success.

The count is kept in memory, per consumer: worker threads are per consumer, and the check costs
no database round trip. Which command types are long-running is the caller's choice.
"""

from __future__ import annotations

import threading
from typing import Iterable

#: How long a deferred command waits before it goes back to its queue: its user's running
#: commands take seconds to minutes, and a shorter wait only makes it come back to be deferred
#: again (each round trip is a confirmed publish).
DEFER_SECONDS = 1.0


class UserAtCap(Exception):
    """The command's user already runs ``cap`` long-running commands in this consumer: try it
    again in ``delay`` seconds."""

    def __init__(self, user: str | None, cap: int, delay: float):
        super().__init__(f"{user} already runs {cap} long-running command(s) here")
        self.user = user
        self.cap = cap
        self.delay = delay


class UserSlots:
    """At most ``per_user`` commands of ``command_types`` running at once per actor user
    (commands without an actor count as one user). Thread-safe."""

    def __init__(self, per_user: int, command_types: Iterable[str], *, defer_seconds: float = DEFER_SECONDS):
        if per_user < 1:
            raise ValueError("per_user must be at least 1")
        self.per_user = per_user
        self.command_types = frozenset(command_types)
        self.defer_seconds = defer_seconds
        self._lock = threading.Lock()
        self._running: dict[str | None, int] = {}

    def claim(self, command_type: str, user: str | None) -> bool:
        """Take a slot for a command of ``command_type`` for ``user``: False when the type is
        long-running and ``user`` has ``per_user`` such commands running already (nothing is
        taken then). Every True must be followed by ``release`` with the same arguments."""
        if command_type not in self.command_types:
            return True
        with self._lock:
            running = self._running.get(user, 0)
            if running >= self.per_user:
                return False
            self._running[user] = running + 1
            return True

    def release(self, command_type: str, user: str | None) -> None:
        if command_type not in self.command_types:
            return
        with self._lock:
            left = self._running[user] - 1
            if left:
                self._running[user] = left
            else:
                del self._running[user]
