"""The HTTP edge (imagesvc/edge.py) against real sockets: a uvicorn server in a thread of this
process, serving a small ASGI app through ``EdgeProtocol`` with tight limits (the same protocol
``imagesvc serve``, ``gateway`` and ``image-server`` use; tests/e2e/test_http_edge.py runs those)."""

from __future__ import annotations

import asyncio
import io
import json
import resource
import socket
import threading
import time
from contextlib import contextmanager

import pytest
import uvicorn

from imagesvc import edge
from imagesvc.edge import EdgeLimits, EdgeProtocol, ImageServerProtocol
from imagesvc.shared.logging import configure_logging
from tests.support.polling import eventually
from tests.support.raw_http import exchange, read_answer, read_until_closed

HEAD_TIMEOUT = 0.6
BODY_TIMEOUT = 0.6
MAX_HEAD = 4096
CAP = 6


class TightProtocol(EdgeProtocol):
    limits = EdgeLimits(header_timeout=HEAD_TIMEOUT, body_timeout=BODY_TIMEOUT, max_header_bytes=MAX_HEAD,
                        max_connections=CAP)


class TightImageServerProtocol(ImageServerProtocol):
    limits = TightProtocol.limits


class App:
    """Echoes the request body's length; ``/hold`` waits until released; ``/stream`` sends a part
    of its answer and then waits. Records what it saw."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.disconnects: list[str] = []
        self.release = threading.Event()  # set by the test's thread

    async def released(self) -> None:
        while not self.release.is_set():
            await asyncio.sleep(0.01)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        self.requests.append(scope["path"])
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects.append(scope["path"])
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/hold":
            await self.released()
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            await self.released()
            await send({"type": "http.response.body", "body": b""})
            return
        answer = json.dumps({"received": len(body)}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})


@contextmanager
def serving(protocol=TightProtocol):
    app = App()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, http=protocol, ws="none", lifespan="off",
                                           log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, name="edge-test-server", daemon=True)
    thread.start()
    eventually(lambda: _assert(server.started), timeout=10)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield app, port, server
    finally:
        app.release.set()
        server.should_exit = True
        thread.join(timeout=10)


def _assert(condition) -> None:
    assert condition


@pytest.fixture
def logs():
    stream = io.StringIO()
    configure_logging("edge-test", fmt="json", level="DEBUG", stream=stream)
    yield stream
    configure_logging("edge-test", fmt="json", level="INFO", stream=io.StringIO())


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


GET = b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


# --- deadlines ---------------------------------------------------------------------------------


def test_a_head_trickling_in_is_cut_off_at_the_deadline_with_408():
    with serving() as (app, port, _):
        with connect(port) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\n")
            answer = b""
            # A header line every 0.2 s (each byte used to restart uvicorn's timer), for at most
            # the deadline and 5 s more.
            while not answer and time.monotonic() < started + HEAD_TIMEOUT + 5:
                sock.settimeout(0.2)
                try:
                    answer = sock.recv(1, socket.MSG_PEEK)
                except socket.timeout:
                    sock.sendall(b"X-Slow: 1\r\n")
            sock.settimeout(10)
            elapsed = time.monotonic() - started
            status, headers, body = read_answer(sock)
        assert status == 408 and headers["content-type"] == "application/json"
        assert json.loads(body) == {"detail": edge.HEAD_TIMEOUT}
        assert headers["connection"] == "close"
        assert HEAD_TIMEOUT * 0.9 <= elapsed < HEAD_TIMEOUT + 5
        assert app.requests == []


def test_a_connection_that_sends_nothing_is_closed_at_the_head_deadline():
    with serving() as (_, port, _server):
        with connect(port) as sock:
            status, _, _ = read_answer(sock)
        assert status == 408


def test_a_kept_alive_connection_gets_the_deadline_for_each_request_head():
    with serving() as (app, port, _):
        with connect(port) as sock:
            sock.sendall(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            sock.sendall(b"GET /second HTTP/1.1\r\nHost: t\r\n")  # and never the rest
            status, _, body = read_answer(sock)
        assert status == 408 and json.loads(body) == {"detail": edge.HEAD_TIMEOUT}
        assert app.requests == ["/first"]


def test_a_body_that_does_not_arrive_in_time_is_408_and_the_app_is_told_the_client_is_gone():
    with serving() as (app, port, _):
        with connect(port) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
            status, _, body = read_answer(sock)
        assert status == 408 and json.loads(body) == {"detail": edge.BODY_TIMEOUT}
        eventually(lambda: _assert(app.disconnects == ["/upload"]))


def test_prompt_clients_are_served_as_before_keep_alive_bodies_and_pipelining():
    with serving() as (app, port, _):
        with connect(port) as sock:
            sock.sendall(b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
                         b"GET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            answers = read_until_closed(sock)
        assert answers.count(b"HTTP/1.1 200 OK") == 2 and b'{"received": 5}' in answers
        assert app.requests == ["/a", "/b"]


# --- the head's size ---------------------------------------------------------------------------


def test_a_head_over_the_limit_in_one_read_is_431_and_never_reaches_the_app():
    with serving() as (app, port, _):
        status, headers, body = exchange(port, b"GET /x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (MAX_HEAD + 100)
                                        + b"\r\n\r\n")
    assert status == 431 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"detail": f"Request headers are larger than {MAX_HEAD} bytes."}
    assert app.requests == []


def test_a_head_just_under_the_limit_is_served():
    with serving() as (app, port, _):
        status, _, _ = exchange(port, b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Big: "
                               + b"a" * (MAX_HEAD - 200) + b"\r\n\r\n")
    assert status == 200 and app.requests == ["/x"]


def test_a_64_mib_header_is_refused_while_it_streams_and_the_client_reads_the_431(logs):
    with serving() as (app, port, _):
        with connect(port) as sock:
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\nX-Big: ")
            chunk = b"a" * 65536
            try:
                for _ in range(1024):  # 64 MiB; the server drains it after answering
                    sock.sendall(chunk)
            except OSError:
                pass  # the drain's time ran out: the answer was sent before
            status, _, body = read_answer(sock)
    assert status == 431 and json.loads(body)["detail"].startswith("Request headers are larger")
    refused = [json.loads(line) for line in logs.getvalue().splitlines() if '"edge.head_too_large"' in line]
    # Refused after the first reads that went over the limit, not after the whole header.
    assert len(refused) == 1 and refused[0]["received"] < MAX_HEAD + 2 * 256 * 1024
    assert app.requests == []


def test_an_unparsable_request_is_a_json_400():
    with serving() as (_, port, _server):
        status, headers, body = exchange(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"detail": edge.BAD_REQUEST}


def test_the_image_server_edge_answers_in_imgapi_shape():
    with serving(TightImageServerProtocol) as (_, port, _server):
        status, _, body = exchange(port, b"GET /x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (MAX_HEAD + 1) + b"\r\n\r\n")
    assert status == 431
    assert json.loads(body) == {"code": "RequestHeaderFieldsTooLarge",
                                "message": f"Request headers are larger than {MAX_HEAD} bytes."}


# --- the connection cap ------------------------------------------------------------------------


def test_at_the_cap_a_newcomer_closes_the_connection_waiting_longest_for_its_head():
    with serving() as (app, port, _):
        slow = []
        for _ in range(CAP):
            sock = connect(port)
            sock.sendall(b"GET /slow HTTP/1.1\r\n")
            slow.append(sock)
            time.sleep(0.02)  # a distinct waiting order
        status, _, _ = exchange(port, GET)  # the newcomer is served...
        assert status == 200 and app.requests == ["/x"]
        evicted, _, body = read_answer(slow[0])  # ...and the oldest waiting one made room
        assert evicted == 503 and json.loads(body) == {"detail": edge.TOO_MANY}
        for sock in slow[1:]:
            sock.settimeout(0.05)
            with pytest.raises(socket.timeout):
                sock.recv(1)  # still open
        for sock in slow:
            sock.close()


def test_at_the_cap_with_every_connection_busy_the_newcomer_gets_503():
    with serving() as (app, port, _):
        busy = [connect(port) for _ in range(CAP)]
        for sock in busy:
            sock.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        eventually(lambda: _assert(len(app.requests) == CAP))
        status, headers, body = exchange(port, GET)
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body) == {"detail": edge.TOO_MANY}
        for sock in busy:
            sock.close()


# --- clients that hang up ----------------------------------------------------------------------


def test_a_client_hanging_up_mid_response_or_mid_body_is_logged_at_info_without_a_traceback(logs):
    with serving() as (app, port, _):
        with connect(port) as sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
            assert b"part" in sock.recv(65536) or b"part" in sock.recv(65536)
        with connect(port) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n01234")
            eventually(lambda: _assert(app.requests[-1:] == ["/upload"]))
        eventually(lambda: _assert(logs.getvalue().count('"request.client_gone"') == 2))
    gone = [json.loads(line) for line in logs.getvalue().splitlines() if '"request.client_gone"' in line]
    assert [(g["path"], g["during"], g["level"]) for g in gone] == [("/stream", "response", "info"),
                                                                   ("/upload", "request", "info")]
    assert "Traceback" not in logs.getvalue() and '"error"' not in logs.getvalue()


# --- the process ---------------------------------------------------------------------------------


def test_the_open_file_limit_is_raised_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1024), hard))
    try:
        assert edge.raise_open_file_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_connection_cap_is_lowered_to_fit_the_open_file_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        assert edge._connection_cap(4096) == 1024 - edge.RESERVED_FILES
        assert edge._connection_cap(100) == 100
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_protocol_is_found_by_its_qualified_name_as_workers_import_it():
    config = uvicorn.Config(App(), http="imagesvc.edge:EdgeProtocol", ws="none", lifespan="off")
    config.load()
    assert config.http_protocol_class is EdgeProtocol
