"""Blocking work (database statements, waiting for the broker's confirm) off the event loop.

A plain thread pool through ``loop.run_in_executor``, with the caller's context variables (the
request's log fields): cheaper per call than AnyIO's worker threads behind Starlette's
``run_in_threadpool``, which was a measurable share of the gateway's CPU per command. CPU-heavy
work that anonymous clients can ask for (password hashing) runs on a ``BoundedPool`` of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")

#: As many as AnyIO's default: requests waiting for the database or the broker at once.
_POOL = ThreadPoolExecutor(max_workers=40, thread_name_prefix="gateway-blocking")


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    call = functools.partial(fn, *args, **kwargs) if kwargs else (lambda: fn(*args))
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_POOL, context.run, call)


class Busy(Exception):
    """A ``BoundedPool`` has as much work running and waiting as it takes."""


class BoundedPool:
    """A thread pool of its own for CPU-heavy work (password hashing): ``threads`` run at once and
    up to ``waiting`` more wait; beyond that ``run`` raises ``Busy`` at once. Such work can then
    neither take the shared pool's threads from database statements nor pile up without bound.
    ``run`` is called on the event loop only (its count needs no lock)."""

    def __init__(self, *, threads: int, waiting: int, name: str):
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._capacity = threads + waiting
        self._admitted = 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._admitted >= self._capacity:
            raise Busy()
        self._admitted += 1
        try:
            context = contextvars.copy_context()
            return await asyncio.get_running_loop().run_in_executor(self._pool, context.run, fn, *args)
        finally:
            self._admitted -= 1
