"""Load on an HTTP server's edge, for tests/e2e/test_http_edge.py and bench/slow_clients.py:
``SlowClients`` hold many connections by sending request heads slowly (slowloris), ``Prober``
times a normal request again and again beside them."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections import Counter

import httpx

CLOSED = "closed without an answer"


class SlowClients:
    """``count`` connections to ``host:port``, each sending the start of a request head and then
    one more header line every ``interval`` seconds, never its end. A connection the server closes
    is counted in ``answers`` by the status it answered (``CLOSED`` if none) and, with ``reopen``,
    replaced (an attacker keeping ``count`` open). Connections are opened at up to ``rate`` a
    second: a faster flood of connections overflows the kernel's listen queue, which drops the
    handshakes of every client alike (a matter for SYN-level defences, not for the HTTP server).
    Runs in a thread of its own between ``start()`` and ``stop()``."""

    def __init__(self, host: str, port: int, count: int, *, reopen: bool, interval: float = 1.0,
                 rate: float = 2000.0, path: str = "/api/image/"):
        self.address = (host, port)
        self.count = count
        self.reopen = reopen
        self.rate = rate
        self.interval = interval
        self.head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n".encode()
        self.answers: Counter = Counter()
        self.opened = 0
        self.failed_connects = 0
        #: Seconds from the start to the first answer of each status.
        self.first_answer_after: dict[int | str, float] = {}
        self._open = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    @property
    def open_now(self) -> int:
        """Connections open now (the server may have closed some whose answer is not read yet)."""
        return self._open

    def start(self) -> "SlowClients":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        started = last = time.monotonic()
        missing, next_round, budget = self.count, 0.0, 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_round:
                    for key in list(selector.get_map().values()):
                        try:
                            key.fileobj.send(b"X-Slow: 1\r\n")
                        except OSError:
                            pass  # closed by the server: read below
                    next_round = now + self.interval
                budget = min(budget + (now - last) * self.rate, self.rate)
                last = now
                opening = min(missing, int(budget))
                for _ in range(opening):
                    self._connect(selector)
                missing, budget = missing - opening, budget - opening
                for key, _events in selector.select(timeout=0.05):
                    sock = key.fileobj
                    try:
                        data = sock.recv(4096)
                    except OSError:
                        data = b""
                    selector.unregister(sock)
                    sock.close()
                    self._open -= 1
                    missing += self.reopen
                    status = _status(data)
                    self.answers[status] += 1
                    self.first_answer_after.setdefault(status, round(time.monotonic() - started, 2))
        finally:
            for key in list(selector.get_map().values()):
                key.fileobj.close()
            selector.close()

    def _connect(self, selector: selectors.BaseSelector) -> None:
        try:
            sock = socket.create_connection(self.address, timeout=5)
            sock.sendall(self.head)
        except OSError:
            self.failed_connects += 1
            return
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        self.opened += 1
        self._open += 1


def _status(data: bytes) -> int | str:
    if data.startswith(b"HTTP/1.1 ") and data[9:12].isdigit():
        return int(data[9:12])
    return CLOSED


class Prober:
    """GETs ``url`` every ``interval`` seconds on a new connection each time, in a thread of its
    own, recording each answer's latency (seconds) and status (an exception's name if none)."""

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, interval: float = 0.1):
        self.url = url
        self.interval = interval
        self.samples: list[tuple[float, int | str]] = []
        self._client = httpx.Client(headers=headers, timeout=30, limits=httpx.Limits(max_keepalive_connections=0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def start(self) -> "Prober":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self._client.close()

    def probe(self) -> tuple[float, int | str]:
        started = time.perf_counter()
        try:
            status: int | str = self._client.get(self.url).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        return time.perf_counter() - started, status

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.probe())
            self._stop.wait(self.interval)

    def latencies(self, since: int = 0) -> list[float]:
        return [latency for latency, _ in self.samples[since:]]

    def statuses(self, since: int = 0) -> Counter:
        return Counter(status for _, status in self.samples[since:])
