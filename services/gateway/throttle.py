"""Request throttling (deviations #13): off by default; ``IMAGESVC_THROTTLE=45/minute`` limits each
user (and each client address, for the anonymous login) to that many requests in any window of
that length, answering 429 with the original's message.

The window is kept per gateway process, as the original kept it per cache: with N gateway
processes behind a balancer a user gets up to N times the rate.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Callable

from services.gateway.http import ApiError
from shared.config import parse_rate

class Throttle:
    """At most ``limit`` requests per key in any ``period`` seconds (a sliding window)."""

    def __init__(self, limit: int, period: float, *, clock: Callable[[], float] = time.monotonic):
        self._limit = limit
        self._period = period
        self._clock = clock
        self._history: dict[object, deque[float]] = {}
        self._lock = threading.Lock()

    def wait(self, key: object) -> float | None:
        """None if a request by ``key`` may go ahead now (and count it), else the seconds until one may."""
        now = self._clock()
        with self._lock:
            history = self._history.setdefault(key, deque())
            while history and history[0] <= now - self._period:
                history.popleft()
            if len(history) >= self._limit:
                return self._period - (now - history[0])
            history.append(now)
            if len(self._history) > 10_000:  # forget keys whose window is empty
                self._history = {k: h for k, h in self._history.items() if h and h[-1] > now - self._period}
            return None

    def check(self, key: object) -> None:
        """Raises ApiError(429) with the original's message when ``key`` is over its rate."""
        wait = self.wait(key)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise ApiError(429, f"Request was throttled. Expected available in {seconds} seconds.",
                           {"Retry-After": str(seconds)})


class NoThrottle:
    def check(self, key: object) -> None:
        return None


def throttle_for(setting: str) -> Throttle | NoThrottle:
    rate = parse_rate(setting)
    return NoThrottle() if rate is None else Throttle(*rate)
