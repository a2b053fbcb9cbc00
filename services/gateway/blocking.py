"""Blocking work (database statements, waiting for the broker's confirm) off the event loop.

A plain thread pool through ``loop.run_in_executor``, with the caller's context variables (the
request's log fields): cheaper per call than AnyIO's worker threads behind Starlette's
``run_in_threadpool``, which was a measurable share of the gateway's CPU per command.
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
