"""Publishing a command and answering by the gateway's one rule.

1. Publish the command and wait for the broker's confirm: nothing is promised before the command
   is durable (503 otherwise).
2. Wait up to the answer window for the task's first decisive state *in the read model*: SUCCESS
   (200 with the result), FAILURE (the consumer's code and body), or STARTED (201). Because the
   projector records a task's outcome only after the image change it made, an answer of 200
   means any gateway now serves the new image (read-your-writes).
3. Nothing decisive in time: journal the command (so the task the client will poll is known
   before any consumer has reported on it), then 201 PENDING; with ``ES-STREAM`` the connection
   stays open and the final answer is streamed in the ``es`` client's format (reference §7.7).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from imagesvc.domain import tasks
from imagesvc.services.gateway.blocking import in_thread
from imagesvc.services.gateway.http import ApiError, envelope, json_bytes, json_response
from imagesvc.services.gateway.idempotency import Identity
from imagesvc.services.gateway.queries import Queries, TaskView
from imagesvc.shared import contracts, metrics
from imagesvc.shared.contracts import Actor, Command
from imagesvc.shared.broker.topology import node_routing_key
from imagesvc.shared.crash import crash_point
from imagesvc.shared.errors import PublishFailed, Transient, Unroutable
from imagesvc.shared.logging import get_logger

log = get_logger("gateway.dispatch")

UNAVAILABLE = "Service temporarily unavailable, try again later."
#: Seconds between re-reads of the read model while waiting: rarely while the notification
#: listener is connected (it wakes the waiter), often while it is not.
POLL_WITH_NOTIFICATIONS = 1.0
POLL_WITHOUT_NOTIFICATIONS = 0.25
#: The ``es`` streaming schedule: (elapsed seconds from which it applies, poll interval).
STREAM_SCHEDULE = ((0, 1.0), (5, 3.0), (30, 6.0), (60, 12.0), (1200, 30.0))
STREAM_TIMEOUT = 3600.0
DECISIVE = frozenset({tasks.STARTED, tasks.SUCCESS, tasks.FAILURE})


class TaskWaiter:
    """Wakes requests waiting for a task when a notification about it arrives (from any thread)."""

    def __init__(self, queries: Queries, *, listening: Callable[[], bool] = lambda: False):
        self._queries = queries
        self._listening = listening
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: dict[str, set[asyncio.Event]] = {}
        #: The latest state notified for each awaited task (the projector sends it after commit).
        self._notified: dict[str, TaskView] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # Waiters are keyed by the task id's random part (``tasks.task_key``): a request registers
    # before its task id is complete, and no notification can slip in between.

    def notify(self, notification: dict) -> None:
        """Called from the listener thread with a projector notification."""
        key = tasks.task_key(notification["task_id"])
        if self._loop is not None and key in self._events:
            self._loop.call_soon_threadsafe(self._on_notification, key, notification)

    def _on_notification(self, key: str, notification: dict) -> None:
        if key in self._events and "http_code" in notification:
            self._notified[key] = TaskView(notification["task_id"], str(notification["status"]),
                                           int(notification["http_code"]), notification.get("result"), None, None)
        self._wake(key)

    def wake_all(self) -> None:
        if self._loop is not None:
            for key in list(self._events):
                self._loop.call_soon_threadsafe(self._wake, key)

    def _wake(self, key: str) -> None:
        for event in self._events.get(key, ()):
            event.set()

    def register(self, key: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events.setdefault(key, set()).add(event)
        return event

    def unregister(self, key: str, event: asyncio.Event) -> None:
        waiting = self._events.get(key)
        if waiting is not None:
            waiting.discard(event)
            if not waiting:
                del self._events[key]
                self._notified.pop(key, None)

    async def wait(self, task_id: str, event: asyncio.Event, timeout: float,
                   states: frozenset[str] = DECISIVE) -> TaskView | None:
        """The task once it reaches one of ``states`` in the read model, or its latest view at the deadline."""
        deadline = time.monotonic() + timeout
        view: TaskView | None = None
        while True:
            remaining = deadline - time.monotonic()
            try:
                poll = POLL_WITH_NOTIFICATIONS if self._listening() else POLL_WITHOUT_NOTIFICATIONS
                await asyncio.wait_for(event.wait(), timeout=max(0.0, min(remaining, poll)))
            except asyncio.TimeoutError:
                pass
            event.clear()
            view = self._notified.get(tasks.task_key(task_id))
            if view is None or view.status not in states:
                view = await in_thread(self._queries.task, task_id)
            if view is not None and view.status in states:
                return view
            if time.monotonic() >= deadline:
                return view


@dataclass(frozen=True)
class Submission:
    """A published command, as the journal records it."""

    message_id: str
    task_id: str
    command_type: str
    object_name: str
    user: str
    owner: str | None
    dc: str | None
    #: Where and what was published: ``serve`` publishes it again after a crash (docs/architecture.md).
    routing_key: str
    body: bytes


@dataclass(frozen=True)
class Ticket:
    """A reserved task key and the event that wakes its waiting request."""

    key: str
    event: asyncio.Event
    #: The message id a keyed command (``Idempotency-Key``) is published under; None: a new one.
    message_id: str | None = None


class Dispatcher:
    def __init__(self, *, queries: Queries, publisher, topology, waiter: TaskWaiter, answer_window: float,
                 reply_to: str | None = None, broker_user: str | None = None,
                 declare_node_queue: Callable[[str], None] | None = None):
        self._declare_node_queue = declare_node_queue
        self._queries = queries
        self._broker_user = broker_user
        self._reply_to = reply_to
        self._publisher = publisher
        self._topology = topology
        self._waiter = waiter
        self._window = answer_window

    def ticket(self, keyed: Identity | None = None) -> Ticket:
        """(Event loop.) Reserve a task key (``keyed``'s, for a request with an Idempotency-Key)
        and start listening for it, before the command exists."""
        key = keyed.task_key if keyed else tasks.new_task_key()
        return Ticket(key, self._waiter.register(key), keyed.message_id if keyed else None)

    async def replay(self, request: Request, keyed: Identity) -> Response | None:
        """(Event loop.) The answer for a keyed command published before, found by its message id
        where it is already known (``Queries.command_task``): its task's outcome, else the answer
        rule's wait for it; None if nothing knows it yet (then the request runs as a first one)."""
        view = await in_thread(self._queries.command_task, keyed.message_id)
        # The key part of the task id is derived with the message id: a task without it is not
        # this request's (a command published by hand under a message id copied from us).
        if view is None or tasks.task_key(view.task_id) != keyed.task_key:
            return None
        request.state.task_id = view.task_id
        if view.status not in DECISIVE:
            wake = self._waiter.register(keyed.task_key)
            try:
                view = await self._waiter.wait(view.task_id, wake, self._window) or view
            finally:
                self._waiter.unregister(keyed.task_key, wake)
        if view.status in tasks.TERMINAL:
            return answer(request, view)
        return self._accepted(request, view.task_id)

    def release(self, ticket: Ticket) -> None:
        self._waiter.unregister(ticket.key, ticket.event)

    def submit(self, command: Command, *, task_id: str, actor: Actor, owner: str | None,
               node: str | None = None, message_id: str | None = None) -> Submission:
        """(Thread pool.) Publish the command (to the agent of ``node`` when given; under
        ``message_id`` when given, else a new one) and wait for the broker's confirm.

        Raises ApiError(503) when the broker does not confirm: then nothing was promised.
        """
        envelope_ = contracts.wrap(command, correlation_id=task_id, actor=actor, reply_to=self._reply_to,
                                   message_id=message_id)
        routing_key = node_routing_key(command.TYPE, node) if node else command.TYPE
        body = contracts.encode(envelope_)

        def publish() -> None:
            self._publisher.publish(
                exchange=self._topology.commands.name, routing_key=routing_key, body=body,
                message_id=envelope_.id, message_type=envelope_.type, correlation_id=task_id,
                user_id=self._broker_user)  # RabbitMQ vouches for it: the consumers trust the actor

        crash_point("gateway_before_publish")
        try:
            try:
                publish()
            except Unroutable:
                if not node or self._declare_node_queue is None:
                    raise
                # The node's agent has never run: its queue is declared now, so the command
                # waits there for the agent instead of being lost (it was returned, not routed).
                self._declare_node_queue(node)
                publish()
        except Unroutable as exc:
            # No queue is bound for the command (a broken topology): an operator must see it, and
            # count it apart from a broker that is merely away.
            log.error("command.unroutable", error=str(exc), task_id=task_id, routing_key=routing_key,
                      exchange=self._topology.commands.name)
            raise ApiError(503, UNAVAILABLE, {"Retry-After": "5"}) from None
        except PublishFailed as exc:
            log.warning("command.not_accepted", error=str(exc), task_id=task_id)
            raise ApiError(503, UNAVAILABLE, {"Retry-After": "5"}) from None
        metrics.command_published(command.TYPE)
        crash_point("gateway_after_publish_before_journal")
        # ``or ""``: a command whose name is optional and left out (UNSET) names no object.
        return Submission(envelope_.id, task_id, command.TYPE, str(getattr(command, "name", "") or ""), actor.user,
                          owner, actor.dc, routing_key, body)

    async def answer(self, request: Request, ticket: Ticket, submission: Submission) -> Response:
        """(Event loop.) Wait for the task's first decisive state, then answer by the rule."""
        task_id = submission.task_id
        try:
            view = await self._waiter.wait(task_id, ticket.event, self._window)
        finally:
            self.release(ticket)
        if view is not None and view.status in tasks.TERMINAL:
            if ticket.message_id:
                await in_thread(self._journal, submission)  # a repeat of the key finds its task
            return answer(request, view)
        # The client will poll: make the task readable before the consumer has reported on it.
        await in_thread(self._journal, submission)
        return self._accepted(request, task_id)

    def _accepted(self, request: Request, task_id: str) -> Response:
        """201 PENDING, or with ``ES-STREAM`` the stream that ends with the task's outcome."""
        if request.headers.get("es-stream"):
            return self._stream(request, task_id)
        return pending(request, task_id)

    def _journal(self, submission: Submission) -> None:
        try:
            self._queries.record_submission(
                message_id=submission.message_id, task_id=submission.task_id, command_type=submission.command_type,
                object_name=submission.object_name, user=submission.user, owner=submission.owner, dc=submission.dc,
                routing_key=submission.routing_key, body=submission.body)
            crash_point("gateway_after_journal")
        except Transient as exc:
            # The command is accepted and durable at the broker; only the status read of a task
            # nobody has reported on yet is affected (404 until a consumer reports).
            log.warning("command.journal_failed", error=str(exc), task_id=submission.task_id)

    def _stream(self, request: Request, task_id: str) -> Response:
        """The ``es`` client's synchronous mode: spaces while waiting, then ``<code>\\n<body>``."""

        async def body() -> AsyncIterator[bytes]:
            started = time.monotonic()
            wake = self._waiter.register(tasks.task_key(task_id))
            try:
                while True:
                    elapsed = time.monotonic() - started
                    if elapsed >= STREAM_TIMEOUT:
                        yield json_bytes(request, envelope(task_id, tasks.PENDING, None))
                        return
                    interval = [i for since, i in STREAM_SCHEDULE if elapsed >= since][-1]
                    view = await self._waiter.wait(task_id, wake, interval, states=tasks.TERMINAL)
                    if view is not None and view.status in tasks.TERMINAL:
                        status, payload = answer_body(view)
                        yield f"{status}\n".encode() + json_bytes(request, payload)
                        return
                    yield b" "
            finally:
                self._waiter.unregister(tasks.task_key(task_id), wake)

        headers = {"es_stream": "True", "es_task_id": task_id, "es_task_response": "true",
                   "Location": status_url(task_id)}
        return StreamingResponse(body(), status_code=201, media_type="application/json", headers=headers)


def pending(request: Request, task_id: str) -> Response:
    return json_response(request, envelope(task_id, tasks.PENDING, None), 201,
                         {"es_task_id": task_id, "es_task_response": "true", "Location": status_url(task_id)})


def status_url(task_id: str) -> str:
    """Where an accepted task's state can be read from now on."""
    return f"/api/task/{task_id}/status/"


def answer_body(view: TaskView) -> tuple[int, Any]:
    """(HTTP code, body) with which a finished task answers the request that started it: the
    envelope for a success or a 400, ``{"detail"}`` for a refusal (deviations #16)."""
    if view.status == tasks.SUCCESS:
        # 200, or 201 where the original answers a finished command so (attaching an image).
        return (201 if view.http_code == 201 else 200), envelope(view.task_id, tasks.SUCCESS, view.result)
    if view.http_code == 400:
        return 400, envelope(view.task_id, tasks.FAILURE, view.result)
    detail = view.result.get("detail") if isinstance(view.result, dict) else view.result
    return view.http_code, {"detail": detail}


def answer(request: Request, view: TaskView) -> Response:
    """How a finished task answers the request that started it."""
    code, body = answer_body(view)
    return json_response(request, body, code, {"es_task_id": view.task_id, "es_task_response": "true"})


def status_body(view: TaskView) -> tuple[int, dict]:
    """``GET /task/<id>/status/``: (HTTP code, task envelope) for any state (deviations #3, #16)."""
    if view.status == tasks.SUCCESS:
        return 200, envelope(view.task_id, tasks.SUCCESS, view.result)
    if view.status == tasks.FAILURE:
        return view.http_code, envelope(view.task_id, tasks.FAILURE, view.result)
    running = envelope(view.task_id, view.status, None)
    if view.progress is not None:
        running["progress"] = view.progress  # an addition of ours: bytes done of total
    return 201, running
