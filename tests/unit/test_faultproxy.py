"""The fault proxy itself, against a tiny echo server: each knob does what the fault rows rely on."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.polling import eventually


class EchoServer:
    """Echoes every byte back; counts the bytes it received (what reached the server)."""

    def __init__(self) -> None:
        self.received = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                self.received += len(data)
                try:
                    conn.sendall(data)
                except OSError:
                    return

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo):
    started = FaultProxy("127.0.0.1", echo.port, trap_grace=0.5)
    yield started
    started.close()


def connect(proxy: FaultProxy, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    return sock


def receive(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_passes_bytes_through_both_ways(proxy):
    with connect(proxy) as sock:
        sock.sendall(b"hello" * 1000)
        assert receive(sock, 5000) == b"hello" * 1000
    assert proxy.connections == 1


def test_delay_holds_each_chunk_back(proxy):
    proxy.delay(0.3)
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"ping")
        assert receive(sock, 4) == b"ping"
        # Delayed on the way in and on the way back.
        assert time.monotonic() - started >= 0.6
    proxy.delay(0)
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"ping")
        assert receive(sock, 4) == b"ping"
        assert time.monotonic() - started < 0.3


def test_reset_sends_rst_to_the_client(proxy):
    with connect(proxy) as sock:
        sock.sendall(b"x")
        assert receive(sock, 1) == b"x"
        assert proxy.reset() == 1
        with pytest.raises(ConnectionResetError):
            sock.recv(10)  # an RST, not a FIN (which would read b"")
    eventually(lambda: _assert_equal(proxy.open_connections, 0))
    with connect(proxy) as sock:  # new connections still work
        sock.sendall(b"y")
        assert receive(sock, 1) == b"y"


def test_blackhole_drops_bytes_and_keeps_the_socket_open(proxy, echo):
    with connect(proxy, timeout=0.5) as sock:
        proxy.blackhole(True)
        sock.sendall(b"lost")
        with pytest.raises(socket.timeout):
            sock.recv(10)  # neither data nor FIN nor RST: a dead path
        assert echo.received == 0
        proxy.blackhole(False)
        sock.sendall(b"back")
        assert receive(sock, 4) == b"back"


def test_blackhole_hides_a_server_side_close(echo):
    proxy = FaultProxy("127.0.0.1", echo.port)
    try:
        with connect(proxy, timeout=0.5) as sock:
            sock.sendall(b"a")
            assert receive(sock, 1) == b"a"
            proxy.blackhole(True)
            echo.close()  # no new connections; the open one stays
            sock.shutdown(socket.SHUT_WR)  # the echo thread sees EOF and closes its side
            with pytest.raises(socket.timeout):
                sock.recv(10)
    finally:
        proxy.close()


def test_reset_after_n_bytes_lets_the_bytes_reach_the_server_and_drops_the_answer(proxy, echo):
    with connect(proxy) as idle, connect(proxy) as sock:
        sock.sendall(b"warm")
        assert receive(sock, 4) == b"warm"
        proxy.reset_after(100)
        sock.sendall(b"p" * 100)  # the "publish": reaches the server ...
        with pytest.raises(ConnectionResetError):
            receive(sock, 100)  # ... but its "confirm" never comes back
        eventually(lambda: _assert_equal(echo.received, 104))
        assert proxy.traps_sprung == 1
        # One trap, one connection: the other one and later ones pass.
        idle.sendall(b"p" * 200)
        assert receive(idle, 200) == b"p" * 200


def test_reset_after_springs_on_as_many_connections_as_armed(proxy):
    proxy.reset_after(10, connections=2)
    for _ in range(2):
        with connect(proxy) as sock:
            sock.sendall(b"z" * 10)
            with pytest.raises(ConnectionResetError):
                receive(sock, 10)
    with connect(proxy) as sock:
        sock.sendall(b"z" * 10)
        assert receive(sock, 10) == b"z" * 10
    assert proxy.traps_sprung == 2


def test_pass_through_disarms_a_trap(proxy):
    proxy.reset_after(1)
    proxy.pass_through()
    with connect(proxy) as sock:
        sock.sendall(b"q" * 50)
        assert receive(sock, 50) == b"q" * 50
    assert proxy.traps_sprung == 0


def _assert_equal(actual, expected) -> None:
    assert actual == expected, (actual, expected)
