"""Request throttling (deviations #13): off by default; ``IMAGESVC_THROTTLE=45/minute`` limits each
user (and each client address, for the anonymous login) to that many requests in any window of
that length, answering 429 with the original's message.

Logins have a throttle of their own, on by default (``IMAGESVC_LOGIN_THROTTLE``, ``10/minute``):
attempts per user name and per client address, counted before the password is checked (so
parallel attempts cannot outrun it) and given back when the login succeeds, so in effect it counts
failures. It is there to make password guessing slow, at a price: somebody who fails a user's
logins on purpose keeps that user from logging in (not from using an API key) for the window.

The windows are kept per gateway process, as the original kept them per cache: with N gateway
processes behind a balancer a user gets up to N times the rate.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Callable

from imagesvc.services.gateway.http import ApiError
from imagesvc.shared.config import parse_rate

class Throttle:
    """At most ``limit`` requests per key in any ``period`` seconds (a sliding window)."""

    def __init__(self, limit: int, period: float, *, clock: Callable[[], float] = time.monotonic):
        self._limit = limit
        self._period = period
        self._clock = clock
        self._history: dict[object, deque[float]] = {}
        self._lock = threading.Lock()

    def wait(self, *keys: object) -> float | None:
        """None if a request counted under every one of ``keys`` may go ahead now (and count it
        under each), else the seconds until it may (then it counts under none)."""
        now = self._clock()
        with self._lock:
            histories = [self._history.setdefault(key, deque()) for key in keys]
            for history in histories:
                while history and history[0] <= now - self._period:
                    history.popleft()
            full = [history for history in histories if len(history) >= self._limit]
            if full:
                return max(self._period - (now - history[0]) for history in full)
            for history in histories:
                history.append(now)
            if len(self._history) > 10_000:  # forget keys whose window is empty
                self._history = {k: h for k, h in self._history.items() if h and h[-1] > now - self._period}
            return None

    def check(self, *keys: object) -> None:
        """Raises ApiError(429) with the original's message when any of ``keys`` is over its rate."""
        wait = self.wait(*keys)
        if wait is not None:
            raise throttled(wait)

    def give_back(self, *keys: object) -> None:
        """Uncount the latest request counted under each of ``keys`` (one that turned out not to count)."""
        with self._lock:
            for key in keys:
                history = self._history.get(key)
                if history:
                    history.pop()


class NoThrottle:
    def check(self, *keys: object) -> None:
        return None

    def give_back(self, *keys: object) -> None:
        return None


def throttled(wait: float) -> ApiError:
    """The original's 429, with ``Retry-After``."""
    seconds = max(1, math.ceil(wait))
    return ApiError(429, f"Request was throttled. Expected available in {seconds} seconds.",
                    {"Retry-After": str(seconds)})


def throttle_for(setting: str) -> Throttle | NoThrottle:
    rate = parse_rate(setting)
    return NoThrottle() if rate is None else Throttle(*rate)
