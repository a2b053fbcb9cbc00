"""The fetcher's wall-clock deadline in each phase of a fetch, over real loopback sockets: a
connection never accepted, a TLS handshake never answered, a status line and headers trickled
one byte at a time, a body trickled or stalled. httpx's own timeouts are per socket operation,
so each case keeps them well above the origin's pace (or the stall) and the deadline alone
must end the fetch; the origin sees its connection closed when it does."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from imagesvc.shared.net.fetch import WATCHDOG_THREAD, FetchError, Fetcher, UrlPolicy
from tests.support.polling import eventually

DEADLINE = 0.6
#: How late a fetch may end after its deadline: the watchdog's thread being scheduled, the
#: socket shut down, the exception unwinding, on a loaded machine.
SLACK = 1.5
#: The origin's pace, well inside every per-read timeout of these fetches.
PACE = 0.2


@pytest.fixture
def fetcher() -> Fetcher:
    return Fetcher(UrlPolicy(["127.0.0.1"]))


def timed_out(fetch) -> float:
    """Run ``fetch``; it must fail with ``timeout``. Returns how long it took."""
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        fetch()
    elapsed = time.monotonic() - started
    assert caught.value.code == "timeout", caught.value
    return elapsed


def get(fetcher: Fetcher, url: str):
    # The per-read timeout is the deadline itself: a pace below it never trips it.
    return lambda: fetcher.get(url, max_bytes=1 << 20, timeout=DEADLINE)


def download(fetcher: Fetcher, url: str, received: list[bytes] | None = None):
    sink = received.append if received is not None else (lambda _chunk: None)
    return lambda: fetcher.download(url, sink, max_bytes=1 << 30, connect_timeout=30, idle_timeout=30,
                                    total_timeout=DEADLINE)


@pytest.fixture
def unaccepting():
    """A listener whose accept queue is full: the kernel drops further SYNs, so a connect hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=5)  # takes the only place
    yield listener.getsockname()[1]
    filler.close()
    listener.close()


@pytest.mark.parametrize("kind", ["get", "download"])
def test_a_connection_never_accepted_ends_at_the_deadline(fetcher, unaccepting, kind):
    url = f"http://127.0.0.1:{unaccepting}/never"
    fetch = get(fetcher, url) if kind == "get" else download(fetcher, url)  # download: connect timeout 30 s
    assert timed_out(fetch) < DEADLINE + SLACK


@pytest.fixture
def silent_tls():
    """A TCP server that accepts and never answers the TLS client hello."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    closed = threading.Event()

    def serve() -> None:
        while not closed.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1], accepted
    closed.set()
    listener.close()
    for conn in accepted:
        conn.close()


def test_a_tls_handshake_never_answered_ends_at_the_deadline(fetcher, silent_tls):
    port, accepted = silent_tls
    assert timed_out(download(fetcher, f"https://127.0.0.1:{port}/file")) < DEADLINE + SLACK
    # The client's side of the connection was shut down: the server reads its end.
    accepted[0].settimeout(5)
    while accepted[0].recv(4096):
        pass


@pytest.mark.parametrize("kind", ["get", "download"])
def test_a_trickled_status_line_and_headers_end_at_the_deadline(fetcher, origin, kind):
    url = origin.route("/slow-head", b"{}", trickle=PACE)
    fetch = get(fetcher, url) if kind == "get" else download(fetcher, url)
    started = time.monotonic()
    assert timed_out(fetch) < DEADLINE + SLACK
    # The connection was closed, not abandoned with the origin still sending into it.
    dropped = eventually(lambda: _one(origin.dropped), timeout=5)
    assert dropped[0] == "/slow-head" and dropped[1] - started < DEADLINE + SLACK


def test_a_trickled_body_ends_at_the_deadline(fetcher, origin):
    body = os.urandom(40 * 65536)
    url = origin.route("/slow-body", body, pace=PACE)  # 64 KiB every 0.2 s: 8 s in all
    received: list[bytes] = []
    assert timed_out(download(fetcher, url, received)) < DEADLINE + SLACK
    assert sum(map(len, received)) < len(body)
    eventually(lambda: _one(origin.dropped), timeout=5)


@pytest.mark.parametrize("kind", ["get", "download"])
def test_a_stalled_body_ends_at_the_deadline_while_the_read_waits(fetcher, origin, kind):
    """No read returns after the stall, so only closing the socket ends the blocked read (the
    download's idle timeout is 30 s; the get's per-read timeout is what is left of the deadline)."""
    body = os.urandom(256 * 1024)
    url = origin.route("/stalled", body, stall_after=64 * 1024)
    fetch = get(fetcher, url) if kind == "get" else download(fetcher, url)
    assert timed_out(fetch) < DEADLINE + SLACK


def test_a_body_without_a_length_cut_at_the_deadline_is_not_taken_for_complete(fetcher, origin):
    """Without Content-Length the body ends when the connection does: the cut must not look like
    its end."""
    url = origin.route("/unsized", os.urandom(40 * 65536), pace=PACE, headers={"Content-Length": None,
                                                                                "Connection": "close"})
    assert timed_out(download(fetcher, url)) < DEADLINE + SLACK


def test_a_fetch_within_its_deadline_leaves_no_watchdog_or_socket_behind(fetcher, origin):
    url = origin.route("/quick", b"hello")
    fetcher.get(url, max_bytes=1024, timeout=DEADLINE)  # warm up: the resolver pool, httpx's imports
    descriptors = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        assert fetcher.get(url, max_bytes=1024, timeout=30) == b"hello"
    assert not [t for t in threading.enumerate() if t.name == WATCHDOG_THREAD]
    # The origin's side of each connection closes once it reads the client's close.
    eventually(lambda: _at_most(len(os.listdir("/proc/self/fd")), descriptors), timeout=5)


def _one(items):
    assert len(items) == 1, items
    return items[0]


def _at_most(actual, bound):
    assert actual <= bound, (actual, bound)
