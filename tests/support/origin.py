"""A loopback HTTP origin that serves image manifests and files the way a repository does."""

from __future__ import annotations

import hashlib
import http
import http.server
import select
import socket
import sys
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    #: Added to (or, with None, removed from) the default Content-Length and Content-Type.
    headers: dict[str, str | None] = field(default_factory=dict)
    #: Seconds to wait before answering (a slow repository).
    delay: float = 0.0
    #: Send the body in 64 KiB pieces this many seconds apart (a slow download).
    pace: float = 0.0
    #: Stop sending after this many bytes of the body and hold the connection (a stalled download).
    stall_after: int | None = None
    #: Only the first this many requests are paced (None: all of them): a download that is slow
    #: once and fast when tried again.
    paced_requests: int | None = None
    #: Send the status line and the headers one byte every this many seconds (an origin that
    #: keeps a per-read timeout from ever expiring).
    trickle: float = 0.0
    #: The first request trickled: 2 answers the first one (a probe) at once.
    trickle_from: int = 1
    #: Requests served so far.
    served: int = 0


class Origin:
    """``add_manifest(...)`` publishes ``/images/<uuid>`` and ``/images/<uuid>/file``; ``route(...)``
    serves anything else. Records every path requested (``hits``), with its ``time.monotonic()``
    (``arrivals``), and the requests whose client went away before the answer was sent
    (``dropped``: noticed at once while a trickled head is sent, at the next write of a body). ``host``: the loopback address it listens on (another one than 127.0.0.1
    makes a sentinel that an allow-list does not admit)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, Route] = {}
        self.hits: list[str] = []
        self.arrivals: list[tuple[str, float]] = []
        self.dropped: list[tuple[str, float]] = []
        #: Set on close: releases the connections of stalled routes.
        self.stalled = threading.Event()
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                origin.hits.append(self.path)
                origin.arrivals.append((self.path, time.monotonic()))
                route = origin.routes.get(self.path.split("?")[0], Route(404, b'{"code":"ResourceNotFound"}'))
                if route.delay:
                    time.sleep(route.delay)  # the origin's behaviour under test, not a wait in a test
                headers = {"Content-Length": str(len(route.body)), "Content-Type": "application/json", **route.headers}
                headers = {key: value for key, value in headers.items() if value is not None}  # None: left out
                route.served += 1
                if route.trickle and route.served >= route.trickle_from:
                    if not self._trickle_head(route, headers):
                        return
                else:
                    self.send_response(route.status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                body = route.body if route.stall_after is None else route.body[:route.stall_after]
                try:
                    if route.pace and (route.paced_requests is None or route.served <= route.paced_requests):
                        for start in range(0, len(body), 65536):
                            self.wfile.write(body[start:start + 65536])
                            self.wfile.flush()
                            time.sleep(route.pace)  # the origin's behaviour under test
                    else:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    origin.dropped.append((self.path, time.monotonic()))
                    self.close_connection = True
                    return
                if route.stall_after is not None:
                    self.wfile.flush()
                    origin.stalled.wait(120)  # hold the connection open, sending nothing

            def _trickle_head(self, route: Route, headers: dict[str, str]) -> bool:
                """Send the head byte by byte; False when the client closed its end meanwhile
                (recorded in ``dropped`` when it happens) or the origin is closing."""
                head = f"HTTP/1.1 {route.status} {http.HTTPStatus(route.status).phrase}\r\n"
                head += "".join(f"{key}: {value}\r\n" for key, value in headers.items()) + "\r\n"
                for byte in head.encode():
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        # The origin's pace; a client that closes meanwhile makes the socket readable
                        # (EOF). poll, not select: a process holding many sockets has descriptors
                        # above select's 1024.
                        poller = select.poll()
                        poller.register(self.connection, select.POLLIN)
                        readable = poller.poll(route.trickle * 1000)
                        gone = bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
                    except OSError:  # reset or broken pipe
                        gone = True
                    if gone:
                        origin.dropped.append((self.path, time.monotonic()))
                        self.close_connection = True
                        return False
                    if origin.stalled.is_set():
                        return False
                return True

            def log_message(self, *_args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that left: not news
                    super().handle_error(request, client_address)

        self._server = Server((host, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def route(self, path: str, body: bytes | str = b"", *, status: int = 200, headers: dict[str, str | None] | None = None,
              delay: float = 0.0, pace: float = 0.0, stall_after: int | None = None, trickle: float = 0.0,
              trickle_from: int = 1) -> str:
        self.routes[path] = Route(status, body.encode() if isinstance(body, str) else body, headers or {}, delay,
                                  pace, stall_after, trickle=trickle, trickle_from=trickle_from)
        return self.base + path

    def add_manifest(self, manifest: dict[str, Any] | None = None, *, delay: float = 0.0,
                     **overrides: Any) -> tuple[str, dict[str, Any]]:
        """Serve a valid manifest (``overrides`` change its keys), answering after ``delay``
        seconds; returns (manifest URL, manifest)."""
        data = sample_manifest(**overrides) if manifest is None else manifest
        path = f"/images/{data['uuid']}"
        self.route(path, orjson.dumps(data), delay=delay)
        self.route(path + "/file", b"\x00" * 64)
        return self.base + path, data

    def add_image(self, content: bytes, *, sha1: str | None = None, size: int | None = None,
                  file_headers: dict[str, str] | None = None, pace: float = 0.0, stall_after: int | None = None,
                  **overrides: Any) -> tuple[str, dict[str, Any]]:
        """Serve a manifest whose ``files[0]`` describes ``content`` (unless ``sha1``/``size``
        say otherwise) and the file itself; returns (manifest URL, manifest)."""
        files = [{"sha1": sha1 or hashlib.sha1(content).hexdigest(), "size": len(content) if size is None else size,
                  "compression": "none"}]
        url, data = self.add_manifest(files=files, **overrides)
        self.route(f"/images/{data['uuid']}/file", content, headers={"Content-Type": "application/octet-stream",
                                                                      **(file_headers or {})},
                   pace=pace, stall_after=stall_after)
        return url, data

    def add_repository(self, prefix: str, manifests: list[dict[str, Any]]) -> str:
        """Serve an IMGAPI repository under ``prefix`` (e.g. ``/repo-a/``): ``<prefix>images`` lists
        ``manifests``, each also served as by ``add_manifest``; returns the repository URL."""
        self.route(prefix + "images", orjson.dumps(manifests))
        for manifest in manifests:
            self.route(f"{prefix}images/{manifest['uuid']}", orjson.dumps(manifest))
            self.route(f"{prefix}images/{manifest['uuid']}/file", b"\x00" * 64)
        return self.base + prefix

    def close(self) -> None:
        self.stalled.set()
        self._server.shutdown()
        self._server.server_close()


def sample_manifest(**overrides: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "v": 2,
        "uuid": str(uuidlib.uuid4()),
        "name": "centos-7",
        "version": "20200101",
        "type": "zvol",
        "os": "linux",
        "description": "CentOS 7 64-bit",
        "image_size": 10240,
        "files": [{"sha1": "0" * 40, "size": 64, "compression": "none"}],
        "tags": {"resize": True, "erigones": ["linux"]},
    }
    manifest.update(overrides)
    return manifest
