"""DNS rebinding against the real fetcher and real sockets (reliability plan S4).

The name's resolver is the test's (the importer takes it from ``UrlPolicy``): it answers an
admitted address when the URL is checked and ``127.0.0.2`` afterwards. A sentinel listens on
127.0.0.2 at the origin's port and counts connections: the fetch must reach the origin at the
address that was checked (resolved once, connection pinned to it) and never the sentinel, and a
name that now resolves to a refused address, or to an admitted and a refused one at once, is
refused before any connection.
"""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

import pytest

from imagesvc.shared.net.fetch import FetchError, Fetcher, UrlPolicy

NAME = "rebind.example.test"


class Sentinel:
    """Accepts and counts connections on ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.connections = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(16)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._sock.close()


class RebindingResolver:
    """Answers ``first`` once, then ``later`` on every call."""

    def __init__(self, first: list[str], later: list[str]) -> None:
        self.first, self.later = first, later
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return self.first if len(self.calls) == 1 else self.later


@pytest.fixture
def sentinel(origin):
    watcher = Sentinel("127.0.0.2", urlsplit(origin.base).port)
    yield watcher
    watcher.close()


def by_name(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{NAME}:{parts.port}").geturl()


def test_the_fetch_goes_to_the_checked_address_not_to_a_later_answer(origin, sentinel):
    url = by_name(origin.route("/manifest", b'{"uuid": "x"}'))
    resolver = RebindingResolver(["127.0.0.1"], ["127.0.0.2"])
    fetcher = Fetcher(UrlPolicy(["127.0.0.1"], resolver=resolver))
    assert fetcher.get(url, max_bytes=1 << 20, timeout=5) == b'{"uuid": "x"}'
    assert len(resolver.calls) == 1  # resolved once: the connection used that answer
    assert origin.hits == ["/manifest"] and sentinel.connections == 0


def test_a_name_rebound_to_a_refused_address_is_refused_without_connecting(origin, sentinel):
    url = by_name(origin.route("/file", b"data"))
    resolver = RebindingResolver(["127.0.0.1"], ["127.0.0.2"])
    fetcher = Fetcher(UrlPolicy(["127.0.0.1"], resolver=resolver))
    assert fetcher.get(url, max_bytes=1 << 20, timeout=5) == b"data"
    received: list[bytes] = []
    with pytest.raises(FetchError) as caught:
        fetcher.download(url, received.append, max_bytes=1 << 20, connect_timeout=5, idle_timeout=5, total_timeout=10)
    assert caught.value.code == "url_not_allowed"
    assert received == [] and origin.hits == ["/file"] and sentinel.connections == 0


def test_a_name_with_an_admitted_and_a_refused_address_is_refused(origin, sentinel):
    url = by_name(origin.route("/both", b"data"))
    for answer in (["127.0.0.1", "127.0.0.2"], ["127.0.0.2", "127.0.0.1"]):
        resolver = RebindingResolver(answer, answer)
        with pytest.raises(FetchError) as caught:
            Fetcher(UrlPolicy(["127.0.0.1"], resolver=resolver)).get(url, max_bytes=1 << 20, timeout=5)
        assert caught.value.code == "url_not_allowed"
    assert origin.hits == [] and sentinel.connections == 0
