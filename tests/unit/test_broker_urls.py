"""IMAGESVC_BROKER_URL as a list of a RabbitMQ cluster's nodes (kombu's ``;``-separated failover
list): parsed in order, every URL validated, every password masked, mixed lists refused, and each
connection given all the URLs with round-robin failover."""

from __future__ import annotations

import socket

import pytest

from imagesvc.client.broker import Broker
from imagesvc.shared.broker import connection as broker_connection
from imagesvc.shared.broker.connection import broker_identity, connect, ensure_connected
from imagesvc.shared.config import ConfigError, Settings, broker_urls, effective, masked_url

THREE = ("amqp://svc:s3cret@rabbit-a:5672/imagesvc;amqp://svc:s3cret@rabbit-b:5672/imagesvc;"
         "amqp://svc:s3cret@rabbit-c:5672/imagesvc")


def settings(url: str) -> Settings:
    return Settings.from_env({"IMAGESVC_BROKER_URL": url})


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens on it once the socket is closed


def test_a_list_is_split_in_order_with_blanks_and_a_trailing_separator_ignored():
    assert broker_urls(THREE) == tuple(THREE.split(";"))
    assert broker_urls(" amqp://a:p@h1// ; amqp://a:p@h2//; ") == ("amqp://a:p@h1//", "amqp://a:p@h2//")
    assert broker_urls("amqp://guest:guest@127.0.0.1:5672//") == ("amqp://guest:guest@127.0.0.1:5672//",)
    assert settings(THREE).broker_url == THREE
    assert settings(THREE).embedded_broker is False


@pytest.mark.parametrize(("value", "problem"), [
    ("amqp://svc:p@rabbit-a//;memory://", "memory:// (the embedded mode's in-process broker) cannot be listed"),
    ("memory://;memory://", "cannot be listed with other URLs"),
    ("amqp://svc:p@rabbit-a//;amqps://svc:p@rabbit-b//", "the URLs mix schemes (amqp, amqps)"),
    ("amqp://svc:p@rabbit-a//;redis://rabbit-b", "redis://rabbit-b: expected amqp://"),
    ("amqp://svc:p@rabbit-a/imagesvc;amqp://other:p@rabbit-b/imagesvc", "the same user and virtual host"),
    ("amqp://svc:p@rabbit-a/imagesvc;amqp://svc:p@rabbit-b/elsewhere", "the same user and virtual host"),
    ("amqp://svc:p@rabbit-a//;amqp://svc:p@:5672//", "needs a host"),
    (";", "no broker URL"),
])
def test_a_list_that_cannot_be_one_cluster_is_a_config_error_naming_the_variable(value, problem):
    with pytest.raises(ConfigError, match="^IMAGESVC_BROKER_URL: ") as raised:
        settings(value)
    assert problem in str(raised.value)


def test_a_bad_url_in_the_list_is_reported_without_its_password():
    with pytest.raises(ConfigError) as raised:
        settings("amqp://svc:s3cret@rabbit-a:5672//;amqp://svc:s3cret@rabbit-b:notaport//")
    message = str(raised.value)
    assert "rabbit-b:notaport" in message and "a port must be a number" in message
    assert "s3cret" not in message


def test_every_password_of_the_list_is_masked_in_what_a_process_shows():
    assert masked_url(THREE) == ";".join(f"amqp://svc:***@rabbit-{n}:5672/imagesvc" for n in "abc")
    shown = effective(settings(THREE))
    assert shown["IMAGESVC_BROKER_URL"].count("svc:***@") == 3
    assert "s3cret" not in repr(shown)


def test_a_connection_gets_every_url_with_round_robin_failover_and_heartbeats():
    connection = connect(settings(THREE), "test")
    assert connection.alt == THREE.split(";")
    assert connection.info()["failover_strategy"] == "round-robin"
    assert connection.heartbeat == 15 and connection.hostname == connection.alt[0].split("@")[1].split(":")[0]


def test_the_process_broker_user_is_the_lists_user():
    assert broker_identity(settings(THREE)).own == "svc"


def test_connecting_tries_each_url_once_in_turn_then_fails(monkeypatch):
    ports = [closed_port() for _ in range(3)]
    url = ";".join(f"amqp://guest:guest@127.0.0.1:{port}//" for port in ports)
    tried: list[int] = []
    original = socket.socket.connect

    def recording_connect(sock, address):
        tried.append(address[1])
        return original(sock, address)

    monkeypatch.setattr(socket.socket, "connect", recording_connect)
    connection = connect(settings(url), "test")
    with pytest.raises(Exception):
        ensure_connected(connection, timeout=5)
    assert tried == ports  # every node once, in the list's order


def test_a_new_connection_starts_at_the_url_that_last_worked():
    preference = broker_connection._Preference()
    urls = THREE.split(";")
    assert preference.ordered(urls) == urls

    class Opened:  # what ensure_connected hands over: the connection, now on rabbit-c
        hostname, port = "rabbit-c", 5672

    preference.worked(urls, Opened())
    assert preference.ordered(urls) == [urls[2], urls[0], urls[1]]


def test_the_sdk_takes_a_cluster_list_and_refuses_a_mixed_one():
    broker = Broker(THREE)
    assert broker.urls == tuple(THREE.split(";")) and broker.connection_user == "svc"
    with pytest.raises(ValueError, match="memory:// is not RabbitMQ"):
        Broker("amqp://svc:p@rabbit-a//;memory://")
    with pytest.raises(ValueError, match="must share their scheme, user and virtual host"):
        Broker("amqp://svc:p@rabbit-a//;amqps://svc:p@rabbit-b//")
