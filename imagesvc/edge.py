"""The HTTP edge of imagesvc's servers (``serve``, ``gateway``, ``image-server``): holding the
line against slow and oversized clients, which uvicorn and httptools leave to the application.

uvicorn has no deadline for a request's head (its keep-alive timer is cancelled by any byte that
arrives) and httptools no limit on its size: a client could hold a connection forever by sending
a header byte now and then, or make the server buffer a 64 MiB header. ``EdgeProtocol`` is
uvicorn's httptools protocol with, per server process (``IMAGESVC_*``, shared/config.py):

- a head deadline (``header_timeout``): a connection's first request head must be complete
  within it from the connect, a kept-alive connection's next one from its first byte (the idle
  time before is uvicorn's keep-alive timeout); else 408 and the connection is closed;
- a body deadline (``body_timeout``), from the end of the head to the end of the body; else 408;
- a head size limit (``max_header_bytes``): 431 as soon as more has arrived without the head
  being complete, so at most one read (256 KiB) beyond the limit is ever held;
- a connection cap (``max_connections``, lowered to fit the open-file limit, which ``run``
  raises to its hard limit first). A newcomer beyond the cap closes the connection that has
  waited longest for a request head (a refused one still being drained goes first). Refusing
  the newcomer instead would give the server to whoever holds the most connections: a few
  thousand slow clients would lock everybody else out, and an attacker only has to reconnect as
  its connections time out. A client that sends its request promptly is never the one that has
  waited longest, so it is not the one evicted; only when no connection is waiting (all are busy
  with requests) is the newcomer refused (503).

What the edge answers itself is JSON (``{"detail": ...}``; the image server's own shape on its own
port), with ``Connection: close``. A refusal after which the client may still be sending (431,
400, the body deadline) half-closes and reads and drops what comes for up to ``LINGER_SECONDS``,
so the client can read the answer instead of a connection reset.

A client that hangs up while its request is being answered (its body not yet read, or its answer
not yet sent) is logged at info as ``request.client_gone``, without a traceback.

``EdgeProtocol`` is named by its qualified name (``uvicorn.run(http=...)``) so that every
``--workers`` process imports it and reads its limits from its own environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import http
import os
import resource
import time
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from imagesvc.shared.config import Settings
from imagesvc.shared.logging import get_logger

log = get_logger("edge")

#: Open files a server process keeps for itself beyond its client connections (database and
#: broker connections, image files being served, logs).
RESERVED_FILES = 256
#: Seconds a refused connection is drained (read and dropped) so that its client reads the answer.
LINGER_SECONDS = 5.0
#: Seconds between two warnings that the connection cap is being hit.
REPORT_EVERY = 10.0

HEAD_TIMEOUT = "Request headers were not received in time."
BODY_TIMEOUT = "Request body was not received in time."
HEAD_TOO_LARGE = "Request headers are larger than {limit} bytes."
BAD_REQUEST = "Invalid HTTP request received."
TOO_MANY = "Too many connections, try again later."


@dataclass(frozen=True)
class EdgeLimits:
    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "EdgeLimits":
        return cls(header_timeout=settings.header_timeout, body_timeout=settings.body_timeout,
                   max_header_bytes=settings.max_header_bytes,
                   max_connections=_connection_cap(settings.max_connections))


def _connection_cap(configured: int) -> int:
    """``configured``, lowered so that the connections and ``RESERVED_FILES`` fit the open-file limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or configured <= soft - RESERVED_FILES:
        return configured
    cap = max(1, soft - RESERVED_FILES)
    log.warning("edge.connection_cap_lowered", configured=configured, cap=cap, open_file_limit=soft)
    return cap


@functools.cache
def _process_limits() -> EdgeLimits:
    return EdgeLimits.from_settings(Settings.from_env(os.environ))


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit (children inherit it); returns
    the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. an unlimited hard limit above the kernel's nr_open
            log.warning("edge.open_file_limit_kept", soft=soft, hard=hard, error=str(exc))
    return soft


class _Connections:
    """The connections of one server that wait for a request head, longest-waiting first (a dict
    keeps insertion order), and those being drained after a refusal."""

    def __init__(self) -> None:
        self.waiting: dict[EdgeProtocol, None] = {}
        self.lingering: dict[EdgeProtocol, None] = {}
        self.evicted = 0
        self.refused = 0
        self._reported = float("-inf")

    def forget(self, connection: "EdgeProtocol") -> None:
        self.waiting.pop(connection, None)
        self.lingering.pop(connection, None)

    def make_room(self) -> bool:
        """Close the connection that matters least (a lingering one, else the longest-waiting);
        False if every connection is busy with a request."""
        for pool in (self.lingering, self.waiting):
            if pool:
                victim = next(iter(pool))
                self.forget(victim)
                victim.evict()
                self.evicted += 1
                return True
        self.refused += 1
        return False

    def report(self, cap: int) -> None:
        now = time.monotonic()
        if now - self._reported >= REPORT_EVERY:
            log.warning("edge.connection_cap_reached", cap=cap, evicted=self.evicted, refused=self.refused)
            self._reported, self.evicted, self.refused = now, 0, 0


_SERVERS: "weakref.WeakKeyDictionary[ServerState, _Connections]" = weakref.WeakKeyDictionary()


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request head over the limit."""


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the edge's deadlines, head limit and connection cap."""

    #: None: read from this process's environment (``IMAGESVC_*``) on first use.
    limits: ClassVar[EdgeLimits | None] = None

    def __init__(self, config: Any, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.edge = self.limits or _process_limits()
        self._peers = _SERVERS.setdefault(server_state, _Connections())
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = False
        self._head_bytes = 0
        self._chunk_bytes = 0
        self._head_too_large = False
        self._peer_closed = False
        self._refused = False

    @staticmethod
    def error_body(status: int, message: str) -> bytes:
        return orjson.dumps({"detail": message})

    # --- the connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.edge.max_connections:
            made_room = self._peers.make_room()
            self._peers.report(self.edge.max_connections)
            if not made_room:
                self._refuse(503, TOO_MANY, answer=True, linger=False, headers=((b"retry-after", b"1"),))
                return
        self._in_head = True
        self._peers.waiting[self] = None
        self._arm(self.edge.header_timeout, self._head_timed_out)

    def evict(self) -> None:
        """Close this connection to make room for a newcomer."""
        if self._refused:
            self.transport.abort()  # already answered, only being drained
            return
        log.debug("edge.evicted", client=self.client)
        self._refuse(503, TOO_MANY, answer=self._idle(), linger=False, headers=((b"retry-after", b"1"),))

    def eof_received(self) -> None:
        self._peer_closed = True

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not self._refused \
                and (exc is not None or self._peer_closed):
            log.info("request.client_gone", method=cycle.scope.get("method"), path=cycle.scope.get("path"),
                     during="response" if cycle.response_started else "request")
        self._cancel_deadline()
        self._peers.forget(self)
        super().connection_lost(exc)

    # --- reading -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered already: what still comes is dropped
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        self._chunk_bytes = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._head_too_large:
                self._too_large()
            else:
                log.info("edge.bad_request", client=self.client)
                self._refuse(400, BAD_REQUEST, answer=self._idle(), linger=True)
            return
        if self._in_head and self._head_bytes > self.edge.max_header_bytes:
            self._too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:
            # A kept-alive connection's next request: its head is counted from its first byte (at
            # most the whole read it arrived in, which may hold the end of the previous request).
            self._in_head = True
            self._head_bytes = self._chunk_bytes
            self._peers.waiting.setdefault(self, None)
        if self._deadline is None:
            self._arm(self.edge.header_timeout, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._cancel_deadline()
        self._in_head = False
        self._peers.waiting.pop(self, None)
        head = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if head > self.edge.max_header_bytes:
            # It came in one read: refused all the same, before the application sees it.
            self._head_too_large = True
            raise _HeadTooLarge()
        super().on_headers_complete()
        self._arm(self.edge.body_timeout, self._body_timed_out)

    def on_message_complete(self) -> None:
        self._cancel_deadline()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:
            # Idle, waiting for the next request: evictable from now on.
            self._peers.waiting[self] = None

    # --- refusing ----------------------------------------------------------------------------

    def _head_timed_out(self) -> None:
        self._deadline = None
        log.debug("edge.head_timeout", client=self.client, received=self._head_bytes)
        self._refuse(408, HEAD_TIMEOUT, answer=self._idle(), linger=False)

    def _body_timed_out(self) -> None:
        self._deadline = None
        cycle = self.cycle
        log.info("edge.body_timeout", client=self.client, method=cycle.scope.get("method"),
                 path=cycle.scope.get("path"))
        # Once the application has begun its answer, there is nothing to do but close.
        self._refuse(408, BODY_TIMEOUT, answer=not cycle.response_started, linger=True)

    def _too_large(self) -> None:
        log.info("edge.head_too_large", client=self.client, received=self._head_bytes,
                 limit=self.edge.max_header_bytes)
        self._refuse(431, HEAD_TOO_LARGE.format(limit=self.edge.max_header_bytes), answer=self._idle(),
                     linger=True)

    def _idle(self) -> bool:
        """Whether an answer of ours may be written now: no response is under way on the connection."""
        return self.cycle is None or self.cycle.response_complete or not self.cycle.response_started

    def _refuse(self, status: int, message: str, *, answer: bool, linger: bool,
                headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """Answer ``status`` (if ``answer``) and close; with ``linger``, drain the connection for
        ``LINGER_SECONDS`` first. The request in progress, if any, is told its client is gone."""
        self._refused = True
        self._cancel_deadline()
        self._peers.forget(self)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if answer and not self.transport.is_closing():
            self.transport.write(self._response(status, message, headers))
        if linger and self.transport.can_write_eof() and not self.transport.is_closing():
            self.transport.write_eof()
            self.flow.resume_reading()
            self._peers.lingering[self] = None
            self._arm(LINGER_SECONDS, self.transport.abort)
        else:
            self.transport.close()

    def _response(self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...]) -> bytes:
        body = self.error_body(status, message)
        lines = [STATUS_LINE[status]]
        for name, value in [*self.server_state.default_headers, *headers,
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]:
            lines.extend([name, b": ", value, b"\r\n"])
        lines.extend([b"\r\n", body])
        return b"".join(lines)

    def _arm(self, seconds: float, callback) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(seconds, callback)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


class ImageServerProtocol(EdgeProtocol):
    """``imagesvc image-server``'s edge: its refusals in IMGAPI's shape (``{"code", "message"}``)."""

    @staticmethod
    def error_body(status: int, message: str) -> bytes:
        return orjson.dumps({"code": http.HTTPStatus(status).phrase.replace(" ", ""), "message": message})


def port_problem(host: str, port: int) -> str | None:
    """Why nothing could listen on ``host:port`` now (taken, not an address of this machine, not
    allowed), or None. Checked before a process says it runs: uvicorn would only log the failure
    and exit after the process had started everything else."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, OverflowError) as exc:
        return f"cannot listen on {host}:{port}: {exc}"
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            reason = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            return f"cannot listen on {host}:{port}: {reason}"
    return None


def run(app: Any, *, settings: Settings, host: str, port: int, image_server: bool = False, **options: Any) -> None:
    """``uvicorn.run`` with the edge: the open-file limit raised, ``EdgeProtocol`` (by name, for
    ``--workers``), a listen queue as long as the connection cap, ``X-Forwarded-*`` believed only
    from ``IMAGESVC_TRUSTED_PROXIES`` (uvicorn trusts 127.0.0.1 by default), no WebSocket
    upgrades, logging left to imagesvc, and with ``workers`` > 1 the metrics' multiprocess
    directory."""
    import uvicorn

    raise_open_file_limit()
    protocol = ImageServerProtocol if image_server else EdgeProtocol
    with contextlib.ExitStack() as stack:
        if (options.get("workers") or 1) > 1 and settings.metrics == "on":
            # Every worker process writes its metrics into one fresh directory, and the one that
            # answers a scrape sums them (shared.metrics); removed when the server stops.
            from imagesvc.shared import metrics

            stack.enter_context(metrics.multiprocess_directory())
        uvicorn.run(app, host=host, port=port, http=f"{protocol.__module__}:{protocol.__qualname__}", ws="none",
                    # A burst of new connections waits in the listen queue; one that overflows it drops
                    # a handshake, which costs the client a second (the kernel caps it at somaxconn).
                    backlog=max(2048, settings.max_connections),
                    proxy_headers=bool(settings.trusted_proxies),
                    forwarded_allow_ips=list(settings.trusted_proxies) or None,
                    log_config=None, access_log=False, **options)
