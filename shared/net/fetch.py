"""Fetching remote URLs without becoming a proxy into our own network (deviations #6).

Rules: http and https only; ports 80 and 443 unless an allow-list entry admits the host with its
port; the host is resolved once and *every* address must be public (loopback, private,
link-local, shared, reserved, IPv4-mapped and encoded forms such as ``2130706433`` or
``127.1`` are refused) unless allow-listed; the connection goes to the checked address (no
second lookup, so DNS rebinding cannot redirect it); redirects are followed by hand, each
re-checked, at most ``max_redirects``, never from https to http; TLS is verified against the
original host name; bodies are read raw (no transparent decompression) and capped; connect,
read and total time are bounded.

The total time is a wall-clock deadline over the whole fetch: the lookup, connecting, the TLS
handshake, the status line and headers, every redirect and the body. httpx's timeouts are per
socket operation, so an origin that sends one byte just before each would run out keeps a
fetch alive for as long as it likes; a watchdog therefore shuts the fetch's sockets down when
the deadline passes, which makes a read blocked in another thread return at once.

``IMAGESVC_FETCH_ALLOW`` entries: a host name, an IP address or a CIDR, each optionally with
``:port`` (IPv6 as ``[addr]:port``); an entry without a port admits any port.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

DEFAULT_PORTS = {"http": 80, "https": 443}
_EXTRA_DENIED = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "192.0.0.0/24", "198.18.0.0/15", "240.0.0.0/4",
    "::/8", "64:ff9b::/96", "64:ff9b:1::/48", "fc00::/7", "fe80::/10",
)]
_REDIRECTS = {301, 302, 303, 307, 308}
#: The name of each fetch's watchdog thread (one per fetch in progress).
WATCHDOG_THREAD = "fetch-watchdog"

Resolver = Callable[[str, int], Sequence[str]]
_resolvers: concurrent.futures.ThreadPoolExecutor | None = None
_resolvers_lock = threading.Lock()


#: How much one socket read of a body asks for. httpcore reads 64 KiB at a time, and each read
#: goes through h11's parser in Python: a 1 GiB download over plain HTTP cost 3.2-4.1 s of CPU
#: that way against 0.8 s with 1 MiB reads (the size of ``download``'s chunks; 256 KiB gave
#: 2.8 s, 4 MiB 1.1-1.3 s). A small answer costs ~0.2 ms more (the larger buffer). Over TLS a
#: read returns at most one TLS record (16 KiB) whatever it asks for, so there it changes little.
#: httpcore takes the size from a class attribute of a private module, so it is raised for the
#: whole process, and only if that attribute is still there (tests/unit/test_fetch_bodies.py
#: notices when it is not).
BODY_READ_BYTES = 1 << 20
try:
    from httpcore._sync.http11 import HTTP11Connection
except ImportError:  # another httpcore layout: its own read size then
    HTTP11Connection = None
if HTTP11Connection is not None and getattr(HTTP11Connection, "READ_NUM_BYTES", BODY_READ_BYTES) < BODY_READ_BYTES:
    HTTP11Connection.READ_NUM_BYTES = BODY_READ_BYTES


_per_thread = threading.local()


def tls_context() -> ssl.SSLContext:
    """The calling thread's verifying TLS context, built on its first fetch.

    Loading the CA bundle costs about 20 ms of CPU; building a context per fetch made it a third
    of an import's CPU. One per thread rather than one per process: httpcore sets the context's
    ALPN protocols on every TLS connection it makes (a write to the context), and an OpenSSL
    context must not change while another thread creates a connection from it. Each connection
    still verifies the certificate against its own host name (the SNI name ``_send`` gives it).
    """
    context = getattr(_per_thread, "tls", None)
    if context is None:
        context = _per_thread.tls = httpx.create_ssl_context(verify=True, trust_env=False)
    return context


def _resolver_pool() -> concurrent.futures.ThreadPoolExecutor:
    """Lookups run here so that they can be abandoned at a deadline (getaddrinfo has none)."""
    global _resolvers
    with _resolvers_lock:
        if _resolvers is None:
            _resolvers = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="resolver")
        return _resolvers


class FetchError(Exception):
    """A fetch failed. ``str()`` is a short human text (used inside the original's messages);
    ``code`` is stable and machine-readable."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class _AllowEntry:
    host: str | None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    port: int | None

    def admits(self, host: str, address: str | None, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.host is not None:
            return host.lower().rstrip(".") == self.host
        if address is None or self.network is None:
            return False
        return ipaddress.ip_address(address) in self.network


def parse_allow_list(entries: Iterable[str]) -> list[_AllowEntry]:
    """Parse ``IMAGESVC_FETCH_ALLOW`` entries. Raises ValueError on a malformed one."""
    parsed = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        port: int | None = None
        port_text: str | None = None
        if entry.startswith("["):
            entry, _, rest = entry[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else (None if not rest else rest)
        elif entry.count(":") == 1:
            entry, port_text = entry.split(":")
        if port_text is not None:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"bad port in fetch allow-list entry {raw!r}")
            port = int(port_text)
        try:
            parsed.append(_AllowEntry(None, ipaddress.ip_network(entry, strict=False), port))
        except ValueError:
            if not entry or "/" in entry:
                raise ValueError(f"bad fetch allow-list entry {raw!r}") from None
            parsed.append(_AllowEntry(entry.lower().rstrip("."), None, port))
    return parsed


def literal_address(host: str) -> str | None:
    """The IP address a URL host denotes without DNS, including legacy IPv4 forms
    (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``), or None for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if all(part and all(c in "0123456789abcdefxABCDEFX" for c in part) for part in host.split(".")) and any(
            c.isdigit() for c in host
        ):
            try:
                return socket.inet_ntoa(socket.inet_aton(host))
            except OSError:
                return None
        return None
    return str(address)


def is_public_address(text: str) -> bool:
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None:
            return is_public_address(str(embedded))
    if address.is_multicast or any(address in net for net in _EXTRA_DENIED if net.version == address.version):
        return False
    return address.is_global


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class UrlPolicy:
    """Decides which URLs may be fetched and to which address the connection goes."""

    def __init__(self, allow: Iterable[str] = (), *, resolver: Resolver = system_resolver):
        self._allow = parse_allow_list(allow)
        self._by_address = any(entry.network is not None for entry in self._allow)
        self._resolver = resolver

    def _admitted(self, host: str, address: str | None, port: int) -> bool:
        return any(entry.admits(host, address, port) for entry in self._allow)

    def check_static(self, url: str) -> tuple[str, str, int]:
        """Checks that need no DNS: scheme, port, IP literals. Returns (scheme, host, port).

        Raises FetchError(code="url_not_allowed").
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise FetchError("URL not allowed: malformed URL", "url_not_allowed") from None
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise FetchError(f"URL not allowed: scheme {scheme or '(none)'!r}", "url_not_allowed")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise FetchError("URL not allowed: no host", "url_not_allowed")
        if parts.username is not None or parts.password is not None:
            raise FetchError("URL not allowed: credentials in URL", "url_not_allowed")
        port = port if port is not None else DEFAULT_PORTS[scheme]
        address = literal_address(host)
        if self._admitted(host, address, port):
            return scheme, host, port
        if address is not None:
            self._check_address(address, port)
        elif port not in DEFAULT_PORTS.values() and not self._by_address:
            # A name on another port can only be admitted by an address entry (after resolving).
            raise FetchError(f"URL not allowed: port {port}", "url_not_allowed")
        return scheme, host, port

    def _check_address(self, address: str, port: int, host: str | None = None) -> None:
        """Refuse an address no allow-list entry admits, unless it is public and the port is standard."""
        if host is not None and self._admitted(host, address, port):
            return
        if port not in DEFAULT_PORTS.values():
            raise FetchError(f"URL not allowed: port {port}", "url_not_allowed")
        if not is_public_address(address):
            shown = f"{host} resolves to {address}, not a public address" if host else f"{address} is not a public address"
            raise FetchError(f"URL not allowed: {shown}", "url_not_allowed")

    def resolve(self, url: str, *, timeout: float = 5.0) -> tuple[str, str, int, str]:
        """Full check: returns (scheme, host, port, address to connect to). Every address the
        name resolves to must pass, so no later lookup can lead anywhere unchecked."""
        scheme, host, port = self.check_static(url)
        address = literal_address(host)
        if address is not None:
            return scheme, host, port, address
        addresses = self._lookup(host, port, timeout)
        if not self._admitted(host, None, port):
            for candidate in addresses:
                self._check_address(candidate, port, host)
        return scheme, host, port, addresses[0]

    def _lookup(self, host: str, port: int, timeout: float) -> list[str]:
        """Resolve within ``timeout`` (the resolver itself has no deadline)."""
        future = _resolver_pool().submit(self._resolver, host, port)
        try:
            addresses = list(future.result(timeout=max(timeout, 0.1)))
        except concurrent.futures.TimeoutError:
            raise FetchError(f"cannot resolve {host}: timed out", "timeout") from None
        except OSError as exc:
            raise FetchError(f"cannot resolve {host}: {exc.strerror or exc}", "connection_error") from None
        if not addresses:
            raise FetchError(f"cannot resolve {host}", "connection_error")
        return addresses


class _Watchdog:
    """Shuts down every connection of one fetch once its deadline passes.

    It keeps a duplicate of each connection's socket, taken through httpcore's ``trace``
    extension as soon as the TCP connection exists (before any TLS handshake, which replaces
    the socket object): ``shutdown`` acts on the connection whichever descriptor names it. The
    duplicates are ours, so a descriptor number is never used after it may have been reused.
    """

    def __init__(self, deadline: float):
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.fired = False
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.name = WATCHDOG_THREAD
        self._timer.daemon = True
        self._timer.start()

    def trace(self, event: str, info: dict) -> None:
        """httpcore's ``trace`` callback."""
        if event != "connection.connect_tcp.complete":
            return
        sock = info["return_value"].get_extra_info("socket")
        try:
            duplicate = sock.dup()
        except OSError as exc:
            raise FetchError(f"cannot watch the connection: {exc.strerror or exc}", "connection_error") from None
        with self._lock:
            self._sockets.append(duplicate)
            if self.fired:
                _cut(duplicate)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                _cut(sock)

    def close(self) -> None:
        """Stop watching; returns once the watchdog's thread has ended."""
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets = []
        self._timer.join()


def _cut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # the connection is gone already


class Fetcher:
    """GET a URL under a ``UrlPolicy``: the body of a small document (``get``), or a large file
    streamed to a sink (``download``)."""

    def __init__(self, policy: UrlPolicy, *, max_redirects: int = 3, transport: httpx.BaseTransport | None = None):
        self.policy = policy
        self._max_redirects = max_redirects
        self._transport = transport

    def get(self, url: str, *, max_bytes: int, timeout: float, truncate: bool = False) -> bytes:
        """Fetch ``url`` within ``timeout`` seconds overall (a wall-clock deadline). With
        ``truncate`` the body is cut at ``max_bytes`` (a probe); without it a longer body is an
        error ("Response is too large"). Raises FetchError."""
        chunks: list[bytes] = []
        size = 0

        def collect(chunk: bytes) -> bool:
            nonlocal size
            chunks.append(chunk)
            size += len(chunk)
            return not (truncate and size > max_bytes)

        self._fetch(url, collect, max_bytes=None if truncate else max_bytes, timeout=httpx.Timeout(timeout),
                    total=timeout, chunk_size=None)
        return b"".join(chunks)[:max_bytes]

    def download(self, url: str, sink: Callable[[bytes], None], *, max_bytes: int, connect_timeout: float,
                 idle_timeout: float, total_timeout: float, chunk_size: int = BODY_READ_BYTES) -> int:
        """Stream ``url``'s body into ``sink`` chunk by chunk; returns the number of bytes.

        Bounded by ``max_bytes`` (a declared Content-Length above it is refused before the body
        is read), by ``connect_timeout``, by ``idle_timeout`` between two reads and by
        ``total_timeout`` overall (a wall-clock deadline from this call on, whatever the origin
        sends). Raises FetchError; whatever ``sink`` raises propagates.
        """
        total = 0

        def forward(chunk: bytes) -> bool:
            nonlocal total
            sink(chunk)
            total += len(chunk)
            return True

        timeout = httpx.Timeout(connect=connect_timeout, read=idle_timeout, write=idle_timeout, pool=connect_timeout)
        self._fetch(url, forward, max_bytes=max_bytes, timeout=timeout, total=total_timeout, chunk_size=chunk_size)
        return total

    def _fetch(self, url: str, on_chunk: Callable[[bytes], bool], *, max_bytes: int | None, timeout: httpx.Timeout,
               total: float, chunk_size: int | None) -> None:
        """Follow redirects (each re-checked) to the final answer and feed its body to
        ``on_chunk`` until it returns False or the body ends, all within ``total`` seconds."""
        deadline = time.monotonic() + total
        watchdog = _Watchdog(deadline)
        try:
            self._follow(url, on_chunk, max_bytes, timeout, deadline, chunk_size, watchdog)
        except FetchError:
            if watchdog.fired:  # whatever the cut connection looked like to httpx
                raise FetchError("timed out", "timeout") from None
            raise
        finally:
            watchdog.close()
        if watchdog.fired:  # a body without a length ends at the cut, so it may be incomplete
            raise FetchError("timed out", "timeout")

    def _follow(self, url: str, on_chunk: Callable[[bytes], bool], max_bytes: int | None, timeout: httpx.Timeout,
                deadline: float, chunk_size: int | None, watchdog: _Watchdog) -> None:
        current = url
        # A client per fetch, but no per-fetch TLS setup: pooling connections across fetches
        # would let a connection verified for one host name serve another that resolves to the
        # same address, and a reused connection would escape the watchdog (it sees connects).
        with httpx.Client(verify=tls_context(), trust_env=False, follow_redirects=False, transport=self._transport,
                          timeout=timeout) as client:
            for _hop in range(self._max_redirects + 1):
                scheme, host, port, address = self.policy.resolve(current, timeout=deadline - time.monotonic())
                response = self._send(client, current, scheme, host, port, address, deadline, timeout, watchdog)
                try:
                    status = response.status_code
                    if status in _REDIRECTS and response.headers.get("location"):
                        target = urljoin(current, response.headers["location"])
                        if scheme == "https" and urlsplit(target).scheme.lower() == "http":
                            raise FetchError("redirect from https to http refused", "redirect_not_allowed")
                        current = target
                        continue
                    if status >= 400:
                        kind = "Client" if status < 500 else "Server"
                        raise FetchError(f"{status} {kind} Error: {_reason(status)} for url: {current}", "http_error")
                    self._read_body(response, on_chunk, max_bytes, deadline, chunk_size)
                    return
                finally:
                    response.close()
        raise FetchError(f"Exceeded {self._max_redirects} redirects.", "too_many_redirects")

    def _send(self, client: httpx.Client, url: str, scheme: str, host: str, port: int, address: str,
              deadline: float, timeout: httpx.Timeout, watchdog: _Watchdog) -> httpx.Response:
        """Send the GET to the checked ``address`` (never a second lookup), naming ``host``."""
        parts = urlsplit(url)
        pinned_host = f"[{address}]" if ":" in address else address
        pinned = urlunsplit((scheme, f"{pinned_host}:{port}", parts.path or "/", parts.query, ""))
        host_header = host if port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            host_header = f"[{host}]" if port == DEFAULT_PORTS[scheme] else f"[{host}]:{port}"
        extensions: dict = {"trace": watchdog.trace}
        if scheme == "https":
            extensions["sni_hostname"] = host
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError("timed out", "timeout")
        bounded = httpx.Timeout(connect=min(timeout.connect or remaining, remaining),
                                read=min(timeout.read or remaining, remaining),
                                write=min(timeout.write or remaining, remaining),
                                pool=min(timeout.pool or remaining, remaining))
        request = client.build_request(
            "GET", pinned, headers={"Host": host_header, "Accept-Encoding": "identity", "User-Agent": "imagesvc"},
            extensions=extensions, timeout=bounded,
        )
        try:
            return client.send(request, stream=True)
        except httpx.TimeoutException:
            raise FetchError("timed out", "timeout") from None
        except httpx.ConnectError as exc:
            raise FetchError(_connect_text(exc), "connection_error") from None
        except httpx.HTTPError as exc:
            raise FetchError(str(exc) or type(exc).__name__, "connection_error") from None

    @staticmethod
    def _read_body(response: httpx.Response, on_chunk: Callable[[bytes], bool], max_bytes: int | None,
                   deadline: float, chunk_size: int | None) -> None:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            # Never decoded: a compressed body could expand without bound (deviations #6).
            raise FetchError(f"Content-Encoding {encoding!r} is not accepted", "encoding_not_allowed")
        declared = response.headers.get("content-length")
        if max_bytes is not None and declared and declared.isdigit() and int(declared) > max_bytes:
            raise FetchError("Response is too large", "too_large")
        size = 0
        try:
            for chunk in response.iter_raw(chunk_size):
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise FetchError("Response is too large", "too_large")
                if time.monotonic() > deadline:
                    raise FetchError("timed out", "timeout")
                if not on_chunk(chunk):
                    return
        except httpx.TimeoutException:
            raise FetchError("timed out", "timeout") from None
        except httpx.HTTPError as exc:
            raise FetchError(str(exc) or type(exc).__name__, "connection_error") from None


def _reason(status: int) -> str:
    try:
        from http import HTTPStatus

        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _connect_text(exc: Exception) -> str:
    text = str(exc)
    if "refused" in text.lower():
        return "Connection refused"
    if "certificate" in text.lower() or "ssl" in text.lower():
        return f"TLS error: {text}"
    return text or "connection failed"
