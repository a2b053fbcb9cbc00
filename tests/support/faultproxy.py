"""A TCP proxy that injects network faults between a client and a server, at runtime.

Point a client at ``proxy.port`` instead of the server's; every accepted connection opens its
own connection to the server and bytes are pumped both ways by an asyncio loop on a background
thread. Knobs (callable from any thread, effective at once):

- pass-through (the default);
- ``delay(seconds)``: hold every chunk that long before forwarding it (latency; order is kept);
- ``reset()``: send RST to both sides of every open connection now;
- ``blackhole(True/False)``: read and silently drop all bytes, keep both sockets open and
  propagate no FIN (a dead network path: only heartbeats can tell);
- ``reset_after(n_bytes, connections=1)``: arm a trap: the next connection that forwards
  ``n_bytes`` more bytes client->server (counted from arming) is doomed: the server got those
  bytes, but whatever it answers next is dropped and both sides are reset (a publish that reached
  the broker whose confirm never reaches the publisher). ``trap_grace`` bounds how long a doomed
  connection waits for that answer.

``connections`` counts the connections accepted so far; ``traps_sprung`` the doomed ones.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from dataclasses import dataclass, field

_CHUNK = 65536


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    #: Bytes client->server still to pass before this link is doomed (None: not armed).
    trap_countdown: int | None = None
    doomed: bool = False
    closed: bool = False
    #: Directions that ended with a FIN (both: the link is done).
    ended: int = 0
    tasks: list[asyncio.Task] = field(default_factory=list)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN (SO_LINGER on, timeout 0)."""
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1",
                 trap_grace: float = 2.0) -> None:
        self.target = (target_host, target_port)
        self.trap_grace = trap_grace
        self._delay = 0.0
        self._blackhole = False
        self._traps = 0
        self._trap_bytes = 0
        self._links: set[_Link] = set()
        self.connections = 0
        self.traps_sprung = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy", daemon=True)
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, listen_host, 0))
        self.host = listen_host
        self.port = self._server.sockets[0].getsockname()[1]

    def _call(self, coroutine, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    # --- knobs -------------------------------------------------------------------------------

    def delay(self, seconds: float) -> None:
        self._delay = max(0.0, seconds)

    def blackhole(self, on: bool) -> None:
        self._blackhole = on

    def pass_through(self) -> None:
        """Back to normal: no delay, no blackhole, no armed trap."""
        self._delay = 0.0
        self._blackhole = False
        self._call(self._disarm())

    def reset(self) -> int:
        """RST both sides of every open connection; returns how many were reset."""
        return self._call(self._reset_all())

    def reset_after(self, n_bytes: int, connections: int = 1) -> None:
        self._call(self._arm(n_bytes, connections))

    @property
    def open_connections(self) -> int:
        return sum(1 for link in list(self._links) if not link.closed)

    def close(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            await self._reset_all()

        try:
            self._call(shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    # --- event loop --------------------------------------------------------------------------

    async def _disarm(self) -> None:
        self._traps = 0
        for link in self._links:
            link.trap_countdown = None

    async def _arm(self, n_bytes: int, connections: int) -> None:
        self._traps = connections
        self._trap_bytes = max(1, n_bytes)
        for link in self._links:
            if not link.closed and not link.doomed:
                link.trap_countdown = self._trap_bytes

    async def _reset_all(self) -> int:
        links = [link for link in self._links if not link.closed]
        for link in links:
            self._kill(link)
        return len(links)

    def _kill(self, link: _Link) -> None:
        if link.closed:
            return
        link.closed = True
        _rst(link.client)
        _rst(link.server)
        self._links.discard(link)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _rst(client_writer)
            return
        link = _Link(client_writer, server_writer,
                     trap_countdown=self._trap_bytes if self._traps > 0 else None)
        self._links.add(link)
        link.tasks = [asyncio.ensure_future(self._pump(link, client_reader, server_writer, upstream=True)),
                      asyncio.ensure_future(self._pump(link, server_reader, client_writer, upstream=False))]

    async def _pump(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    upstream: bool) -> None:
        try:
            while not link.closed:
                data = await reader.read(_CHUNK)
                if link.closed:
                    return
                if not data:
                    if not self._blackhole:  # a blackholed path carries no FIN either
                        if writer.can_write_eof():
                            writer.write_eof()
                        link.ended += 1
                        if link.ended == 2:
                            link.closed = True
                            link.client.close()
                            link.server.close()
                            self._links.discard(link)
                    return
                if self._blackhole:
                    continue
                if not upstream and link.doomed:
                    self._kill(link)  # the answer to the trapped bytes is never delivered
                    return
                if self._delay:
                    await asyncio.sleep(self._delay)  # the fault itself: latency on the path
                    if link.closed or self._blackhole:
                        continue
                writer.write(data)
                await writer.drain()
                if upstream and link.trap_countdown is not None and self._traps > 0:
                    link.trap_countdown -= len(data)
                    if link.trap_countdown <= 0:
                        self._traps -= 1
                        self.traps_sprung += 1
                        link.doomed = True
                        link.trap_countdown = None
                        if self._traps == 0:
                            await self._disarm()
                        self._loop.call_later(self.trap_grace, self._kill, link)
        except (ConnectionError, OSError):
            self._kill(link)
