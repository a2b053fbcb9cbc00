"""Looking at a broker connection never opens one: tidying up after the broker went away must
not try to reach it again (a consumer died of exactly that while RabbitMQ was stopped)."""

from __future__ import annotations

import socket

import amqp
from kombu import Connection

from imagesvc.shared.broker.connection import amqp_socket, amqp_transport, discard


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens on it once the socket is closed


def lost_connection(port: int) -> Connection:
    """A kombu connection as a lost one is left: its py-amqp connection collected, no transport."""
    connection = Connection(f"amqp://guest:guest@127.0.0.1:{port}//", connect_timeout=1)
    connection._connection = amqp.Connection(host=f"127.0.0.1:{port}", connect_timeout=1)
    return connection


def refused_connects(monkeypatch) -> list:
    attempts: list = []
    original = socket.socket.connect

    def connect(self, address):
        attempts.append(address)
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


def test_a_lost_connection_is_discarded_without_connecting_again(monkeypatch):
    connection = lost_connection(closed_port())
    attempts = refused_connects(monkeypatch)
    discard(connection)  # raised ConnectionRefusedError when it looked at ``transport``
    assert attempts == []


def test_inspecting_a_connection_without_transport_finds_nothing(monkeypatch):
    attempts = refused_connects(monkeypatch)
    for connection in (lost_connection(closed_port()), Connection("amqp://127.0.0.1:1//"), Connection("memory://"),
                       None):
        assert amqp_transport(connection) is None
        assert amqp_socket(connection) is None
    assert attempts == []
