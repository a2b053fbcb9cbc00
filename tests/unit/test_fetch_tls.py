"""TLS in the fetcher: one verifying context per process, still verifying every connection.

The context is built once (loading the CA bundle costs milliseconds of CPU per fetch otherwise);
sharing it must not weaken verification: an origin whose certificate no trusted CA signed is
refused on every fetch, the first and the later ones alike.
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
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True,
        )
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


def test_fetches_share_one_context_and_each_still_refuses_an_untrusted_certificate(origin, monkeypatch):
    built = []
    real = httpx.create_ssl_context

    def counting(*args, **kwargs):
        built.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    fetch.tls_context.cache_clear()
    try:
        fetcher = Fetcher(UrlPolicy([f"127.0.0.1:{origin.port}"]))
        url = f"https://127.0.0.1:{origin.port}/manifest"
        for _ in range(3):
            with pytest.raises(FetchError) as caught:
                fetcher.get(url, max_bytes=1024, timeout=5)
            assert caught.value.code == "connection_error"
            assert "certificate" in str(caught.value).lower()
    finally:
        fetch.tls_context.cache_clear()
    assert origin.handshakes == 3
    assert len(built) == 1
    assert fetch.tls_context() is fetch.tls_context()
    assert fetch.tls_context().verify_mode == ssl.CERT_REQUIRED and fetch.tls_context().check_hostname
