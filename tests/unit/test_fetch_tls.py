"""TLS in the fetcher: one verifying context per thread, still verifying every connection.

The context is built once per thread (loading the CA bundle costs milliseconds of CPU per fetch
otherwise; per thread because httpcore writes to the context on every connection); sharing it
must not weaken verification: an origin whose certificate no trusted CA signed is refused on
every fetch, and a trusted certificate is accepted only for the names it was issued for, on the
address the policy checked.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from imagesvc.shared.net import fetch
from imagesvc.shared.net.fetch import FetchError, Fetcher, UrlPolicy

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


class SelfSignedOrigin:
    """A TLS listener on 127.0.0.1 with a certificate it signed itself; counts handshakes tried."""

    def __init__(self, workdir: Path) -> None:
        cert, key = workdir / "cert.pem", workdir / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:origin.test"],
            check=True, capture_output=True,
        )
        self.cert = cert
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.handshakes = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.handshakes += 1
            try:
                with self._context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1024)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            except (ssl.SSLError, OSError):
                pass  # the client refused our certificate, as it must

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone does not)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(timeout=5)


@pytest.fixture
def origin(tmp_path):
    server = SelfSignedOrigin(tmp_path)
    yield server
    server.close()


def _fetch_in_a_thread(fetch_once, times: int) -> list:
    """Run ``fetch_once`` ``times`` on a new thread; returns what each raised (None: nothing)."""
    outcomes: list = []

    def run() -> None:
        for _ in range(times):
            try:
                fetch_once()
                outcomes.append(None)
            except FetchError as exc:
                outcomes.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    return outcomes


def test_a_thread_builds_one_context_and_every_fetch_still_refuses_an_untrusted_certificate(origin, monkeypatch):
    built = []
    real = httpx.create_ssl_context

    def counting(*args, **kwargs):
        context = real(*args, **kwargs)
        built.append(context)
        return context

    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    fetcher = Fetcher(UrlPolicy([f"127.0.0.1:{origin.port}"]))
    url = f"https://127.0.0.1:{origin.port}/manifest"
    first = _fetch_in_a_thread(lambda: fetcher.get(url, max_bytes=1024, timeout=5), 3)
    assert len(built) == 1  # three fetches, one context
    second = _fetch_in_a_thread(lambda: fetcher.get(url, max_bytes=1024, timeout=5), 1)
    assert len(built) == 2 and built[0] is not built[1]  # another thread, its own
    for failure in first + second:
        assert isinstance(failure, FetchError) and failure.code == "connection_error"
        assert "certificate" in str(failure).lower()
    assert origin.handshakes == 4
    assert all(context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname for context in built)


def test_a_trusted_certificate_is_accepted_for_its_own_names_only(origin, monkeypatch):
    trusting = ssl.create_default_context(cafile=str(origin.cert))  # as if a CA had signed it
    monkeypatch.setattr(fetch, "tls_context", lambda: trusting)

    def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]  # both names lead to the origin

    fetcher = Fetcher(UrlPolicy([f"origin.test:{origin.port}", f"other.test:{origin.port}"], resolver=resolver))
    assert fetcher.get(f"https://origin.test:{origin.port}/m", max_bytes=1024, timeout=5) == b"ok"
    with pytest.raises(FetchError) as caught:
        fetcher.get(f"https://other.test:{origin.port}/m", max_bytes=1024, timeout=5)
    assert caught.value.code == "connection_error" and "certificate" in str(caught.value).lower()
